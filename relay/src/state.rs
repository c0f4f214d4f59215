//! What the relay's services share: its settings, the registry, the sessions connected to
//! this relay, and the dials waiting for an agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sesame_proto::v1::OpenSessionResponse;
use sesame_tunnel::splice::{FromDialer, ToDialer};
use sesame_tunnel::{SessionId, Ticket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::auth::Authorize;
use crate::config::RelayConfig;
use crate::endpoints::Endpoints;
use crate::registry::Registry;

/// The relay's shared state.
pub(crate) struct State {
    pub(crate) config: RelayConfig,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) auth: Arc<dyn Authorize>,
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
}

/// A dial waiting for its agent to accept or refuse it.
pub(crate) struct PendingDial {
    pub(crate) session: SessionId,
    /// The dialer's request stream, after its target.
    pub(crate) from_dialer: FromDialer,
    /// Where the dial's outcome goes.
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
        endpoints: Endpoints,
    ) -> Self {
        State {
            config,
            registry,
            auth,
            endpoints,
            shutdown: CancellationToken::new(),
            cut: CancellationToken::new(),
            sessions: Mutex::default(),
            dials: Mutex::default(),
        }
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
