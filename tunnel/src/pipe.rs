//! The write side of a connection: a bounded byte pipe whose reader takes whole chunks.
//!
//! Writers copy into one buffer; the transport takes everything written since it last looked,
//! up to a chunk, without copying again. So small writes coalesce into large messages while
//! the transport is busy, and a lone small write still goes out at once: no delay, no
//! byte-by-byte messages. The buffer's limit is the backpressure: a full pipe makes
//! `poll_write` wait until the transport takes data, which it does only when HTTP/2 flow
//! control lets it send. Aborting the pipe discards what is buffered and ends the stream
//! with a reset instead.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures_util::Stream;

use crate::frame::Outbound;

/// Creates a pipe that holds at most `limit` bytes and hands them out in chunks of at most
/// `chunk` bytes.
pub(crate) fn pipe(limit: usize, chunk: usize) -> (PipeWriter, PipeReader) {
    assert!(limit > 0 && chunk > 0, "pipe limits must be positive");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: BytesMut::new(),
            writer_closed: false,
            reset: None,
            reader_closed: false,
            reader_waker: None,
            writer_waker: None,
        }),
        limit,
        chunk,
    });
    (
        PipeWriter {
            shared: shared.clone(),
        },
        PipeReader { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    limit: usize,
    chunk: usize,
}

struct State {
    buf: BytesMut,
    writer_closed: bool,
    /// An abort's reason, until the reader has taken it.
    reset: Option<String>,
    reader_closed: bool,
    reader_waker: Option<Waker>,
    writer_waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one field.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writing end: accepts bytes until the pipe is full.
pub(crate) struct PipeWriter {
    shared: Arc<Shared>,
}

impl PipeWriter {
    /// Copies as much of `data` as fits; waits while the pipe is full.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if state.reader_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection is closed",
            )));
        }
        if state.writer_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = self.shared.limit.saturating_sub(state.buf.len());
        if room == 0 {
            state.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        state.buf.extend_from_slice(&data[..n]);
        if let Some(waker) = state.reader_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }

    /// Ends the stream once the reader has taken what is buffered. Idempotent.
    pub(crate) fn close(&mut self) {
        let mut state = self.shared.lock();
        state.writer_closed = true;
        if let Some(waker) = state.reader_waker.take() {
            waker.wake();
        }
    }

    /// Discards what is buffered and ends the stream with a reset, unless it already ended.
    pub(crate) fn abort(&mut self, reason: String) {
        let mut state = self.shared.lock();
        if state.writer_closed && state.buf.is_empty() {
            return;
        }
        state.buf.clear();
        state.reset = Some(reason);
        state.writer_closed = true;
        if let Some(waker) = state.reader_waker.take() {
            waker.wake();
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The reading end: a stream of chunks that ends after the writer closes, or with a reset
/// after it aborts.
pub(crate) struct PipeReader {
    shared: Arc<Shared>,
}

impl Stream for PipeReader {
    type Item = Outbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.reset.take() {
            return Poll::Ready(Some(Outbound::Reset(reason)));
        }
        if !state.buf.is_empty() {
            let n = state.buf.len().min(self.shared.chunk);
            let chunk = state.buf.split_to(n).freeze();
            if let Some(waker) = state.writer_waker.take() {
                waker.wake();
            }
            return Poll::Ready(Some(Outbound::Data(chunk)));
        }
        if state.writer_closed {
            return Poll::Ready(None);
        }
        state.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reader_closed = true;
        state.buf = BytesMut::new();
        if let Some(waker) = state.writer_waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use futures_util::task::noop_waker_ref;
    use std::future::poll_fn;

    fn cx() -> Context<'static> {
        Context::from_waker(noop_waker_ref())
    }

    #[test]
    fn small_writes_coalesce_into_one_chunk() {
        let (mut w, mut r) = pipe(1024, 512);
        for _ in 0..10 {
            assert!(matches!(
                w.poll_write(&mut cx(), b"abc"),
                Poll::Ready(Ok(3))
            ));
        }
        match Pin::new(&mut r).poll_next(&mut cx()) {
            Poll::Ready(Some(Outbound::Data(chunk))) => {
                assert_eq!(chunk, "abc".repeat(10).as_bytes())
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Pin::new(&mut r).poll_next(&mut cx()).is_pending());
    }

    #[test]
    fn chunks_are_capped_and_a_full_pipe_waits() {
        let (mut w, mut r) = pipe(100, 40);
        assert!(matches!(
            w.poll_write(&mut cx(), &[7; 150]),
            Poll::Ready(Ok(100))
        ));
        assert!(w.poll_write(&mut cx(), &[7; 1]).is_pending());
        let sizes: Vec<usize> = (0..3)
            .map(|_| match Pin::new(&mut r).poll_next(&mut cx()) {
                Poll::Ready(Some(Outbound::Data(chunk))) => chunk.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [40, 40, 20]);
        assert!(matches!(
            w.poll_write(&mut cx(), &[7; 1]),
            Poll::Ready(Ok(1))
        ));
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_the_buffered_bytes() {
        let (mut w, r) = pipe(64, 64);
        poll_fn(|cx| w.poll_write(cx, b"last words")).await.unwrap();
        w.close();
        let chunks: Vec<Outbound> = r.collect().await;
        assert_eq!(chunks, [Outbound::Data(Bytes::from_static(b"last words"))]);
        assert_eq!(
            w.poll_write(&mut cx(), b"x").map_err(|e| e.kind()),
            Poll::Ready(Err(io::ErrorKind::BrokenPipe))
        );
    }

    #[tokio::test]
    async fn a_dropped_reader_fails_waiting_writers() {
        let (mut w, r) = pipe(4, 4);
        poll_fn(|cx| w.poll_write(cx, b"full")).await.unwrap();
        let writer = tokio::spawn(async move { poll_fn(|cx| w.poll_write(cx, b"more")).await });
        tokio::task::yield_now().await;
        drop(r);
        let err = writer.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_blocked_writer_resumes_when_the_reader_takes_data() {
        let (mut w, mut r) = pipe(8, 8);
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            while sent < 64 {
                sent += poll_fn(|cx| w.poll_write(cx, &[1; 64][sent..]))
                    .await
                    .unwrap();
            }
        });
        let mut received = 0;
        while received < 64 {
            let Some(Outbound::Data(chunk)) = r.next().await else {
                panic!("expected data")
            };
            assert!(chunk.len() <= 8);
            received += chunk.len();
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn abort_discards_the_buffer_and_ends_with_a_reset() {
        let (mut w, r) = pipe(64, 64);
        poll_fn(|cx| w.poll_write(cx, b"never delivered"))
            .await
            .unwrap();
        w.abort("target reset".into());
        w.abort("a second abort changes nothing".into());
        let items: Vec<Outbound> = r.collect().await;
        assert_eq!(items, [Outbound::Reset("target reset".into())]);
    }

    #[tokio::test]
    async fn abort_after_a_clean_end_changes_nothing() {
        let (mut w, r) = pipe(64, 64);
        w.close();
        w.abort("too late".into());
        assert_eq!(r.collect::<Vec<_>>().await, []);
    }
}
