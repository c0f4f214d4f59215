//! Public TCP ports: a port of the relay's range, listened on by the relay, whose every
//! connection is dialed to one port of a remote.
//!
//! A port stays held for the token whose remote had it (through [`Authorize::claim_port`]),
//! for a while after the remote went away: a remote of another token cannot take it over
//! while the first one reconnects, and the remote that comes back (after a reconnect or a
//! relay restart) gets it again. Without tokens, the table remembers the last holder of each
//! port, and hands other remotes ports nobody held before ones that someone did.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sesame_proto::v1::TcpEndpoint;
use sesame_tunnel::{
    Connection, RemoteName, SessionId, TransportSettings, io_reason, join_tcp_until_idle,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admission::PerAddress;
use crate::auth::{Authorize, Caller, PortClaim};
use crate::config::TcpPortRange;
use crate::lock;
use crate::proxy_protocol::v2_header;
use crate::sessions::{Entrance, Sessions, dial_local};
use crate::shutdown::Shutdown;

/// A port opened for a remote.
pub(crate) struct OpenedPort {
    pub(crate) port: u16,
    pub(crate) proxy_protocol: bool,
    pub(crate) address: String,
}

/// The relay's TCP ports and who holds them.
pub(crate) struct TcpPorts {
    range: TcpPortRange,
    table: Arc<Mutex<Table>>,
    /// What carries the ports' connections.
    carrier: Carrier,
    /// Who ports are held for.
    auth: Arc<dyn Authorize>,
    limits: PortLimits,
}

/// How many ports a token may hold, and how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortLimits {
    /// How long a port stays held for its token once its remote went away.
    pub(crate) hold: Duration,
    /// The most ports one token may hold.
    pub(crate) per_token: usize,
}

/// What a TCP port's connections need: the sessions to dial, and when to stop.
#[derive(Clone)]
pub(crate) struct Carrier {
    /// Where connections are dialed.
    pub(crate) sessions: Arc<dyn Sessions>,
    /// The HTTP/2 settings of the connections dialed from inside the relay.
    pub(crate) transport: TransportSettings,
    /// The relay's shutdown: ports stop accepting when it begins, connections end at the cut.
    pub(crate) shutdown: Shutdown,
    /// The public connections of each client address, shared with the HTTP listeners.
    pub(crate) public_connections: Arc<PerAddress>,
    /// How long a connection may carry nothing before it is closed.
    pub(crate) idle_timeout: Duration,
}

#[derive(Default)]
struct Table {
    open: HashMap<u16, Holder>,
    /// Who held each port last, so that it can have it back.
    last_holder: HashMap<u16, RemoteName>,
}

/// Who holds an open port, and how its connections are carried.
#[derive(Clone)]
struct Holder {
    name: RemoteName,
    session: SessionId,
    /// The token of the session, for whom the port stays held when it goes.
    owner: Option<String>,
    remote_port: u16,
    proxy_protocol: bool,
    /// Cancelled to close the listener.
    stop: CancellationToken,
}

impl TcpPorts {
    pub(crate) fn new(
        range: TcpPortRange,
        carrier: Carrier,
        auth: Arc<dyn Authorize>,
        limits: PortLimits,
    ) -> Self {
        TcpPorts {
            range,
            table: Arc::default(),
            carrier,
            auth,
            limits,
        }
    }

