//! [`Connection`]: one tunneled connection as either client end sees it (the dialer, or the
//! agent serving a dial): an `AsyncRead + AsyncWrite` byte stream with half-close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt, stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tonic::{Response, Status, Streaming};

use crate::agent::ConnectionMeter;
use crate::frame::{ClientMessage, Inbound, InboundStream, ServerMessage};
use crate::pipe::{PipeReader, PipeWriter, pipe};
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
/// - Dropping a connection closes it. As with TCP, that is graceful if the other side had
///   already closed its direction (everything written still arrives), and a reset otherwise
///   (the other side sees an error).
pub struct Connection {
    inbound: InboundStream,
    unread: Bytes,
    read_state: ReadState,
    writer: PipeWriter,
    info: ConnectionInfo,
    meter: Option<ConnectionMeter>,
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
        }
    }

    /// What is known about this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Notes why the connection failed outside its own reads, for the session's events.
    pub(crate) fn record_error(&mut self, error: &io::Error) {
        if let Some(meter) = &mut self.meter {
            meter.failed(error);
        }
    }
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
    let requests = stream::once(async move { opening }).chain(reader.map(M::data));
    (writer, requests)
}

/// The inbound half from a response stream that is already open.
pub(crate) fn inbound<M: ServerMessage>(responses: Streaming<M>) -> InboundStream {
    Box::pin(responses.map(|message| message.and_then(M::into_inbound)))
}

/// The inbound half from a call still under way in its own task; reads wait for it to open.
pub(crate) fn inbound_from_call<M: ServerMessage>(
    call: JoinHandle<Result<Response<Streaming<M>>, Status>>,
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

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                if let Some(meter) = &mut this.meter {
                    meter.add_in(n);
                }
                return Poll::Ready(Ok(()));
            }
            match &this.read_state {
                ReadState::Open => {}
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Failed(kind, message) => {
                    return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
                }
            }
            match ready!(this.inbound.as_mut().poll_next(cx)) {
                Some(Ok(Inbound::Data(chunk))) => this.unread = chunk,
                // Trailers without `close_write` end the direction just the same.
                Some(Ok(Inbound::CloseWrite)) | None => this.read_state = ReadState::Eof,
                Some(Err(status)) => {
                    let error = io::Error::from(Error::from_status(status));
                    if let Some(meter) = &mut this.meter {
                        meter.failed(&error);
                    }
                    this.read_state = ReadState::Failed(error.kind(), error.to_string());
                }
            }
        }
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
        self.writer.close();
        Poll::Ready(Ok(()))
    }
}

/// How long a dropped connection may take to finish gracefully: to deliver what it still
/// holds and receive the server's end of the call.
const LINGER: Duration = Duration::from_secs(60);

impl Drop for Connection {
    /// Closes the connection the way TCP's `close` does. This side's write direction ends
    /// after everything written so far. If data the application never read is pending, the
    /// call is reset at once (TCP sends RST). Otherwise the call stays open in the background
    /// until the server ends it, which it does once the other side has closed its direction
    /// too; should the other side send more data meanwhile, or not finish within a minute,
    /// the call is reset. Dropping the inbound stream before the call ends would reset the
    /// stream at once, and a reset discards whatever this side wrote that is still in flight.
    fn drop(&mut self) {
        let peer_closed = match self.read_state {
            ReadState::Failed(..) => return,
            ReadState::Open if !self.unread.is_empty() => return,
            ReadState::Open => false,
            ReadState::Eof => true,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut inbound: InboundStream = Box::pin(stream::empty());
        std::mem::swap(&mut inbound, &mut self.inbound);
        runtime.spawn(async move {
            let finished = async {
                let mut peer_closed = peer_closed;
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
        let sent: Vec<u8> = reader.map(|b| b.to_vec()).concat().await;
        assert_eq!(sent, b"0123456789");
        assert!(conn.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn the_call_task_feeds_reads_once_it_opens() {
        let call: JoinHandle<Result<Response<Streaming<DialResponseAlias>>, Status>> =
            tokio::spawn(async { Err(Status::not_found("ticket expired")) });
        let mut inbound = inbound_from_call(call);
        let first = inbound.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::NotFound);
    }

    type DialResponseAlias = sesame_proto::v1::DialResponse;
}
