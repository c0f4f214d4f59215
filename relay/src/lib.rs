//! The Sesame relay: the meeting point of agents and dialers.
//!
//! Agents behind NAT dial out to the relay and keep a session open (`TunnelService`);
//! dialers ask it for connections to the ports those agents expose (`DialerService`); anyone
//! may list the connected remotes (`RemoteService`); administrators manage tokens
//! (`TokenService`). All four are gRPC services on one listener, over TLS unless told
//! otherwise. The relay never opens a connection of its own: it joins a dialer's stream to
//! the data stream the agent opens in answer.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7373").await?;
//! sesame_relay::Relay::builder()
//!     .build()
//!     .serve(listener, async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`server`](Relay): builds the parts, gives each service only the handles it uses, and
//!   runs the listeners until a graceful shutdown; `serving`: the gRPC listener's
//!   connections, served by tonic's `Server`; `workers`: the threads that serve connections,
//!   each connection on one; `shutdown`: when draining begins and when connections are cut;
//!   `admission`: connections and TLS handshakes per client address, the oldest handshake
//!   shed first;
//! - `tunnel`: `TunnelService`, agent sessions (control streams) and the data streams that
//!   accept dials; `control`: what a session's control messages mean, as plain functions
//!   over its state;
//! - `dialer`: `DialerService`; `sessions`: the agent sessions a relay can dial, behind the
//!   `Sessions` seam, and the one dial path that `Dial` calls and public endpoints share;
//! - `data_calls`: the two calls that carry connections, served with the protocol core's own
//!   framing so that chunks cross the relay uncopied;
//! - `remotes`: `RemoteService` (`GetRemote` and `ListRemotes`);
//! - [`registry`]: who is connected, behind the [`Registry`] trait;
//! - [`auth`]: the [`Authorize`](auth::Authorize) check every call passes (through `Gate`,
//!   which also locks out addresses that fail too often), and the [`Caller`](auth::Caller)
//!   and [`Scope`](auth::Scope)s it yields; [`tokens`]: the [`TokenStore`] of bearer tokens,
//!   and `token_service`: `TokenService`, which manages it;
//! - `endpoints`: public endpoints (HTTP virtual hosts, TCP ports), who holds them, and the
//!   TCP ports' listeners; `http`: the virtual hosts' reverse proxy;
//! - [`tls`]: the certificate for TLS (given, or self-signed in the data directory), reloaded
//!   when its files change; `handshake`: TLS connections for the gRPC listener;
//!   `private_file` ([`write_private_file`]): files only the relay's user may read;
//! - [`proxy_protocol`]: the PROXY protocol header that tells a target who the client is;
//! - [`config`]: every setting, depending on nothing else of the relay;
//! - [`metrics`]: what the relay counts, and `/metrics` for Prometheus;
//! - `fuzzing` (feature `fuzzing`): entry points for the fuzz targets, not a stable API.

mod admission;
pub mod auth;
pub mod config;
mod control;
mod data_calls;
mod dialer;
mod endpoints;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod http;
pub mod metrics;
mod private_file;
pub mod proxy_protocol;
pub mod registry;
mod remotes;
mod server;
mod serving;
mod sessions;
mod shutdown;
pub mod tls;
mod token_service;
pub mod tokens;
mod tunnel;
mod workers;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use sesame_tunnel::{Error, format_duration};
use tonic::{Request, Status};

pub use config::{HttpConfig, PublicLimits, RelayConfig, TcpPortRange};
pub use private_file::write as write_private_file;
pub use registry::{MemoryRegistry, PublicEndpoints, Registry, RemoteRecord};
pub use server::{Relay, RelayBuilder};
pub use tokens::TokenStore;
pub use workers::WorkerTasks;

/// Locks `mutex`, even if a thread panicked while holding it: every lock in the relay guards
/// state that each change leaves whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port number from the wire: 1 to 65535.
fn port_number(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|port| *port != 0)
}

/// The caller's address, for logs and dial notices.
fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
}

/// Reads the opening message of a call, which must arrive within `timeout`.
async fn first_message<T>(
    requests: &mut (impl Stream<Item = Result<T, Status>> + Unpin),
    timeout: Duration,
    what: &str,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, requests.next()).await {
        Ok(Some(Ok(message))) => Ok(message),
        Ok(None) => Err(Error::protocol(format!("the call ended before its {what}")).into()),
        Ok(Some(Err(status))) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no {what} within {}",
            format_duration(timeout)
        ))),
    }
}