    fn address(&self, port: u16) -> String {
        let host = &self.range.public_host;
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    fn describe_range(&self) -> String {
        format!("{}-{}", self.range.ports.start(), self.range.ports.end())
    }

    /// Opens a port for `remote_port` of `name` (held by `session` of `caller`), as `request`
    /// asks.
    pub(crate) fn open(
        &self,
        caller: &Caller,
        name: &RemoteName,
        session: &SessionId,
        remote_port: u16,
        request: &TcpEndpoint,
    ) -> Result<OpenedPort, Status> {
        let wanted = match request.public_port {
            0 => None,
            port => match u16::try_from(port) {
                Ok(port) if self.range.ports.contains(&port) => Some(port),
                _ => {
                    return Err(Status::out_of_range(format!(
                        "port {port} is outside this relay's TCP ports, {}",
                        self.describe_range()
                    )));
                }
            },
        };
        let holder = Holder {
            name: name.clone(),
            session: session.clone(),
            owner: caller.token().map(str::to_owned),
            remote_port,
            proxy_protocol: request.proxy_protocol,
            stop: CancellationToken::new(),
        };
        let mut table = lock(&self.table);
        // The port this remote port already has (exposed again), or had in the session this
        // one replaces: keep it, with the new settings.
        let kept = table.open.iter().find_map(|(&port, held)| {
            let ours = held.session == *session || held.name == *name;
            (ours && held.remote_port == remote_port && wanted.is_none_or(|w| w == port))
                .then_some(port)
        });
        if let Some(port) = kept {
            let held = table.open.get_mut(&port).expect("found above");
            held.session = session.clone();
            held.proxy_protocol = request.proxy_protocol;
            return Ok(self.opened(port, request.proxy_protocol));
        }
        let claim = |port, explicit| PortClaim {
            port,
            name,
            remote_port,
            explicit,
            hold: self.limits.hold,
            max_per_token: self.limits.per_token,
        };
        let (port, listener) = match wanted {
            Some(port) => {
                if table.open.contains_key(&port) {
                    return Err(Status::already_exists(format!(
                        "TCP port {port} is taken by another remote"
                    )));
                }
                // Whom the port is held for first: that answer does not depend on whether
                // the listener of a remote that just went has closed yet.
                let claim = claim(port, true);
                self.auth.check_port(caller, &claim)?;
                let listener = self.bind(port).map_err(|error| {
                    Status::already_exists(format!(
                        "TCP port {port} cannot be opened on the relay: {}",
                        io_reason(&error)
                    ))
                })?;
                self.auth.claim_port(caller, &claim)?;
                (port, listener)
            }
            None => self.bind_any(&table, caller, name, remote_port, claim)?,
        };
        // This remote port may have had another relay port: it gives it up.
        let auth = &self.auth;
        table.open.retain(|&old, held| {
            let replaced = held.session == *session && held.remote_port == remote_port;
            if replaced {
                held.stop.cancel();
                if let Some(owner) = &held.owner {
                    auth.release_port(owner, old);
                }
            }
            !replaced
        });
        table.last_holder.insert(port, name.clone());
        table.open.insert(port, holder.clone());
        drop(table);
        let span = info_span!("tcp", port, remote = %name);
        let table = self.table.clone();
        let accepting = accept(self.carrier.clone(), table, port, listener, holder.stop);
        tokio::spawn(accepting.instrument(span));
        info!(port, remote = %name, remote_port, "TCP port opened");
        Ok(self.opened(port, request.proxy_protocol))
    }

    fn opened(&self, port: u16, proxy_protocol: bool) -> OpenedPort {
        OpenedPort {
            port,
            proxy_protocol,
            address: self.address(port),
        }
    }

    fn bind(&self, port: u16) -> io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(SocketAddr::new(self.range.bind, port))?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }

    /// A free port for `remote_port` of `name`, held for `caller`'s token with `claim`: the
    /// one held for it, else the one it had last, else one nobody had, else any that is not
    /// held for another.
    fn bind_any<'a>(
        &self,
        table: &Table,
        caller: &Caller,
        name: &'a RemoteName,
        remote_port: u16,
        claim: impl Fn(u16, bool) -> PortClaim<'a>,
    ) -> Result<(u16, TcpListener), Status> {
        let free = |port: &u16| !table.open.contains_key(port);
        let held = self.auth.held_port(caller, name, remote_port);
        let previous = held.into_iter().chain(
            table
                .last_holder
                .iter()
                .filter(|(_, holder)| *holder == name)
                .map(|(&port, _)| port),
        );
        let fresh = self
            .range
            .ports
            .clone()
            .filter(|port| !table.last_holder.contains_key(port));
        let reused = self
            .range
            .ports
            .clone()
            .filter(|port| table.last_holder.contains_key(port));
        // A port held for another remote is skipped; a token that holds as many ports as it
        // may gets none. Checked before bound, so that a held port costs no system call.
        let skip = |status: Status| match status.code() {
            tonic::Code::ResourceExhausted => Err(status),
            _ => Ok(()),
        };
        for port in previous.chain(fresh).chain(reused).filter(free) {
            let claim = claim(port, false);
            if let Err(status) = self.auth.check_port(caller, &claim) {
                skip(status)?;
                continue;
            }
            // Another process of the machine may listen there.
            let Ok(listener) = self.bind(port) else {
                continue;
            };
            match self.auth.claim_port(caller, &claim) {
                Ok(()) => return Ok((port, listener)),
                Err(status) => skip(status)?,
            }
        }
        Err(Status::resource_exhausted(format!(
            "every TCP port of this relay's range {} is taken or held for other remotes",
            self.describe_range()
        )))
    }

    /// Closes the port that `port` of `session` has, if any.
    pub(crate) fn close_port(&self, session: &SessionId, port: u16) {
        self.close(|held| held.session == *session && held.remote_port == port);
    }

    /// Closes every port `session` holds.
    pub(crate) fn close_session(&self, session: &SessionId) {
        self.close(|held| held.session == *session);
    }

    fn close(&self, matches: impl Fn(&Holder) -> bool) {
        lock(&self.table).open.retain(|&port, held| {
            if matches(held) {
                debug!(port, remote = %held.name, "TCP port closed");
                held.stop.cancel();
                if let Some(owner) = &held.owner {
                    self.auth.release_port(owner, port);
                }
                return false;
            }
            true
        });
    }
}

