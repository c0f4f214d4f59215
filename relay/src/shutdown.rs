//! [`Shutdown`]: the two moments of a relay's graceful shutdown, as every part that carries
//! connections sees them.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::server::Connected;

/// How long a connection still runs once the grace period has ended, to send the statuses of
/// the calls that the cut ended: small frames, delayed only by a peer that does not read.
pub(crate) const FLUSH_AFTER_CUT: Duration = Duration::from_secs(1);

/// When the relay begins to shut down, and when its grace period ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shutdown {
    /// Cancelled when the relay begins to shut down: it accepts nothing new, and sessions
    /// drain and end.
    pub(crate) begun: CancellationToken,
    /// Cancelled when the grace period ends: open connections are cut.
    pub(crate) cut: CancellationToken,
}

impl Shutdown {
    /// What cuts one connection: the relay's cut, or, when either side's token can end, a
    /// child of it that the end of either token also cancels. The guard cancels it when the
    /// connection is gone, so that its watcher ends too.
    pub(crate) fn connection_cut(
        &self,
        agent_ended: Option<&CancellationToken>,
        dialer_ended: Option<&CancellationToken>,
    ) -> (CancellationToken, Option<DropGuard>) {
        if agent_ended.is_none() && dialer_ended.is_none() {
            return (self.cut.clone(), None);
        }
        let cut = self.cut.child_token();
        let (agent, dialer, watched) = (
            agent_ended.cloned().unwrap_or_default(),
            dialer_ended.cloned().unwrap_or_default(),
            cut.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = agent.cancelled() => watched.cancel(),
                () = dialer.cancelled() => watched.cancel(),
                () = watched.cancelled() => {}
            }
        });
        (cut.clone(), Some(cut.drop_guard()))
    }
}

impl Shutdown {
    /// Runs an HTTP connection; when the shutdown begins, or `idle` completes (the connection
    /// has been idle long enough), lets it finish its open requests (`graceful_shutdown` tells
    /// it to), and cuts it at the cut, once its calls' final statuses are sent (at most
    /// [`FLUSH_AFTER_CUT`] later).
    pub(crate) async fn drive<C>(
        &self,
        connection: C,
        graceful_shutdown: impl FnOnce(&mut Pin<&mut C>),
        idle: impl Future<Output = ()>,
    ) -> Result<(), hyper::Error>
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        let mut connection = pin!(connection);
        tokio::select! {
            result = &mut connection => return result,
            () = self.begun.cancelled() => graceful_shutdown(&mut connection),
            () = idle => graceful_shutdown(&mut connection),
        }
        tokio::select! {
            result = &mut connection => return result,
            () = self.cut.cancelled() => {}
        }
        // The cut ends every call with an error status; the connection, already going away,
        // ends by itself once they are sent.
        tokio::time::timeout(FLUSH_AFTER_CUT, connection)
            .await
            .unwrap_or(Ok(()))
    }
}

/// A connection of the gRPC listener that fails its reads and writes once the relay's cut
/// has come and [`FLUSH_AFTER_CUT`] has passed, so that the HTTP/2 connection serving it ends
/// even when its peer stopped reading: tonic's server otherwise waits for it forever. The cut
/// ends every call on the connection, and sending their statuses polls it, which starts the
/// clock; until the cut, the check is one atomic load.
pub(crate) struct CutAfterFlush<IO> {
    io: IO,
    cut: CancellationToken,
    flush: Option<Pin<Box<Sleep>>>,
}

impl<IO> CutAfterFlush<IO> {
    /// `io`, cut once `cut` is cancelled and the flush time has passed.
    pub(crate) fn new(io: IO, cut: CancellationToken) -> Self {
        CutAfterFlush {
            io,
            cut,
            flush: None,
        }
    }

    /// An error once the connection is cut; until then, `None`.
    fn cut_off(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if !self.cut.is_cancelled() {
            return None;
        }
        let flush = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_AFTER_CUT)));
        let cut = flush.as_mut().poll(cx).is_ready();
        cut.then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "the relay shut down"))
    }
}

impl<IO: Connected> Connected for CutAfterFlush<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> IO::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CutAfterFlush<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.cut_off(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CutAfterFlush<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.cut_off(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.cut_off(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.cut_off(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_cut_a_flush_time_after_the_cut() {
        let cut = CancellationToken::new();
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = CutAfterFlush::new(near, cut.clone());
        near.write_all(b"before").await.unwrap();
        let mut got = [0; 6];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"before");

        cut.cancel();
        // Within the flush time, what the cut ended still goes out.
        near.write_all(b"status").await.unwrap();
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"status");
        // A peer that sends nothing more: the read waits, then fails once the time is up.
        let started = tokio::time::Instant::now();
        let read = near.read(&mut got).await;
        assert_eq!(
            read.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted,
            "cut"
        );
        assert!(started.elapsed() >= FLUSH_AFTER_CUT - Duration::from_millis(1));
        assert!(near.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn a_connection_is_cut_by_the_relay_or_by_the_end_of_either_token() {
        let shutdown = Shutdown::default();
        let (plain, guard) = shutdown.connection_cut(None, None);
        assert!(guard.is_none(), "nothing to watch without tokens");

        let agent = CancellationToken::new();
        let (by_agent, _guard) = shutdown.connection_cut(Some(&agent), None);
        let dialer = CancellationToken::new();
        let (by_dialer, _guard) = shutdown.connection_cut(None, Some(&dialer));
        agent.cancel();
        by_agent.cancelled().await;
        assert!(!by_dialer.is_cancelled() && !plain.is_cancelled());

        shutdown.cut.cancel();
        by_dialer.cancelled().await;
        assert!(plain.is_cancelled());
        assert!(!dialer.is_cancelled(), "the relay's cut ends no token");
    }
}
