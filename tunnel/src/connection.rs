//! [`Connection`]: one tunneled connection as either client end sees it (the dialer, or the
//! agent serving a dial): an `AsyncRead + AsyncWrite` byte stream with half-close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::task::noop_waker_ref;
use futures_util::{Stream, StreamExt, stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tonic::{Code, Response, Status};

use crate::agent::ConnectionMeter;
use crate::frame::{ClientMessage, Inbound, InboundStream, ServerMessage};
use crate::pipe::{PipeReader, PipeWriter, pipe};
use crate::wire::{ChunkMessage, DecodeStream};
use crate::{Error, RemoteName, TransportSettings};

/// What is known about a tunneled connection.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    remote: RemoteName,
    port: u16,
    peer: Option<String>,
}

impl ConnectionInfo {
    pub(crate) fn new(remote: RemoteName, port: u16, peer: Option<String>) -> Self {
        ConnectionInfo { remote, port, peer }
    }

    /// The remote this connection reaches (for an agent: its own remote).
    pub fn remote(&self) -> &RemoteName {
        &self.remote
    }

    /// The exposed port this connection was dialed on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Who dialed, as the relay saw it; known to agents only.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }
}

/// One tunneled connection: a byte stream to the other end, through the relay.
///
/// - Reads return the other side's bytes in order, then end (`Ok(0)`) once the other side
///   shuts down its write side. Writes keep working after that: the two directions close
///   independently.
/// - `poll_shutdown` shuts down this side's write direction; the other side reads EOF once it
///   has read everything written before.
/// - Writes wait while the connection's write buffer is full, and the buffer drains only as
///   fast as the other side reads, so a slow reader slows its writer and nothing else.
/// - Dropping a connection closes it the way TCP's `close` does: everything written is
///   delivered, unless data the application never read is pending (then the connection is
///   reset, as TCP sends RST). [`reset`](Connection::reset) aborts it on purpose.
pub struct Connection {
    inbound: InboundStream,
    unread: Bytes,
    read_state: ReadState,
    writer: PipeWriter,
    info: ConnectionInfo,
    meter: Option<ConnectionMeter>,
    /// Whether this side has sent a reset.
    reset_sent: bool,
}

enum ReadState {
    Open,
    Eof,
    Failed(io::ErrorKind, String),
}

impl Connection {
    /// Assembles a connection from what the server sends and the writer of what it receives.
    pub(crate) fn new(
        inbound: InboundStream,
        writer: PipeWriter,
        info: ConnectionInfo,
        meter: Option<ConnectionMeter>,
    ) -> Self {
        Connection {
            inbound,
            unread: Bytes::new(),
            read_state: ReadState::Open,
            writer,
            info,
            meter,
            reset_sent: false,
        }
    }

    /// What is known about this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Aborts the connection: what is still buffered is discarded, and the other side's
    /// reads and writes fail with an error naming `reason` instead of seeing an end of data.
    /// Use it when the other end of a forwarded connection failed.
    pub fn reset(mut self, reason: impl Into<String>) {
        let reason = reason.into();
        if let Some(meter) = &mut self.meter {
            meter.failed(&reason);
        }
        self.writer.abort(reason);
        self.reset_sent = true;
    }

    /// Whether data has arrived that nobody read: a chunk in hand, or one ready to take.
    /// Also notices, without waiting, that the call has ended.
    fn has_unread_data(&mut self) -> bool {
        if !self.unread.is_empty() {
            return true;
        }
        if !matches!(self.read_state, ReadState::Open) {
            return false;
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        match self.inbound.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Inbound::Data(chunk)))) => !chunk.is_empty(),
            Poll::Ready(Some(Ok(Inbound::CloseWrite))) => {
                self.read_state = ReadState::Eof;
                false
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.read_state = ReadState::Failed(io::ErrorKind::NotConnected, String::new());
                false
            }
            Poll::Pending => false,
        }
    }
}

/// The error a read reports when the call of an open connection fails.
fn broken(status: Status) -> io::Error {
    let kind = match status.code() {
        Code::DeadlineExceeded => io::ErrorKind::TimedOut,
        // The relay or a session went away, rather than the other end resetting.
        Code::Unavailable => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, Error::from_status(status))
}

/// Creates the outbound half of a client's data stream: the opening message, then a data
/// message for each chunk the connection's writer produces. The stream ends, which ends this
/// direction, when the writer shuts down or is dropped.
pub(crate) fn outbound<M: ClientMessage>(
    opening: M,
    settings: &TransportSettings,
    peer_chunk_limit: usize,
) -> (PipeWriter, impl Stream<Item = M> + Send + 'static) {
    let chunk = settings.chunk_bytes.min(peer_chunk_limit).max(1);
    let (writer, reader): (PipeWriter, PipeReader) = pipe(settings.write_buffer.max(chunk), chunk);
    let requests = stream::once(async move { opening }).chain(reader.map(M::from_outbound));
    (writer, requests)
}