/// Who holds `port` now: the remote, its port, and whether to send a PROXY header.
fn holder(table: &Mutex<Table>, port: u16) -> Option<(RemoteName, u16, bool)> {
    let table = lock(table);
    let held = table.open.get(&port)?;
    Some((held.name.clone(), held.remote_port, held.proxy_protocol))
}

/// Accepts connections on a public TCP port until it is closed or the relay shuts down.
async fn accept(
    carrier: Carrier,
    table: Arc<Mutex<Table>>,
    port: u16,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = carrier.shutdown.begun.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let Some((name, remote_port, proxy_protocol)) = holder(&table, port) else {
                    continue;
                };
                let Some(slot) = carrier.public_connections.take(peer.ip()) else {
                    debug!(%peer, "the address has as many connections as it may: closed");
                    refuse(&client);
                    continue;
                };
                let target = Target {
                    name,
                    remote_port,
                    proxy_protocol,
                };
                let carrying = carry(carrier.clone(), target, client, peer);
                tokio::spawn(
                    async move {
                        carrying.await;
                        drop(slot);
                    }
                    .in_current_span(),
                );
            }
            // Out of file descriptors and the like: the next accept may succeed.
            Err(error) => warn!(error = %io_reason(&error), "accepting a connection failed"),
        }
    }
}

/// Where a public TCP port's connections go.
struct Target {
    name: RemoteName,
    remote_port: u16,
    proxy_protocol: bool,
}

/// Carries one client connection of a public TCP port to the remote that holds it.
async fn carry(carrier: Carrier, target: Target, client: TcpStream, peer: SocketAddr) {
    let local = client.local_addr().ok();
    let (sessions, transport) = (&*carrier.sessions, &carrier.transport);
    let (name, port) = (&target.name, target.remote_port);
    let dialing = dial_local(
        sessions,
        transport,
        (name, port),
        peer.to_string(),
        Entrance::Tcp,
    );
    let conn = match dialing.await {
        Ok(conn) => conn,
        Err(status) => {
            debug!(%peer, error = status.message(), "a public connection could not be carried");
            refuse(&client);
            return;
        }
    };
    let cut = &carrier.shutdown.cut;
    let idle = carrier.idle_timeout;
    join(cut, client, peer, local, conn, target.proxy_protocol, idle).await;
}

/// Makes `client`'s close a reset, which tells it at once that nothing is there.
fn refuse(client: &TcpStream) {
    // A zero linger never blocks on close: the kernel discards unsent data and sends RST.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
}

/// Carries `client` (from `peer`, on `local`) over `conn`, after a PROXY header if asked,
/// until both ends close, the relay's cut, or `idle` passes with nothing carried.
async fn join(
    cut: &CancellationToken,
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    mut conn: Connection,
    proxy_protocol: bool,
    idle: Duration,
) {
    if proxy_protocol
        && let Some(local) = local
        && conn.write_all(&v2_header(peer, local)).await.is_err()
    {
        return;
    }
    let client_name = format!("client {peer}");
    tokio::select! {
        result = join_tcp_until_idle(client, conn, &client_name, idle) => {
            if let Err(error) = result {
                debug!(%peer, error = %io_reason(&error), "a public connection failed");
            }
        }
        () = cut.cancelled() => {}
    }
}
