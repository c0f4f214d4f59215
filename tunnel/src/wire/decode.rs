//! [`DecodeStream`]: a call's body in as messages, chunks as slices of the frames they
//! arrived in.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use http_body::Body as _;
use tonic::body::Body;
use tonic::{Code, Status};

use super::{ChunkMessage, DATA_TAG, PREFIX_BYTES};
use crate::settings::MAX_MESSAGE_BYTES;

/// A chunk's length is a varint of at most five bytes (a `u32`); a longer one means the
/// message is encoded in some other way.
const MAX_LENGTH_VARINT: usize = 5;

/// What a stream ends with, besides its messages.
#[derive(Clone, Copy, Debug)]
enum Receiver {
    /// A server reading a request: the body's end ends the stream, as does a cancelled call.
    Server,
    /// A client reading a response: the call's status comes in the trailers (or, for a call
    /// that ended at once, in the headers: then `trailers` is false).
    Client { http: StatusCode, trailers: bool },
}

/// The messages of a call's body, as gRPC frames them.
///
/// A data message is yielded as one or more data messages whose chunks are slices of the
/// HTTP/2 frames that carried it, so its bytes are never copied; every other message is
/// decoded whole. A message longer than [`MAX_MESSAGE_BYTES`], a compressed message, a
/// malformed one or a body that ends within a message ends the stream with an error.
pub struct DecodeStream<M> {
    body: Body,
    receiver: Receiver,
    decoder: Decoder,
    /// What is left of the last frame.
    input: Bytes,
    done: bool,
    _messages: PhantomData<fn() -> M>,
}

impl<M: ChunkMessage> DecodeStream<M> {
    /// The messages of a request body, as a server reads them.
    pub fn request(body: Body) -> Self {
        Self::new(body, Receiver::Server)
    }

    /// The messages of a response body. `http` is the response's status and `trailers`
    /// whether the call's status is still to come (false when the headers held it).
    pub(crate) fn response(body: Body, http: StatusCode, trailers: bool) -> Self {
        Self::new(body, Receiver::Client { http, trailers })
    }

    fn new(body: Body, receiver: Receiver) -> Self {
        DecodeStream {
            body,
            receiver,
            decoder: Decoder::default(),
            input: Bytes::new(),
            done: false,
            _messages: PhantomData,
        }
    }

    /// How the call ended once the body has (`trailers`, if any, came last): `Some` error,
    /// or `None` for a clean end.
    fn end(&self, trailers: Option<&HeaderMap>) -> Option<Status> {
        if !self.decoder.between_messages() || !self.input.is_empty() {
            return Some(Status::internal(
                "the call's body ended in the middle of a message",
            ));
        }
        let Receiver::Client {
            http,
            trailers: expected,
        } = self.receiver
        else {
            return None;
        };
        if let Some(status) = trailers.and_then(Status::from_header_map) {
            return (status.code() != Code::Ok).then_some(status);
        }
        if !expected {
            return None;
        }
        Some(match http {
            StatusCode::OK => Status::unknown("the call ended without a status"),
            other => Status::new(
                status_code_of(other),
                format!("the call failed with HTTP status {other}"),
            ),
        })
    }
}

/// The gRPC code a failed HTTP response without a gRPC status maps to, as gRPC's
/// http-grpc-status-mapping gives it.
fn status_code_of(http: StatusCode) -> Code {
    match http {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    }
}

impl<M: ChunkMessage> Stream for DecodeStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.next::<M>(&mut this.input) {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => {
                    this.done = true;
                    // A client that cancels its call between messages has finished
                    // sending, as far as the server's reader is concerned; within a message,
                    // part of a chunk is lost, which must not pass for an end of data.
                    if matches!(this.receiver, Receiver::Server)
                        && status.code() == Code::Cancelled
                        && this.decoder.between_messages()
                    {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(this.end(None).map(Err));
                }
            };
            match frame.into_data() {
                Ok(data) => this.input = data,
                Err(frame) => {
                    this.done = true;
                    let trailers = frame.into_trailers().ok();
                    return Poll::Ready(this.end(trailers.as_ref()).map(Err));
                }
            }
        }
    }
}

