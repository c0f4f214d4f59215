//! The write side of a connection: a bounded byte pipe whose reader takes whole chunks.
//!
//! Two ways in. Slices written with `poll_write` are copied into one buffer, and the transport
//! takes everything written since it last looked, up to a chunk, without copying again: small
//! writes coalesce into large messages while the transport is busy, and a lone small write
//! still goes out at once (no delay, no byte-by-byte messages). Chunks handed over whole with
//! `poll_write_chunk` (a socket read straight into a `Bytes`) are queued as they are and go
//! out without any copy. The pipe's limit is the backpressure: a full pipe makes writers wait
//! until the transport takes data, which it does only when HTTP/2 flow control lets it send.
//! Aborting the pipe discards what is buffered and ends the stream with a reset instead.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use crate::frame::Outbound;

/// Creates a pipe that holds at most `limit` bytes and hands them out in chunks of at most
/// `chunk` bytes.
pub(crate) fn pipe(limit: usize, chunk: usize) -> (PipeWriter, PipeReader) {
    assert!(limit > 0 && chunk > 0, "pipe limits must be positive");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            tail: BytesMut::new(),
            len: 0,
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
    /// Whole chunks, oldest first, all written before `tail`.
    queue: VecDeque<Bytes>,
    /// Slices written since the last whole chunk, coalesced.
    tail: BytesMut,
    /// The bytes held in `queue` and `tail`.
    len: usize,
    writer_closed: bool,
    /// An abort's reason, until the reader has taken it.
    reset: Option<String>,
    reader_closed: bool,
    reader_waker: Option<Waker>,
    writer_waker: Option<Waker>,
}

impl State {
    fn clear(&mut self) {
        self.queue = VecDeque::new();
        self.tail = BytesMut::new();
        self.len = 0;
    }

    /// The next chunk of at most `max` bytes, in the order written.
    fn take(&mut self, max: usize) -> Option<Bytes> {
        let chunk = match self.queue.front_mut() {
            Some(front) if front.len() > max => front.split_to(max),
            Some(_) => self.queue.pop_front()?,
            None if self.tail.is_empty() => return None,
            None => {
                let n = self.tail.len().min(max);
                self.tail.split_to(n).freeze()
            }
        };
        self.len -= chunk.len();
        Some(chunk)
    }
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
        writable(&state)?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = ready!(self.poll_room(&mut state, cx));
        let n = room.min(data.len());
        state.tail.extend_from_slice(&data[..n]);
        state.len += n;
        wake(&mut state.reader_waker);
        Poll::Ready(Ok(n))
    }

    /// Queues `chunk` whole, without copying it, and leaves `chunk` empty; waits while the
    /// pipe is full. A chunk may take the pipe past its limit by less than its own length.
    pub(crate) fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        writable(&state)?;
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_room(&mut state, cx));
        if !state.tail.is_empty() {
            let earlier = state.tail.split().freeze();
            state.queue.push_back(earlier);
        }
        state.len += chunk.len();
        state.queue.push_back(std::mem::take(chunk));
        wake(&mut state.reader_waker);
        Poll::Ready(Ok(()))
    }

    /// How many bytes the pipe takes now, a positive number; pending while it is full.
    fn poll_room(&self, state: &mut State, cx: &mut Context<'_>) -> Poll<usize> {
        match self.shared.limit.saturating_sub(state.len) {
            0 => {
                state.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            room => Poll::Ready(room),
        }
    }

    /// Ends the stream once the reader has taken what is buffered. Idempotent.
    pub(crate) fn close(&mut self) {
        let mut state = self.shared.lock();
        state.writer_closed = true;
        wake(&mut state.reader_waker);
    }

    /// Discards what is buffered and ends the stream with a reset, unless it already ended.
    pub(crate) fn abort(&mut self, reason: String) {
        let mut state = self.shared.lock();
        if state.writer_closed && state.len == 0 {
            return;
        }
        state.clear();
        state.reset = Some(reason);
        state.writer_closed = true;
        wake(&mut state.reader_waker);
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
        if let Some(chunk) = state.take(self.shared.chunk) {
            wake(&mut state.writer_waker);
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
        state.clear();
        wake(&mut state.writer_waker);
    }
}

/// Whether the writer may still write: not once either end has closed.
fn writable(state: &State) -> io::Result<()> {
    if state.reader_closed {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the connection is closed",
        ));
    }
    if state.writer_closed {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "write after shutdown",
        ));
    }
    Ok(())
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
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

    fn next_data(r: &mut PipeReader) -> Bytes {
        match Pin::new(r).poll_next(&mut cx()) {
            Poll::Ready(Some(Outbound::Data(chunk))) => chunk,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn whole_chunks_go_out_uncopied_and_in_order_with_slices() {
        let (mut w, mut r) = pipe(1024, 512);
        let mut whole = Bytes::from(vec![9; 100]);
        let address = whole.as_ptr();
        assert!(matches!(
            w.poll_write(&mut cx(), b"before"),
            Poll::Ready(Ok(6))
        ));
        assert!(matches!(
            w.poll_write_chunk(&mut cx(), &mut whole),
            Poll::Ready(Ok(()))
        ));
        assert!(whole.is_empty(), "the pipe took the chunk");
        assert!(matches!(
            w.poll_write(&mut cx(), b"after"),
            Poll::Ready(Ok(5))
        ));
        assert_eq!(next_data(&mut r), "before");
        let chunk = next_data(&mut r);
        assert_eq!((chunk.as_ptr(), chunk.len()), (address, 100), "not copied");
        assert_eq!(next_data(&mut r), "after");
        assert!(Pin::new(&mut r).poll_next(&mut cx()).is_pending());
    }

    #[test]
    fn a_large_chunk_is_split_to_the_chunk_size_and_a_full_pipe_waits() {
        let (mut w, mut r) = pipe(100, 40);
        let mut big = Bytes::from(vec![1; 90]);
        assert!(matches!(
            w.poll_write_chunk(&mut cx(), &mut big),
            Poll::Ready(Ok(()))
        ));
        let mut more = Bytes::from(vec![2; 30]);
        assert!(matches!(
            w.poll_write_chunk(&mut cx(), &mut more),
            Poll::Ready(Ok(()))
        ));
        let mut full = Bytes::from_static(b"waits");
        assert!(w.poll_write_chunk(&mut cx(), &mut full).is_pending());
        assert_eq!(full, "waits", "a waiting chunk stays with its writer");
        let sizes: Vec<usize> = (0..4).map(|_| next_data(&mut r).len()).collect();
        assert_eq!(sizes, [40, 40, 10, 30]);
        assert!(matches!(
            w.poll_write_chunk(&mut cx(), &mut full),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(next_data(&mut r), "waits");
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
