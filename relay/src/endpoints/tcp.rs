//! Public TCP ports: a port of the relay's range, listened on by the relay, whose every
//! connection is dialed to one port of a remote.
//!
//! A remote that comes back (a reconnect, a relay restart is not covered) gets the port it had
//! last while it is free: the table remembers the last holder of each port, and hands other
//! remotes ports nobody held before ones that someone did.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use sesame_proto::v1::TcpEndpoint;
use sesame_tunnel::{Connection, RemoteName, SessionId, io_reason, join_tcp};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::dial::dial_local;
use crate::proxy_protocol::v2_header;
use crate::state::State;

/// The TCP ports a relay may publish remotes' ports on.
#[derive(Clone, Debug)]
pub struct TcpPortRange {
    /// The address to listen on.
    pub bind: IpAddr,
    /// The ports, for example `20000..=20999`.
    pub ports: RangeInclusive<u16>,
    /// The host clients connect to, as published in addresses (`host:port`).
    pub public_host: String,
}

/// A port opened for a remote.
pub(crate) struct OpenedPort {
    pub(crate) port: u16,
    pub(crate) proxy_protocol: bool,
    pub(crate) address: String,
}

/// The relay's TCP ports and who holds them.
pub(crate) struct TcpPorts {
    range: TcpPortRange,
    table: Mutex<Table>,
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
    remote_port: u16,
    proxy_protocol: bool,
    /// Cancelled to close the listener.
    stop: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TcpPorts {
    pub(crate) fn new(range: TcpPortRange) -> Self {
        TcpPorts {
            range,
            table: Mutex::default(),
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

    /// Opens a port for `remote_port` of `name` (held by `session`), as `request` asks.
    pub(crate) fn open(
        &self,
        state: &Arc<State>,
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
        let (port, listener) = match wanted {
            Some(port) => {
                if table.open.contains_key(&port) {
                    return Err(Status::already_exists(format!(
                        "TCP port {port} is taken by another remote"
                    )));
                }
                let listener = self.bind(port).map_err(|error| {
                    Status::already_exists(format!(
                        "TCP port {port} cannot be opened on the relay: {}",
                        io_reason(&error)
                    ))
                })?;
                (port, listener)
            }
            None => self.bind_any(&table, name).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "every TCP port of this relay's range {} is taken",
                    self.describe_range()
                ))
            })?,
        };
        // This remote port may have had another relay port: it gives it up.
        table.open.retain(|_, held| {
            let replaced = held.session == *session && held.remote_port == remote_port;
            if replaced {
                held.stop.cancel();
            }
            !replaced
        });
        table.last_holder.insert(port, name.clone());
        table.open.insert(port, holder.clone());
        drop(table);
        let span = info_span!("tcp", port, remote = %name);
        let accepting = accept(state.clone(), port, listener, holder.stop);
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

    /// A free port for `name`: the one it held last, else one nobody held, else any.
    fn bind_any(&self, table: &Table, name: &RemoteName) -> Option<(u16, TcpListener)> {
        let free = |port: &u16| !table.open.contains_key(port);
        let previous = table
            .last_holder
            .iter()
            .filter(|(port, holder)| *holder == name && free(port))
            .map(|(&port, _)| port);
        let fresh = self
            .range
            .ports
            .clone()
            .filter(|port| free(port) && !table.last_holder.contains_key(port));
        let reused = self
            .range
            .ports
            .clone()
            .filter(|port| free(port) && table.last_holder.contains_key(port));
        previous
            .chain(fresh)
            .chain(reused)
            .find_map(|port| Some((port, self.bind(port).ok()?)))
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
        lock(&self.table).open.retain(|port, held| {
            if matches(held) {
                debug!(port, remote = %held.name, "TCP port closed");
                held.stop.cancel();
                return false;
            }
            true
        });
    }

    /// Who holds `port` now: the remote, its port, and whether to send a PROXY header.
    fn holder(&self, port: u16) -> Option<(RemoteName, u16, bool)> {
        let table = lock(&self.table);
        let held = table.open.get(&port)?;
        Some((held.name.clone(), held.remote_port, held.proxy_protocol))
    }
}

/// Accepts connections on a public TCP port until it is closed or the relay shuts down.
async fn accept(state: Arc<State>, port: u16, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = state.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                tokio::spawn(carry(state.clone(), port, client, peer).in_current_span());
            }
            // Out of file descriptors and the like: the next accept may succeed.
            Err(error) => warn!(error = %io_reason(&error), "accepting a connection failed"),
        }
    }
}

/// Carries one client connection of a public TCP port to the remote that holds it.
async fn carry(state: Arc<State>, port: u16, client: TcpStream, peer: SocketAddr) {
    let Some(tcp) = &state.endpoints.tcp else {
        return;
    };
    let Some((name, remote_port, proxy_protocol)) = tcp.holder(port) else {
        return;
    };
    let local = client.local_addr().ok();
    let conn = match dial_local(&state, &name, remote_port, peer.to_string()).await {
        Ok(conn) => conn,
        Err(status) => {
            debug!(%peer, error = status.message(), "a public connection could not be carried");
            // Closing with RST tells the client at once that nothing is there.
            #[allow(deprecated)]
            let _ = client.set_linger(Some(std::time::Duration::ZERO));
            return;
        }
    };
    join(state, client, peer, local, conn, proxy_protocol).await;
}

/// Carries `client` (from `peer`, on `local`) over `conn`, after a PROXY header if asked.
async fn join(
    state: Arc<State>,
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    mut conn: Connection,
    proxy_protocol: bool,
) {
    if proxy_protocol
        && let Some(local) = local
        && conn.write_all(&v2_header(peer, local)).await.is_err()
    {
        return;
    }
    let client_name = format!("client {peer}");
    tokio::select! {
        result = join_tcp(client, conn, &client_name) => {
            if let Err(error) = result {
                debug!(%peer, error = %io_reason(&error), "a public connection failed");
            }
        }
        () = state.cut.cancelled() => {}
    }
}
