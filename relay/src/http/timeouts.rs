//! What a public client may not hold for long: a request body that sends nothing, an HTTP/2
//! connection with no request under way, and a switched protocol (WebSocket) that carries
//! nothing. (An HTTP/1.1 connection waiting for its next request is hyper's head timeout's
//! to close.)

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// The error of a request body.
pub(crate) type BodyError = Box<dyn StdError + Send + Sync>;

/// A client's request body that fails once the client has sent nothing of it for `timeout`
/// while the service waited for more. A service that does not read holds no timer.
pub(crate) struct TimedBody {
    inner: Incoming,
    /// `None`: the body is not timed.
    timeout: Option<Duration>,
    /// Armed while the service waits for the client; made the first time it does, so a
    /// body that is never waited for (most have none) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the client sent something since the timer was last set: the clock is read
    /// only when the body has to wait after progress.
    progressed: bool,
}

impl TimedBody {
    /// `inner`, failing after `timeout` without progress (never, without one).
    pub(crate) fn new(inner: Incoming, timeout: Option<Duration>) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: None,
            progressed: true,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        let deadline = || Instant::now() + timeout;
        let timer = match &mut this.timer {
            Some(timer) => {
                if std::mem::take(&mut this.progressed) {
                    timer.as_mut().reset(deadline());
                }
                timer
            }
            None => {
                this.progressed = false;
                this.timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline())))
            }
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let seconds = sesame_tunnel::format_duration(timeout);
                Poll::Ready(Some(Err(format!(
                    "the client sent nothing of its request body for {seconds}"
                )
                .into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How many requests of one client connection are under way, to tell when it has been idle
/// long enough to close.
#[derive(Debug)]
pub(crate) struct Activity {
    under_way: watch::Sender<usize>,
}

/// A request under way, until dropped (with its response's body).
#[derive(Debug)]
pub(crate) struct UnderWay(Arc<Activity>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.under_way.send_modify(|n| *n -= 1);
    }
}

impl Activity {
    /// A connection with no request under way yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            under_way: watch::Sender::new(0),
        })
    }

    /// A request begins.
    pub(crate) fn begin(self: &Arc<Self>) -> UnderWay {
        self.under_way.send_modify(|n| *n += 1);
        UnderWay(self.clone())
    }

    /// Completes once no request has been under way for `timeout`. Each turn of the loop
    /// waits for a request to begin or end, or for the timeout.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.under_way.subscribe();
        loop {
            let idle = *changes.borrow_and_update() == 0;
            if idle {
                tokio::select! {
                    () = tokio::time::sleep(timeout) => return,
                    _ = changes.changed() => {}
                }
            } else {
                // The sender lives in `self`: this cannot fail while borrowed.
                let _ = changes.changed().await;
            }
        }
    }
}

/// Carries bytes both ways between `client` and `service` until both have closed, or until
/// neither way has carried a byte for between one and two `idle` periods (progress is checked
/// once per period, so the copy itself reads no clock).
pub(crate) async fn copy_until_idle<C, S>(
    client: &mut C,
    service: &mut S,
    idle: Duration,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let carried = Arc::new(AtomicU64::new(0));
    let mut counted = Counted {
        io: client,
        carried: carried.clone(),
    };
    let copying = tokio::io::copy_bidirectional(&mut counted, service);
    tokio::pin!(copying);
    let mut seen = 0;
    // Each turn waits a whole period, or ends.
    loop {
        tokio::select! {
            copied = &mut copying => return copied.map(drop),
            () = tokio::time::sleep(idle) => {
                let now = carried.load(Ordering::Relaxed);
                if now == seen {
                    let idle = sesame_tunnel::format_duration(idle);
                    let message = format!("carried nothing for {idle}");
                    return Err(io::Error::new(io::ErrorKind::TimedOut, message));
                }
                seen = now;
            }
        }
    }
}

/// An IO that counts the bytes it carries either way.
struct Counted<'a, IO> {
    io: &'a mut IO,
    carried: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<'_, IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut *this.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        this.carried.fetch_add(n, Ordering::Relaxed);
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<'_, IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.carried.fetch_add(*n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_switched_connection_ends_once_it_carries_nothing() {
        let (mut client, mut relay_side) = tokio::io::duplex(64);
        let (mut service, mut service_side) = tokio::io::duplex(64);
        let idle = Duration::from_secs(600);
        let copying =
            tokio::spawn(
                async move { copy_until_idle(&mut relay_side, &mut service_side, idle).await },
            );
        // Traffic every half period keeps it open for many periods.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut byte = [0];
        for _ in 0..10 {
            tokio::time::sleep(idle / 2).await;
            client.write_all(b"x").await.unwrap();
            service.read_exact(&mut byte).await.unwrap();
        }
        assert!(!copying.is_finished());
        let error = copying.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_under_way_for_the_whole_timeout() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(75);
        let request = activity.begin();
        let idle = activity.idle_for(timeout);
        tokio::pin!(idle);
        let started = Instant::now();
        tokio::select! {
            () = &mut idle => panic!("idle with a request under way"),
            () = tokio::time::sleep(timeout * 3) => {}
        }
        drop(request);
        idle.await;
        assert!(started.elapsed() >= timeout * 4);
    }
}
