//! What the relay's services share: its settings, the registry, the sessions connected to
//! this relay, and the dials waiting for an agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sesame_proto::v1::OpenSessionResponse;
use sesame_tunnel::splice::{FromDialer, ToDialer};
use sesame_tunnel::{RemoteName, SessionId, Ticket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Request, Status};

use crate::auth::throttle::FailedAuthLimiter;
use crate::auth::{Authorize, Caller};
use crate::config::RelayConfig;
use crate::endpoints::Endpoints;
use crate::registry::Registry;
use crate::tokens::TokenStore;

/// The relay's shared state.
pub(crate) struct State {
    pub(crate) config: RelayConfig,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) auth: Arc<dyn Authorize>,
    /// The token store, when the relay checks tokens: `TokenService` manages it.
    pub(crate) tokens: Option<Arc<TokenStore>>,
    /// Failed authentications per source address.
    failures: FailedAuthLimiter,
    /// The names each token holds now, and through which session.
    holdings: Mutex<HashMap<String, HashMap<RemoteName, SessionId>>>,
    /// The public endpoints: virtual hosts and TCP ports.
    pub(crate) endpoints: Endpoints,
    /// Cancelled when the relay begins to shut down: sessions drain and end.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period ends: open connections are cut.
    pub(crate) cut: CancellationToken,
    sessions: Mutex<HashMap<SessionId, SessionLink>>,
    dials: Mutex<HashMap<Ticket, PendingDial>>,
}

/// How to reach an agent session on this relay.
#[derive(Clone)]
pub(crate) struct SessionLink {
    /// The session's control stream towards the agent.
    pub(crate) control: mpsc::Sender<Result<OpenSessionResponse, Status>>,
    /// The largest data payload the agent accepts.
    pub(crate) chunk_limit: usize,
    /// Cancelled when a new session of the same agent takes the name over.
    pub(crate) replaced: CancellationToken,
    /// The token the session registered with.
    pub(crate) owner: Option<String>,
    /// The connections the session carries now.
    pub(crate) connections: Arc<AtomicUsize>,
}

/// One of a session's connection slots, given back when dropped.
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionLink {
    /// Takes a connection slot, if the session has one free of `limit`.
    pub(crate) fn take_slot(&self, limit: usize) -> Option<ConnectionSlot> {
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        taken.ok().map(|_| ConnectionSlot(self.connections.clone()))
    }
}

/// A name a token holds through a session, given back when dropped.
pub(crate) struct Holding {
    state: Arc<State>,
    token: String,
    name: RemoteName,
    session: SessionId,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut holdings = lock(&self.state.holdings);
        if let Some(names) = holdings.get_mut(&self.token) {
            if names.get(&self.name) == Some(&self.session) {
                names.remove(&self.name);
            }
            if names.is_empty() {
                holdings.remove(&self.token);
            }
        }
    }
}

/// A dial waiting for its agent to accept or refuse it.
pub(crate) struct PendingDial {
    pub(crate) session: SessionId,
    /// The connection's slot among the session's.
    pub(crate) slot: ConnectionSlot,
    /// Cancelled when the dialer's token is revoked or expires.
    pub(crate) dialer_ended: Option<CancellationToken>,
    /// The dialer's request stream, after its target.
    pub(crate) from_dialer: FromDialer,
    /// Where the dial's outcome goes: what the remote sends, once it accepted.
    pub(crate) reply: oneshot::Sender<Result<ToDialer, Status>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    pub(crate) fn new(
        config: RelayConfig,
        registry: Arc<dyn Registry>,
        auth: Arc<dyn Authorize>,
        tokens: Option<Arc<TokenStore>>,
        endpoints: Endpoints,
    ) -> Self {
        State {
            failures: FailedAuthLimiter::new(config.failed_auth),
            config,
            registry,
            auth,
            tokens,
            holdings: Mutex::default(),
            endpoints,
            shutdown: CancellationToken::new(),
            cut: CancellationToken::new(),
            sessions: Mutex::default(),
            dials: Mutex::default(),
        }
    }

