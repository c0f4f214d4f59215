//! Sesame's protocol core: everything agents, dialers and the relay share.
//!
//! Sesame carries TCP connections from a *dialer*, through a self-hosted *relay*, to a
//! service behind an *agent* that only ever dials out. Each agent keeps one gRPC control
//! stream open to the relay (its *session*); each tunneled connection is a gRPC stream of its
//! own on each side, joined in the relay, so HTTP/2 flow control applies per connection and a
//! slow reader never stalls another connection.
//!
//! # Layout
//!
//! - [`agent`]: the agent API. [`Session`] registers a remote; [`Listener`] yields the
//!   connections dialed to a port; [`Session::forward`] sends them to a local [`Target`].
//! - [`dialer`]: [`Dialer::dial`] opens a connection to a port of a remote.
//! - [`Connection`]: what both ends see, `AsyncRead + AsyncWrite` with half-close;
//!   [`join_tcp`] carries one between a TCP stream and the tunnel.
//! - [`Error`]: typed errors that travel as gRPC statuses with a reason.
//! - [`RelayAccess`]: how a client reaches a relay ([`RelayUrl`], [`Trust`] with a pinned
//!   [`Fingerprint`] or certificate authorities, a bearer [`Token`]), and the [`RelayChannel`]
//!   it opens.
//! - [`RemoteName`], [`SessionId`], [`TransportSettings`]: the small types the rest is built
//!   from.
//!
//! The crate also holds what the Sesame relay and CLI share with it: how the relay joins a
//! dialer's stream to an agent's (`splice`), the session handshake as pure functions
//! (`handshake`), how data messages map to bytes (`frame`) and are framed on the wire without
//! copying their chunks (`wire`), the protocol's constants, dial tickets and agent keys, and
//! text helpers for messages. Those are hidden from this documentation: they are internal to
//! the project, not a stable API.

pub mod agent;
mod connection;
pub mod dialer;
mod error;
#[doc(hidden)]
pub mod frame;
#[doc(hidden)]
pub mod handshake;
mod name;
mod pipe;
#[doc(hidden)]
pub mod settings;
#[doc(hidden)]
pub mod splice;
mod tcp;
mod ticket;
mod transport;
#[doc(hidden)]
pub mod wire;

pub use agent::{
    Event, Forward, HttpProtocol, HttpPublish, Listener, Publish, Published, Reconnect, Session,
    SessionBuilder, Stats, Target, TcpPublish,
};
pub use connection::{Connection, ConnectionInfo};
pub use dialer::Dialer;
pub(crate) use error::root_cause_phrase;
pub use error::{ERROR_DOMAIN, Error};
#[doc(hidden)]
pub use error::{format_duration, io_reason, one_line, status_from_rpc};
pub use name::RemoteName;
pub use settings::TransportSettings;
pub use tcp::{join_tcp, join_tcp_until_idle};
pub use ticket::SessionId;
#[doc(hidden)]
pub use ticket::{AgentKey, Ticket};
pub use transport::{
    CertificateRefusal, DEFAULT_PORT, DEFAULT_RELAY, Fingerprint, Presented, RelayAccess,
    RelayChannel, RelayUrl, Token, Trust, certificate_refusal,
};

/// Re-exported so that users of this crate name the same tonic and proto types.
pub use {sesame_proto as proto, tonic};