impl<M> std::fmt::Debug for DecodeStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeStream")
            .field("receiver", &self.receiver)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Where the decoder is within the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a message's prefix into `held`.
    Prefix,
    /// Reading the first bytes of a message of `length` bytes into `held`: a data field's
    /// tag and length, or the start of some other message.
    Head { length: usize },
    /// Passing on the `remaining` bytes of a data message's chunk.
    Chunk { remaining: usize },
    /// Reading a whole message of `length` bytes into `held`, to decode it.
    Whole { length: usize },
}

/// Splits a body's bytes into messages.
#[derive(Debug)]
struct Decoder {
    state: State,
    /// The bytes of a prefix, of a head, or of a whole message read so far.
    held: BytesMut,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Prefix,
            held: BytesMut::new(),
        }
    }
}

/// What the first bytes of a message say about it.
enum Head {
    /// More bytes are needed to tell.
    Incomplete,
    /// A data message whose chunk, of this many bytes, is the rest of the message.
    Chunk(usize),
    /// Some other message, or a data message encoded some other way.
    Other,
}

impl Decoder {
    /// Whether the decoder stands between two messages.
    fn between_messages(&self) -> bool {
        self.state == State::Prefix && self.held.is_empty()
    }

    /// The next message that `input` completes, consuming what it reads; `None` once
    /// `input` is used up.
    fn next<M: ChunkMessage>(&mut self, input: &mut Bytes) -> Result<Option<M>, Status> {
        loop {
            match self.state {
                State::Chunk { remaining } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(input.len());
                    let chunk = input.split_to(n);
                    self.state = match remaining - n {
                        0 => State::Prefix,
                        remaining => State::Chunk { remaining },
                    };
                    return Ok(Some(M::from_chunk(chunk)));
                }
                State::Prefix => {
                    if !self.hold(input, PREFIX_BYTES) {
                        return Ok(None);
                    }
                    let compressed = self.held[0];
                    let length = u32::from_be_bytes([
                        self.held[1],
                        self.held[2],
                        self.held[3],
                        self.held[4],
                    ]) as usize;
                    self.held.clear();
                    if compressed != 0 {
                        return Err(Status::internal(
                            "a compressed message arrived, and compression was not agreed",
                        ));
                    }
                    if length > MAX_MESSAGE_BYTES {
                        return Err(Status::resource_exhausted(format!(
                            "a message of {length} bytes is longer than the limit of \
                             {MAX_MESSAGE_BYTES}"
                        )));
                    }
                    if length == 0 {
                        return Ok(Some(M::default()));
                    }
                    self.state = State::Head { length };
                }
                State::Head { length } => {
                    let Some(&byte) = input.first() else {
                        return Ok(None);
                    };
                    // One byte at a time, so that the head never takes a chunk's bytes.
                    input.advance(1);
                    self.held.put_u8(byte);
                    match head(&self.held, length) {
                        Head::Incomplete => {}
                        Head::Chunk(0) => {
                            self.held.clear();
                            self.state = State::Prefix;
                            return Ok(Some(M::from_chunk(Bytes::new())));
                        }
                        Head::Chunk(remaining) => {
                            self.held.clear();
                            self.state = State::Chunk { remaining };
                        }
                        Head::Other => self.state = State::Whole { length },
                    }
                }
                State::Whole { length } => {
                    if !self.hold(input, length) {
                        return Ok(None);
                    }
                    let message = self.held.split().freeze();
                    self.state = State::Prefix;
                    return M::decode(message).map(Some).map_err(|error| {
                        Status::internal(format!("a malformed message: {error}"))
                    });
                }
            }
        }
    }

    /// Moves bytes from `input` into `held` until it holds `want`; whether it does.
    fn hold(&mut self, input: &mut Bytes, want: usize) -> bool {
        let n = (want - self.held.len()).min(input.len());
        self.held.extend_from_slice(&input[..n]);
        input.advance(n);
        self.held.len() == want
    }
}

