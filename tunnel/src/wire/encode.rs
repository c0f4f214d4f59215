//! [`EncodeBody`]: messages out as a call's body, chunks sent from where they lie.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::HeaderMap;
use http_body::{Body, Frame};
use tonic::{Code, Status};

use super::{ChunkMessage, DATA_TAG, PREFIX_BYTES};

/// Chunks shorter than this are copied next to their prefix and go out as one HTTP/2 frame;
/// longer ones go out as a frame of their own, uncopied, after a frame with the prefix.
const COPY_BELOW: usize = 8 << 10;

/// The longest prefix of a data message: gRPC's, the field's tag and a length varint.
const DATA_HEAD_BYTES: usize = PREFIX_BYTES + 1 + 5;

/// Which end of the call a body is sent by: a server ends its body with the call's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Client,
    Server,
}

/// A call's body made of a stream of messages.
///
/// On the client side the body ends when the stream does, and an error in the stream
/// resets the call. On the server side the body ends with trailers that carry the status:
/// OK when the stream ends, or the stream's error.
pub struct EncodeBody<S> {
    messages: S,
    sender: Sender,
    /// The chunk to send after the frame just sent, which held its prefix.
    chunk: Option<Bytes>,
    done: bool,
}

impl<S> std::fmt::Debug for EncodeBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message stream is usually an unnameable combinator without `Debug`.
        f.debug_struct("EncodeBody")
            .field("sender", &self.sender)
            .field("chunk", &self.chunk.as_ref().map(Bytes::len))
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S> EncodeBody<S> {
    /// A request body: a client's messages.
    pub fn client(messages: S) -> Self {
        Self::new(messages, Sender::Client)
    }

    /// A response body: a server's messages, then the call's status.
    pub fn server(messages: S) -> Self {
        Self::new(messages, Sender::Server)
    }

    fn new(messages: S, sender: Sender) -> Self {
        EncodeBody {
            messages,
            sender,
            chunk: None,
            done: false,
        }
    }
}

impl<S, M> Body for EncodeBody<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: ChunkMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunk.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let end = match ready!(Pin::new(&mut this.messages).poll_next(cx)) {
            Some(Ok(message)) => {
                let (head, chunk) = encode(message);
                this.chunk = chunk;
                return Poll::Ready(Some(Ok(Frame::data(head))));
            }
            Some(Err(status)) => status,
            None => Status::new(Code::Ok, ""),
        };
        this.done = true;
        match this.sender {
            Sender::Server => Poll::Ready(Some(Ok(Frame::trailers(trailers(&end))))),
            Sender::Client if end.code() == Code::Ok => Poll::Ready(None),
            Sender::Client => Poll::Ready(Some(Err(end))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunk.is_none()
    }
}

/// The trailers that end a call with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(3);
    if let Err(unencodable) = status.add_header(&mut trailers) {
        trailers.clear();
        // Only details that fail to encode can land here; the code and message still go.
        let _ = Status::new(unencodable.code(), unencodable.message()).add_header(&mut trailers);
    }
    trailers
}

/// Encodes one message with its gRPC prefix. A long data message comes back in two pieces:
/// its prefix and field header, then the chunk itself.
pub(super) fn encode<M: ChunkMessage>(message: M) -> (Bytes, Option<Bytes>) {
    let message = match message.into_chunk() {
        Ok(chunk) if chunk.len() >= COPY_BELOW => {
            let mut head = BytesMut::with_capacity(DATA_HEAD_BYTES);
            let field_bytes = 1 + prost::encoding::encoded_len_varint(chunk.len() as u64);
            head.put_u8(0);
            head.put_u32(message_length(field_bytes + chunk.len()));
            head.put_u8(DATA_TAG);
            prost::encoding::encode_varint(chunk.len() as u64, &mut head);
            return (head.freeze(), Some(chunk));
        }
        Ok(chunk) => M::from_chunk(chunk),
        Err(message) => message,
    };
    let length = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + length);
    buf.put_u8(0);
    buf.put_u32(message_length(length));
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    (buf.freeze(), None)
}

/// A message length as the gRPC prefix holds it. Chunks are at most a few MiB, far below
/// the 4 GiB the prefix can express.
fn message_length(length: usize) -> u32 {
    u32::try_from(length).expect("a message shorter than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use sesame_proto::v1::{DialRequest, DialTarget, dial_request};

    /// Decodes what `encode` produced the way any gRPC library would.
    fn decode_whole(head: &Bytes, chunk: Option<&Bytes>) -> DialRequest {
        let mut whole = head.to_vec();
        whole.extend_from_slice(chunk.map_or(&[][..], |chunk| chunk));
        assert_eq!(whole[0], 0, "uncompressed");
        let length = u32::from_be_bytes(whole[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            length,
            whole.len() - 5,
            "the prefix holds the message's length"
        );
        DialRequest::decode(&whole[5..]).unwrap()
    }

    #[test]
    fn a_long_chunk_goes_out_uncopied_after_its_head() {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let (head, sent) = encode(DialRequest::from_chunk(chunk.clone()));
        let sent = sent.expect("sent apart");
        assert_eq!(sent.as_ptr(), chunk.as_ptr(), "the very same bytes");
        assert_eq!(
            decode_whole(&head, Some(&sent)),
            DialRequest::from_chunk(chunk)
        );
    }

    #[test]
    fn a_short_chunk_goes_out_in_one_piece() {
        let chunk = Bytes::from_static(b"hello");
        let (head, sent) = encode(DialRequest::from_chunk(chunk.clone()));
        assert!(sent.is_none());
        assert_eq!(decode_whole(&head, None), DialRequest::from_chunk(chunk));
    }

    #[test]
    fn other_messages_are_encoded_as_protobuf() {
        let target = DialRequest {
            message: Some(dial_request::Message::Target(DialTarget {
                remote: "remotes/device-42".into(),
                port: 22,
            })),
        };
        let (head, sent) = encode(target.clone());
        assert!(sent.is_none());
        assert_eq!(decode_whole(&head, None), target);
    }

    #[tokio::test]
    async fn a_server_body_ends_with_the_status() {
        use http_body_util::BodyExt;
        let messages = futures_util::stream::iter([
            Ok(DialRequest::from_chunk(Bytes::from_static(b"x"))),
            Err(Status::not_found("gone")),
        ]);
        let collected = EncodeBody::server(messages).collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!((status.code(), status.message()), (Code::NotFound, "gone"));
        let ok = EncodeBody::server(futures_util::stream::empty::<Result<DialRequest, Status>>());
        let trailers = ok.collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(Status::from_header_map(&trailers).unwrap().code(), Code::Ok);
    }
}
