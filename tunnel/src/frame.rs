//! How the four data-carrying messages map to the bytes of a connection.
//!
//! Internal: shared by the relay, the dialer and the agent of this project; not a stable API,
//! and hidden from the documentation.
//!
//! Clients (dialers and agents) send [`ClientMessage`]s: data, or a reset; they end their
//! direction by ending the request stream. Servers (the relay) send [`ServerMessage`]s: data,
//! and `close_write` to end their direction, because a gRPC server cannot end its response
//! stream without ending the call; a server aborts by ending the call with an error.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, CloseWrite, DialRequest, DialResponse,
    ResetConnection, accept_connection_request, accept_connection_response, dial_request,
    dial_response,
};
use tonic::Status;

use crate::Error;

/// What a connection's reader receives from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes of the connection.
    Data(Bytes),
    /// The other side shut down its write side.
    CloseWrite,
}

/// What a client sends after its opening message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Bytes of the connection.
    Data(Bytes),
    /// The client aborts the connection, for this reason.
    Reset(String),
}

/// A boxed stream of what a connection's reader receives.
pub(crate) type InboundStream = Pin<Box<dyn Stream<Item = Result<Inbound, Status>> + Send>>;

/// A message a client sends after its opening message.
pub trait ClientMessage: Sized + Send + 'static {
    /// Wraps what the client sends.
    fn from_outbound(outbound: Outbound) -> Self;
    /// What the message carries, refusing anything else as a protocol error.
    fn into_outbound(self) -> Result<Outbound, Status>;
}

/// A message a server sends after its opening message: data or `close_write`.
pub trait ServerMessage: Sized + Send + 'static {
    /// Wraps a chunk of data.
    fn data(chunk: Bytes) -> Self;
    /// The message that ends the server's direction.
    fn close_write() -> Self;
    /// What the message means to the reader, refusing anything else as a protocol error.
    fn into_inbound(self) -> Result<Inbound, Status>;
}

fn unexpected(what: &str) -> Status {
    Error::protocol(format!("unexpected {what} in a data stream")).to_status()
}

fn reset(reason: String) -> ResetConnection {
    ResetConnection { reason }
}

impl ClientMessage for DialRequest {
    fn from_outbound(outbound: Outbound) -> Self {
        let message = match outbound {
            Outbound::Data(chunk) => dial_request::Message::Data(chunk),
            Outbound::Reset(reason) => dial_request::Message::Reset(reset(reason)),
        };
        DialRequest {
            message: Some(message),
        }
    }

    fn into_outbound(self) -> Result<Outbound, Status> {
        match self.message {
            Some(dial_request::Message::Data(chunk)) => Ok(Outbound::Data(chunk)),
            Some(dial_request::Message::Reset(reset)) => Ok(Outbound::Reset(reset.reason)),
            Some(dial_request::Message::Target(_)) => Err(unexpected("second target")),
            None => Err(unexpected("empty message")),
        }
    }
}

impl ClientMessage for AcceptConnectionRequest {
    fn from_outbound(outbound: Outbound) -> Self {
        let message = match outbound {
            Outbound::Data(chunk) => accept_connection_request::Message::Data(chunk),
            Outbound::Reset(reason) => accept_connection_request::Message::Reset(reset(reason)),
        };
        AcceptConnectionRequest {
            message: Some(message),
        }
    }

    fn into_outbound(self) -> Result<Outbound, Status> {
        match self.message {
            Some(accept_connection_request::Message::Data(chunk)) => Ok(Outbound::Data(chunk)),
            Some(accept_connection_request::Message::Reset(reset)) => {
                Ok(Outbound::Reset(reset.reason))
            }
            Some(accept_connection_request::Message::Ticket(_)) => Err(unexpected("second ticket")),
            None => Err(unexpected("empty message")),
        }
    }
}

impl ServerMessage for DialResponse {
    fn data(chunk: Bytes) -> Self {
        DialResponse {
            message: Some(dial_response::Message::Data(chunk)),
        }
    }

    fn close_write() -> Self {
        DialResponse {
            message: Some(dial_response::Message::CloseWrite(CloseWrite {})),
        }
    }

    fn into_inbound(self) -> Result<Inbound, Status> {
        match self.message {
            Some(dial_response::Message::Data(chunk)) => Ok(Inbound::Data(chunk)),
            Some(dial_response::Message::CloseWrite(CloseWrite {})) => Ok(Inbound::CloseWrite),
            Some(dial_response::Message::Opened(_)) => Err(unexpected("second opened")),
            None => Err(unexpected("empty message")),
        }
    }
}

impl ServerMessage for AcceptConnectionResponse {
    fn data(chunk: Bytes) -> Self {
        AcceptConnectionResponse {
            message: Some(accept_connection_response::Message::Data(chunk)),
        }
    }

    fn close_write() -> Self {
        AcceptConnectionResponse {
            message: Some(accept_connection_response::Message::CloseWrite(
                CloseWrite {},
            )),
        }
    }

    fn into_inbound(self) -> Result<Inbound, Status> {
        match self.message {
            Some(accept_connection_response::Message::Data(chunk)) => Ok(Inbound::Data(chunk)),
            Some(accept_connection_response::Message::CloseWrite(CloseWrite {})) => {
                Ok(Inbound::CloseWrite)
            }
            None => Err(unexpected("empty message")),
        }
    }
}
