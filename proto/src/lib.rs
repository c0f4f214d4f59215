//! The Sesame gRPC API, package `sesame.v1`: protobuf messages (prost) and the clients and
//! servers of its four services (tonic).
//!
//! - [`v1::tunnel_service_server::TunnelService`]: agents open a session and accept connections;
//! - [`v1::dialer_service_server::DialerService`]: dialers open connections to remotes;
//! - [`v1::remote_service_server::RemoteService`]: clients list and read connected remotes;
//! - [`v1::token_service_server::TokenService`]: administrators manage the tokens a relay accepts.
//!
//! The `.proto` sources live beside this crate under `sesame/v1/`; `docs/protocol.md` in the
//! repository describes the messages, their order and their meaning.

/// Version 1 of the Sesame API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("sesame.v1");
}

/// The parts of Google's API annotations (`google.api`) that the Sesame API uses.
#[allow(missing_docs, clippy::all)]
pub mod google_api {
    tonic::include_proto!("google.api");
}

/// The `google.rpc.Status` carried inside Sesame messages, shared with `tonic-types`.
pub use tonic_types::pb::Status as RpcStatus;
