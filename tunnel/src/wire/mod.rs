//! The four data-carrying messages on the wire, framed by hand so that chunks are never
//! copied.
//!
//! Internal: for the relay of this project; not a stable API, and hidden from the
//! documentation.
//!
//! gRPC frames each message with a five-byte prefix (a compression flag and a length). Tonic's
//! codec copies every received message into a buffer of its own before decoding it, and
//! encodes every sent message into another; for a tunnel that is two copies of every byte in
//! each process. Here, a data message is sent as two pieces, the prefix with the protobuf
//! field's header, then the chunk itself, which HTTP/2 writes out from where it lies; and a
//! received data message is handed on as slices of the HTTP/2 frames it arrived in. Every
//! other message, and a data message encoded in any other way, is encoded and decoded by
//! `prost` as usual, so peers that use a stock gRPC library interoperate.
//!
//! - [`DecodeStream`]: a call's body as a stream of messages.
//! - [`EncodeBody`]: a stream of messages as a call's body.
//! - Clients make these calls with a crate-private `call`; the relay serves them with the two
//!   halves above.

mod call;
mod decode;
mod encode;

use bytes::Bytes;
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, DialRequest, DialResponse,
    accept_connection_request, accept_connection_response, dial_request, dial_response,
};

pub(crate) use call::call;
pub use decode::DecodeStream;
pub use encode::EncodeBody;

/// The path of `DialerService.Dial`, which dialers call.
pub const DIAL_PATH: &str = "/sesame.v1.DialerService/Dial";

/// The path of `TunnelService.AcceptConnection`, which agents call.
pub const ACCEPT_CONNECTION_PATH: &str = "/sesame.v1.TunnelService/AcceptConnection";

/// The content type of gRPC calls.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// The gRPC prefix of every message: the compression flag and the message's length.
const PREFIX_BYTES: usize = 5;

/// The protobuf tag of the `bytes data = 2` field that all four data-carrying messages hold
/// in their `message` oneof: field 2, wire type 2 (length-delimited).
const DATA_TAG: u8 = (2 << 3) | 2;

/// A message with a `bytes data = 2` field in a oneof, which this module frames without
/// copying the data.
pub trait ChunkMessage: prost::Message + Default + Send + 'static {
    /// The message carrying `chunk`.
    fn from_chunk(chunk: Bytes) -> Self;
    /// The chunk, if this is a data message; otherwise the message itself.
    fn into_chunk(self) -> Result<Bytes, Self>;
}

macro_rules! chunk_message {
    ($message:ident, $oneof:ident) => {
        impl ChunkMessage for $message {
            fn from_chunk(chunk: Bytes) -> Self {
                $message {
                    message: Some($oneof::Message::Data(chunk)),
                }
            }

            fn into_chunk(self) -> Result<Bytes, Self> {
                match self.message {
                    Some($oneof::Message::Data(chunk)) => Ok(chunk),
                    message => Err($message { message }),
                }
            }
        }
    };
}

chunk_message!(DialRequest, dial_request);
chunk_message!(DialResponse, dial_response);
chunk_message!(AcceptConnectionRequest, accept_connection_request);
chunk_message!(AcceptConnectionResponse, accept_connection_response);