/// The inbound half from a response stream that is already open.
pub(crate) fn inbound<M: ServerMessage + ChunkMessage>(
    responses: DecodeStream<M>,
) -> InboundStream {
    Box::pin(responses.map(|message| message.and_then(M::into_inbound)))
}

/// The inbound half from a call still under way in its own task; reads wait for it to open.
pub(crate) fn inbound_from_call<M: ServerMessage + ChunkMessage>(
    call: JoinHandle<Result<Response<DecodeStream<M>>, Status>>,
) -> InboundStream {
    Box::pin(
        stream::once(async move {
            match call.await {
                Ok(Ok(response)) => inbound(response.into_inner()),
                Ok(Err(status)) => Box::pin(stream::iter([Err(status)])) as InboundStream,
                Err(join_error) => Box::pin(stream::iter([Err(Status::internal(format!(
                    "connection task failed: {join_error}"
                )))])),
            }
        })
        .flatten(),
    )
}

impl Connection {
    /// Reads the next chunk the other side sent, whole, without copying it: `None` once the
    /// other side has shut down its write side. Errors as [`AsyncRead`] reports them.
    pub(crate) fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if !ready!(self.poll_unread(cx))? {
            return Poll::Ready(Ok(None));
        }
        let chunk = std::mem::take(&mut self.unread);
        if let Some(meter) = &mut self.meter {
            meter.add_in(chunk.len());
        }
        Poll::Ready(Ok(Some(chunk)))
    }

    /// Waits until `unread` holds data (true) or the other side's direction has ended
    /// (false).
    fn poll_unread(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.unread.is_empty() {
                return Poll::Ready(Ok(true));
            }
            match &self.read_state {
                ReadState::Open => {}
                ReadState::Eof => return Poll::Ready(Ok(false)),
                ReadState::Failed(kind, message) => {
                    return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
                }
            }
            match ready!(self.inbound.as_mut().poll_next(cx)) {
                Some(Ok(Inbound::Data(chunk))) => self.unread = chunk,
                // Trailers without `close_write` end the direction just the same.
                Some(Ok(Inbound::CloseWrite)) | None => self.read_state = ReadState::Eof,
                Some(Err(status)) => {
                    let error = broken(status);
                    if let Some(meter) = &mut self.meter {
                        meter.failed(&error);
                    }
                    self.read_state = ReadState::Failed(error.kind(), error.to_string());
                }
            }
        }
    }

    /// Writes `chunk` whole, without copying it, and leaves it empty; waits while the write
    /// buffer is full. Errors as [`AsyncWrite`] reports them.
    pub(crate) fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let n = chunk.len();
        ready!(self.writer.poll_write_chunk(cx, chunk))?;
        if let Some(meter) = &mut self.meter {
            meter.add_out(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Shuts down this side's write direction, as [`AsyncWrite::poll_shutdown`] does.
    pub(crate) fn shutdown_write(&mut self) {
        self.writer.close();
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !ready!(this.poll_unread(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        if let Some(meter) = &mut this.meter {
            meter.add_in(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(this.writer.poll_write(cx, data))?;
        if let Some(meter) = &mut this.meter {
            meter.add_out(n);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already on their way: the transport takes them as soon as flow
        // control allows, without waiting for a flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

/// How long a dropped connection may take to finish gracefully: to deliver what it still
/// holds and receive the server's end of the call.
const LINGER: Duration = Duration::from_secs(60);

impl Drop for Connection {
    /// Closes the connection the way TCP's `close` does. If data the application never read
    /// is pending, the connection is reset (TCP sends RST). Otherwise this side's direction
    /// ends after everything written so far.
    ///
    /// Either way the call stays open in the background until the server ends it: dropping
    /// its streams earlier would reset the HTTP/2 stream, and such a reset discards whatever
    /// this side sent that is still in flight, a reset's reason included. After a graceful
    /// close, the server ends the call once the other side has closed its direction too;
    /// should the other side send more data meanwhile, or not finish within a minute, the
    /// call is reset.
    fn drop(&mut self) {
        if !self.reset_sent && self.has_unread_data() {
            self.writer
                .abort("the other side closed the connection with data unread".to_owned());
            self.reset_sent = true;
        }
        let linger = if self.reset_sent {
            Linger::UntilEnd
        } else {
            match self.read_state {
                ReadState::Failed(..) => return,
                ReadState::Open => Linger::Graceful { peer_closed: false },
                ReadState::Eof => Linger::Graceful { peer_closed: true },
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut inbound: InboundStream = Box::pin(stream::empty());
        std::mem::swap(&mut inbound, &mut self.inbound);
        runtime.spawn(async move {
            let finished = async {
                let mut peer_closed = match linger {
                    Linger::UntilEnd => true,
                    Linger::Graceful { peer_closed } => peer_closed,
                };
                while let Some(Ok(frame)) = inbound.next().await {
                    match frame {
                        Inbound::CloseWrite => peer_closed = true,
                        // Data for a closed connection: reset, as TCP does.
                        Inbound::Data(_) if !peer_closed => return,
                        Inbound::Data(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, finished).await;
        });
    }
}

/// How a dropped connection waits for its call to end.
enum Linger {
    /// After a reset: until the server ends the call, whatever arrives.
    UntilEnd,
    /// After a graceful close: until the server ends the call, unless data arrives before
    /// the other side has closed its direction.
    Graceful { peer_closed: bool },
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Outbound;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn info() -> ConnectionInfo {
        ConnectionInfo::new(RemoteName::new("test").unwrap(), 1, None)
    }

    fn connection(frames: Vec<Result<Inbound, Status>>) -> (Connection, PipeReader) {
        let (writer, reader) = pipe(16, 8);
        let inbound: InboundStream = Box::pin(stream::iter(frames));
        (Connection::new(inbound, writer, info(), None), reader)
    }

    #[tokio::test]
    async fn reads_data_then_eof_at_close_write() {
        let (mut conn, _reader) = connection(vec![
            Ok(Inbound::Data(Bytes::from_static(b"hello "))),
            Ok(Inbound::Data(Bytes::from_static(b"world"))),
            Ok(Inbound::CloseWrite),
            Ok(Inbound::Data(Bytes::from_static(b"ignored"))),
        ]);
        let mut got = String::new();
        conn.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
        assert_eq!(conn.read(&mut [0; 4]).await.unwrap(), 0, "eof stays eof");
    }

    #[tokio::test]
    async fn small_reads_take_a_chunk_piece_by_piece() {
        let (mut conn, _reader) =
            connection(vec![Ok(Inbound::Data(Bytes::from_static(b"abcdef")))]);
        let mut two = [0; 2];
        for expected in [b"ab", b"cd", b"ef"] {
            conn.read_exact(&mut two).await.unwrap();
            assert_eq!(&two, expected);
        }
    }

    #[tokio::test]
    async fn a_status_becomes_a_lasting_io_error() {
        let (mut conn, _reader) = connection(vec![
            Ok(Inbound::Data(Bytes::from_static(b"partial"))),
            Err(Status::aborted("the remote reset the connection")),
        ]);
        let mut buf = Vec::new();
        let err = conn.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(buf, b"partial");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(err.to_string().contains("reset"), "{err}");
        let again = conn.read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn writes_flow_out_and_shutdown_ends_the_stream() {
        let (mut conn, reader) = connection(vec![]);
        conn.write_all(b"0123456789").await.unwrap();
        conn.shutdown().await.unwrap();
        let sent: Vec<u8> = reader
            .map(|item| match item {
                Outbound::Data(chunk) => chunk.to_vec(),
                Outbound::Reset(reason) => panic!("unexpected reset: {reason}"),
            })
            .concat()
            .await;
        assert_eq!(sent, b"0123456789");
        assert!(conn.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn reset_discards_what_is_buffered_and_sends_the_reason() {
        let (mut conn, reader) = connection(vec![]);
        conn.write_all(b"unsent").await.unwrap();
        conn.reset("target: connection reset");
        let sent: Vec<Outbound> = reader.collect().await;
        assert_eq!(sent, [Outbound::Reset("target: connection reset".into())]);
    }

    #[tokio::test]
    async fn dropping_with_unread_data_resets() {
        let (conn, reader) = connection(vec![Ok(Inbound::Data(Bytes::from_static(b"unread")))]);
        drop(conn);
        let sent: Vec<Outbound> = reader.collect().await;
        assert!(
            matches!(&sent[..], [Outbound::Reset(reason)] if reason.contains("unread")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn dropping_after_reading_everything_closes_gracefully() {
        let (mut conn, reader) = connection(vec![Ok(Inbound::CloseWrite)]);
        conn.write_all(b"reply").await.unwrap();
        assert_eq!(conn.read(&mut [0; 8]).await.unwrap(), 0);
        drop(conn);
        let sent: Vec<Outbound> = reader.collect().await;
        assert_eq!(sent, [Outbound::Data(Bytes::from_static(b"reply"))]);
    }

    #[tokio::test]
    async fn the_call_task_feeds_reads_once_it_opens() {
        let call: JoinHandle<Result<Response<DecodeStream<DialResponseAlias>>, Status>> =
            tokio::spawn(async { Err(Status::not_found("ticket expired")) });
        let mut inbound = inbound_from_call(call);
        let first = inbound.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::NotFound);
    }

    type DialResponseAlias = sesame_proto::v1::DialResponse;
}