    /// Who made a call. An address that failed too often is refused before its token is
    /// looked at; each `UNAUTHENTICATED` counts against its address.
    pub(crate) fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let address = request.remote_addr().map(|addr| addr.ip());
        if let Some(address) = address {
            self.failures.check(address)?;
        }
        let result = self.auth.authenticate(request.metadata());
        if let (Err(status), Some(address)) = (&result, address)
            && status.code() == tonic::Code::Unauthenticated
        {
            self.failures.failed(address);
            tracing::info!(%address, reason = status.message(), "refused a call");
        }
        result
    }

    /// Records that `caller`'s token holds `name` through `session`, within the limit of
    /// remotes per token; a name the token already holds (a reconnect) does not count twice.
    pub(crate) fn hold(
        self: &Arc<Self>,
        caller: &Caller,
        name: &RemoteName,
        session: &SessionId,
    ) -> Result<Option<Holding>, Status> {
        let Some(token) = caller.token() else {
            return Ok(None);
        };
        let limit = self.config.max_remotes_per_token;
        let mut holdings = lock(&self.holdings);
        let names = holdings.entry(token.to_owned()).or_default();
        if !names.contains_key(name) && names.len() >= limit {
            return Err(Status::resource_exhausted(format!(
                "this token already holds {} remotes, the relay's limit per token",
                names.len()
            )));
        }
        names.insert(name.clone(), session.clone());
        Ok(Some(Holding {
            state: self.clone(),
            token: token.to_owned(),
            name: name.clone(),
            session: session.clone(),
        }))
    }

    /// How many remotes a token holds now.
    pub(crate) fn remotes_held(&self, token: &str) -> usize {
        lock(&self.holdings).get(token).map_or(0, HashMap::len)
    }

    /// What cuts one connection: the relay's cut, or, when either side's token can end, a
    /// child of it that the end of either token also cancels. The guard cancels it when the
    /// connection is gone, so that its watcher ends too.
    pub(crate) fn connection_cut(
        &self,
        agent_ended: Option<&CancellationToken>,
        dialer_ended: Option<&CancellationToken>,
    ) -> (CancellationToken, Option<DropGuard>) {
        if agent_ended.is_none() && dialer_ended.is_none() {
            return (self.cut.clone(), None);
        }
        let cut = self.cut.child_token();
        let (agent, dialer, watched) = (
            agent_ended.cloned().unwrap_or_default(),
            dialer_ended.cloned().unwrap_or_default(),
            cut.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = agent.cancelled() => watched.cancel(),
                () = dialer.cancelled() => watched.cancel(),
                () = watched.cancelled() => {}
            }
        });
        (cut.clone(), Some(cut.drop_guard()))
    }

    pub(crate) fn add_session(&self, id: SessionId, link: SessionLink) {
        lock(&self.sessions).insert(id, link);
    }

    pub(crate) fn session(&self, id: &SessionId) -> Option<SessionLink> {
        lock(&self.sessions).get(id).cloned()
    }

    /// Ends a session whose agent has opened a new one.
    pub(crate) fn replace_session(&self, id: &SessionId) {
        if let Some(link) = lock(&self.sessions).get(id) {
            link.replaced.cancel();
        }
    }

    /// Forgets a session, and fails the dials still waiting for it.
    pub(crate) fn remove_session(&self, id: &SessionId) {
        // First the session, then its dials: `park_dial` checks the session while holding the
        // dials, so no dial can be parked for a session after this.
        lock(&self.sessions).remove(id);
        // Dropping a pending dial drops its reply: the dialer hears the remote went away.
        lock(&self.dials).retain(|_, dial| &dial.session != id);
    }

    /// Parks a dial until its agent answers; the guard takes it back out if nobody does.
    /// `None` if the dial's session has already ended.
    pub(crate) fn park_dial(
        self: &Arc<Self>,
        ticket: Ticket,
        dial: PendingDial,
    ) -> Option<DialGuard> {
        let mut dials = lock(&self.dials);
        if !lock(&self.sessions).contains_key(&dial.session) {
            return None;
        }
        dials.insert(ticket.clone(), dial);
        Some(DialGuard {
            state: self.clone(),
            ticket,
        })
    }

    /// Takes the dial a ticket stands for, if `session` is the one it was offered to. A
    /// ticket presented by another session stays valid for its own.
    pub(crate) fn take_dial(&self, ticket: &Ticket, session: &SessionId) -> Option<PendingDial> {
        let mut dials = lock(&self.dials);
        if dials.get(ticket)?.session != *session {
            return None;
        }
        dials.remove(ticket)
    }
}

/// Removes a parked dial when the dial's handler ends, whatever happened to it.
pub(crate) struct DialGuard {
    state: Arc<State>,
    ticket: Ticket,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        lock(&self.state.dials).remove(&self.ticket);
    }
}
