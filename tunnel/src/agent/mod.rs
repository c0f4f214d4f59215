//! The agent: a program behind NAT that dials out to a relay and serves the connections
//! dialed to its remote.
//!
//! Shaped like ngrok-rust: build a [`Session`], then take a [`Listener`] per port (a `Stream`
//! of incoming [`Connection`](crate::Connection)s to serve in-process), or let the session
//! [`forward`](Session::forward) a port to a local TCP target.
//!
//! ```no_run
//! # async fn example() -> Result<(), sesame_tunnel::Error> {
//! use futures_util::StreamExt;
//! use sesame_tunnel::{RelayAccess, RelayUrl, RemoteName, Session, Token, Trust};
//! use tokio::io::AsyncWriteExt;
//!
//! let url: RelayUrl = "https://relay.example.com".parse().unwrap();
//! let token: Token = "sesame_1a2b3c4d_00112233445566778899aabbccddeeff".parse().unwrap();
//! let session = Session::builder(RemoteName::new("device-42")?)
//!     .relay(RelayAccess::new(url, Trust::SystemRoots, Some(token)))
//!     .connect()
//!     .await?;
//! let mut listener = session.listen(80).await?;
//! while let Some(conn) = listener.next().await {
//!     let mut conn = conn?;
//!     tokio::spawn(async move { conn.write_all(b"hello from behind the NAT\n").await });
//! }
//! # Ok(()) }
//! ```

// Dependencies go one way, from the public handles down to the protocol logic:
//
// - `session` (the public `Session`), with `listener` and `forward` (the handles it returns,
//   which define the methods that return them) on top;
// - `supervisor`, the task that keeps a session up, and `dispatch`, which carries out what
//   the control logic decides;
// - `shared`, the state the handles and the task share;
// - `control`, the protocol logic, without I/O; `link`, one registration with the relay;
// - `target`, `publish`, `observe` and `reconnect`, which depend on none of these.
mod control;
mod dispatch;
mod forward;
mod link;
mod listener;
mod observe;
mod publish;
mod reconnect;
mod session;
mod shared;
mod supervisor;
mod target;

pub use forward::Forward;
pub use listener::Listener;
pub(crate) use observe::ConnectionMeter;
pub use observe::{Event, Stats};
pub use publish::{HttpProtocol, HttpPublish, Publish, Published, TcpPublish};
pub use reconnect::Reconnect;
pub use session::{Session, SessionBuilder};
pub use target::Target;
