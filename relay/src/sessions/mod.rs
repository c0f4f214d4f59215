//! The agent sessions a relay can dial, behind the [`Sessions`] seam beside the
//! [`Registry`](crate::Registry): the registry says who is connected, the sessions carry the
//! dials to them.
//!
//! A dial is parked under a fresh ticket, announced to the agent on its control stream, and
//! answered when the agent opens its data stream with that ticket (or refuses, or does not
//! answer in time). [`LocalSessions`] keeps the sessions of the agents connected to this
//! relay; a cluster routes a dial for an agent held elsewhere to the relay that holds it,
//! which answers it from its own `LocalSessions`.

mod local;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use sesame_proto::v1::OpenSessionResponse;
use sesame_tunnel::splice::{FromDialer, LocalDial, ToDialer};
use sesame_tunnel::{Connection, RemoteName, SessionId, Ticket, TransportSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::auth::Caller;

pub(crate) use local::{Attached, LocalSessions};

/// Where a dial comes from, which decides whose connection slots it takes: token holders'
/// or the public's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Entrance {
    /// A token holder's `Dial` call (`sesame connect`).
    Dial,
    /// A request to an HTTP virtual host.
    Http,
    /// A public TCP port.
    Tcp,
}

/// A dial: a port of a remote, for a dialer.
pub(crate) struct Dial {
    /// The remote.
    pub(crate) name: RemoteName,
    /// Its port.
    pub(crate) port: u16,
    /// Who dials, for the agent's logs: an address.
    pub(crate) peer: String,
    /// What the dialer sends, after its target.
    pub(crate) from_dialer: FromDialer,
    /// Cancelled when the dialer's token is revoked or expires: cuts the connection.
    pub(crate) dialer_ended: Option<CancellationToken>,
    /// Where the dial comes from.
    pub(crate) entrance: Entrance,
}

/// The agent sessions a relay reaches, and the dials waiting for them.
pub(crate) trait Sessions: Send + Sync + 'static {
    /// Attaches session `id` of an agent connected to this relay, which registered `name`
    /// with `caller`'s token, within the limit of remotes per token (a name the token
    /// already holds does not count twice). Dials reach the session until the returned
    /// [`Attached`] is dropped, which fails the dials still waiting for it.
    fn attach(
        &self,
        caller: &Caller,
        name: &RemoteName,
        id: SessionId,
        link: SessionLink,
    ) -> Result<Attached, Status>;

    /// Ends session `id` of this relay, whose agent has opened a new session.
    fn replace(&self, id: &SessionId);

    /// Session `id` of this relay, while it is attached.
    fn get(&self, id: &SessionId) -> Option<SessionLink>;

    /// Takes the dial a ticket stands for, if `session` is the one it was offered to. A
    /// ticket presented by another session stays valid for its own.
    fn take_dial(&self, ticket: &Ticket, session: &SessionId) -> Option<PendingDial>;

    /// Dials: resolves, once the agent has accepted, with the stream of what the remote
    /// sends.
    fn dial(&self, dial: Dial) -> BoxFuture<'_, Result<ToDialer, Status>>;

    /// How many remotes a token holds now.
    fn remotes_held(&self, token: &str) -> usize;
}

/// How to reach an agent session on this relay.
#[derive(Clone, Debug)]
pub(crate) struct SessionLink {
    /// The session's control stream towards the agent.
    pub(crate) control: mpsc::Sender<Result<OpenSessionResponse, Status>>,
    /// The largest data payload the agent accepts.
    pub(crate) chunk_limit: usize,
    /// Cancelled when a new session of the same agent takes the name over.
    pub(crate) replaced: CancellationToken,
    /// The token the session registered with.
    pub(crate) owner: Option<String>,
    /// The connections the session carries now for token holders.
    pub(crate) connections: Arc<AtomicUsize>,
    /// The connections the session carries now for public clients.
    pub(crate) public_connections: Arc<AtomicUsize>,
}

impl SessionLink {
    /// Takes a connection slot for a dial from `entrance`, if the session has one free of
    /// that entrance's `limit`.
    pub(crate) fn take_slot(&self, entrance: Entrance, limit: usize) -> Option<ConnectionSlot> {
        let connections = match entrance {
            Entrance::Dial => &self.connections,
            Entrance::Http | Entrance::Tcp => &self.public_connections,
        };
        let taken = connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        });
        taken.ok().map(|_| ConnectionSlot(connections.clone()))
    }
}

/// One of a session's connection slots, given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a dial came from, and when: what its connection is counted as.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// The entrance it came through.
    pub(crate) entrance: Entrance,
    /// The remote it is for.
    pub(crate) name: RemoteName,
    /// When the dial began.
    pub(crate) started: tokio::time::Instant,
}

/// A dial waiting for its agent to accept or refuse it.
pub(crate) struct PendingDial {
    /// The session it was offered to.
    pub(crate) session: SessionId,
    /// Where the dial came from, and when.
    pub(crate) origin: Origin,
    /// The connection's slot among the session's.
    pub(crate) slot: ConnectionSlot,
    /// Cancelled when the dialer's token is revoked or expires.
    pub(crate) dialer_ended: Option<CancellationToken>,
    /// The dialer's request stream, after its target.
    pub(crate) from_dialer: FromDialer,
    /// Where the dial's outcome goes: what the remote sends, once it accepted.
    pub(crate) reply: oneshot::Sender<Result<ToDialer, Status>>,
}

/// Dials from inside the relay, for a public endpoint (`entrance`): returns the connection to
/// read and write once the agent has accepted it.
pub(crate) async fn dial_local(
    sessions: &dyn Sessions,
    transport: &TransportSettings,
    (name, port): (&RemoteName, u16),
    peer: String,
    entrance: Entrance,
) -> Result<Connection, Status> {
    let (local, from_dialer) = LocalDial::new(transport);
    let dial = Dial {
        name: name.clone(),
        port,
        peer,
        from_dialer,
        dialer_ended: None,
        entrance,
    };
    let to_dialer = sessions.dial(dial).await?;
    Ok(local.connect(to_dialer, name.clone(), port))
}