/// Reads the first bytes of a message of `length` bytes.
fn head(held: &[u8], length: usize) -> Head {
    if held[0] != DATA_TAG {
        return Head::Other;
    }
    let varint = &held[1..];
    if let Some(end) = varint.iter().position(|byte| byte & 0x80 == 0) {
        let value = varint[..=end]
            .iter()
            .rev()
            .fold(0u64, |value, byte| (value << 7) | u64::from(byte & 0x7f));
        // Only a message that is nothing but its data field streams its chunk.
        return match usize::try_from(value) {
            Ok(value) if 1 + end + 1 + value == length => Head::Chunk(value),
            _ => Head::Other,
        };
    }
    if varint.len() >= MAX_LENGTH_VARINT || held.len() >= length {
        Head::Other
    } else {
        Head::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode::encode;
    use prost::Message;
    use sesame_proto::v1::{DialRequest, DialTarget, dial_request};

    fn target() -> DialRequest {
        DialRequest {
            message: Some(dial_request::Message::Target(DialTarget {
                remote: "remotes/device-42".into(),
                port: 22,
            })),
        }
    }

    /// A message framed as any gRPC library frames it: prefix, then the protobuf bytes.
    fn framed(message: &DialRequest) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    /// Feeds `frames` to a decoder, returning the messages and whether it ended between
    /// messages.
    fn decode_frames(frames: &[Bytes]) -> Result<(Vec<DialRequest>, bool), Status> {
        let mut decoder = Decoder::default();
        let mut messages = Vec::new();
        for frame in frames {
            let mut input = frame.clone();
            while let Some(message) = decoder.next::<DialRequest>(&mut input)? {
                messages.push(message);
            }
            assert!(input.is_empty(), "each frame is used up");
        }
        Ok((messages, decoder.between_messages()))
    }

    /// The bytes of all data messages, and the other messages, in order.
    fn chunks(messages: Vec<DialRequest>) -> (Vec<u8>, Vec<DialRequest>) {
        let mut data = Vec::new();
        let mut others = Vec::new();
        for message in messages {
            match message.into_chunk() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(other) => others.push(other),
            }
        }
        (data, others)
    }

    #[test]
    fn a_chunk_arrives_as_a_slice_of_its_frame() {
        let chunk = Bytes::from(vec![9u8; 64 << 10]);
        let (head, sent) = encode(DialRequest::from_chunk(chunk.clone()));
        let sent = sent.unwrap();
        let (messages, between) = decode_frames(&[head, sent.clone()]).unwrap();
        assert!(between);
        assert_eq!(messages.len(), 1);
        let got = messages.into_iter().next().unwrap().into_chunk().unwrap();
        assert_eq!(got.as_ptr(), sent.as_ptr(), "no copy");
        assert_eq!(got, chunk);
    }

    #[test]
    fn messages_split_at_every_byte_decode_the_same() {
        let mut stream = framed(&target());
        stream.extend(framed(&DialRequest::from_chunk(Bytes::from_static(b"abc"))));
        stream.extend(framed(&DialRequest::from_chunk(Bytes::new())));
        stream.extend(framed(&DialRequest::from_chunk(Bytes::from(vec![
            5u8;
            300
        ]))));
        stream.extend(framed(&DialRequest::default()));
        for cut in 0..stream.len() {
            let frames = [
                Bytes::copy_from_slice(&stream[..cut]),
                Bytes::copy_from_slice(&stream[cut..]),
            ];
            let (messages, between) = decode_frames(&frames).unwrap();
            assert!(between, "cut at {cut}");
            let (data, others) = chunks(messages);
            assert_eq!(data.len(), 303, "cut at {cut}");
            assert!(data[..3] == *b"abc" && data[3..].iter().all(|b| *b == 5));
            assert_eq!(others, [target(), DialRequest::default()], "cut at {cut}");
        }
    }

    #[test]
    fn a_byte_at_a_time_decodes_the_same() {
        let stream = framed(&DialRequest::from_chunk(Bytes::from(vec![1u8; 20_000])));
        let frames: Vec<Bytes> = stream
            .iter()
            .map(|b| Bytes::copy_from_slice(&[*b]))
            .collect();
        let (messages, between) = decode_frames(&frames).unwrap();
        assert!(between);
        assert_eq!(chunks(messages).0, vec![1u8; 20_000]);
    }

    #[test]
    fn a_data_message_with_another_field_is_decoded_whole() {
        // The data field, then an unknown field 9 (varint 1): legal protobuf, not a bare chunk.
        let mut body = vec![DATA_TAG, 2, b'h', b'i', 9 << 3, 1];
        let mut stream = vec![0];
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.append(&mut body);
        let (messages, between) = decode_frames(&[Bytes::from(stream)]).unwrap();
        assert!(between);
        assert_eq!(chunks(messages).0, b"hi");
    }

    #[test]
    fn bad_frames_are_refused_with_a_status() {
        let long = [&[0u8][..], &(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes()].concat();
        let compressed = [&[1u8][..], &3u32.to_be_bytes(), &[DATA_TAG, 1, 0]].concat();
        let malformed = [&[0u8][..], &2u32.to_be_bytes(), &[0xff, 0xff]].concat();
        for (frame, code) in [
            (long, Code::ResourceExhausted),
            (compressed, Code::Internal),
            (malformed, Code::Internal),
        ] {
            let error = decode_frames(&[Bytes::from(frame)]).unwrap_err();
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    /// A body of `frames`, as HTTP/2 would deliver it.
    fn body(frames: Vec<Result<http_body::Frame<Bytes>, Status>>) -> Body {
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_call_cancelled_within_a_message_is_an_error_not_an_end() {
        use futures_util::StreamExt;
        use http_body::Frame;
        let stream = framed(&DialRequest::from_chunk(Bytes::from(vec![3u8; 100])));
        let cancelled_after = |cut: usize| {
            body(vec![
                Ok(Frame::data(Bytes::copy_from_slice(&stream[..cut]))),
                Err(Status::cancelled("the client went away")),
            ])
        };
        let whole: Vec<_> = DecodeStream::<DialRequest>::request(cancelled_after(stream.len()))
            .collect()
            .await;
        assert!(matches!(&whole[..], [Ok(_)]), "{whole:?}");
        let cut: Vec<_> = DecodeStream::<DialRequest>::request(cancelled_after(50))
            .collect()
            .await;
        assert!(
            matches!(&cut[..], [Ok(_), Err(status)] if status.code() == Code::Cancelled),
            "{cut:?}"
        );
    }

    #[tokio::test]
    async fn a_response_ends_with_the_status_its_trailers_or_headers_give() {
        use futures_util::StreamExt;
        use http_body::Frame;
        let data = || Ok(Frame::data(Bytes::from(framed(&target()))));
        let mut not_found = HeaderMap::new();
        Status::not_found("no such remote")
            .add_header(&mut not_found)
            .unwrap();
        let codes = |messages: Vec<Result<DialRequest, Status>>| -> Vec<Code> {
            messages
                .iter()
                .map(|m| m.as_ref().map_or_else(Status::code, |_| Code::Ok))
                .collect()
        };
        let failed = DecodeStream::<DialRequest>::response(
            body(vec![data(), Ok(Frame::trailers(not_found))]),
            StatusCode::OK,
            true,
        );
        assert_eq!(codes(failed.collect().await), [Code::Ok, Code::NotFound]);
        let unfinished =
            DecodeStream::<DialRequest>::response(body(vec![data()]), StatusCode::OK, true);
        assert_eq!(codes(unfinished.collect().await), [Code::Ok, Code::Unknown]);
        let bad_gateway =
            DecodeStream::<DialRequest>::response(body(vec![]), StatusCode::BAD_GATEWAY, true);
        assert_eq!(codes(bad_gateway.collect().await), [Code::Unavailable]);
        // The headers held an OK status: nothing more to wait for.
        let at_once = DecodeStream::<DialRequest>::response(body(vec![]), StatusCode::OK, false);
        assert_eq!(codes(at_once.collect().await), []);
    }

    #[test]
    fn a_body_cut_within_a_message_is_not_between_messages() {
        let stream = framed(&target());
        let (messages, between) =
            decode_frames(&[Bytes::copy_from_slice(&stream[..stream.len() - 1])]).unwrap();
        assert!(messages.is_empty());
        assert!(!between);
    }
}
