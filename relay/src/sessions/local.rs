//! [`LocalSessions`]: the sessions of the agents connected to this relay, the dials parked for
//! them, and the names each token holds through them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sesame_proto::v1::{DialNotice, OpenSessionResponse, open_session_response};
use sesame_tunnel::splice::ToDialer;
use sesame_tunnel::{Error, RemoteName, SessionId, Ticket, format_duration};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;
use tracing::debug;

use super::{Dial, Entrance, Origin, PendingDial, SessionLink, Sessions};
use crate::auth::Caller;
use crate::config::RelayConfig;
use crate::lock;
use crate::metrics::{Metrics, SessionCount};
use crate::registry::Registry;

/// The limits that [`LocalSessions`] keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a dial waits for the agent to accept or refuse it.
    pub(crate) dial_timeout: Duration,
    /// The most remotes one token may hold at once.
    pub(crate) remotes_per_token: usize,
    /// The most connections one remote may carry at once for token holders.
    pub(crate) connections_per_remote: usize,
    /// The most connections one remote may carry at once for public clients.
    pub(crate) public_connections_per_remote: usize,
}

impl From<&RelayConfig> for Limits {
    fn from(config: &RelayConfig) -> Self {
        Limits {
            dial_timeout: config.dial_timeout,
            remotes_per_token: config.max_remotes_per_token,
            connections_per_remote: config.max_connections_per_remote,
            public_connections_per_remote: config.public.connections_per_remote,
        }
    }
}

/// The sessions of the agents connected to this relay.
pub(crate) struct LocalSessions {
    registry: Arc<dyn Registry>,
    limits: Limits,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

/// What the sessions' guards give back when dropped.
#[derive(Default)]
struct Table {
    sessions: Mutex<HashMap<SessionId, SessionLink>>,
    dials: Mutex<HashMap<Ticket, PendingDial>>,
    /// The names each token holds now, and through which sessions: a reconnecting agent's new
    /// session holds its name beside the old one until that one ends.
    holdings: Mutex<HashMap<String, HashMap<RemoteName, HashSet<SessionId>>>>,
}

/// A session attached to the relay's sessions: [`detach`](Self::detach)ed when dropped, if
/// not before, and then gives back the name its token held through it.
pub(crate) struct Attached {
    table: Arc<Table>,
    id: SessionId,
    /// Counts the session among the relay's until dropped.
    _counted: SessionCount,
    /// The token and the name it holds through this session.
    held: Option<(String, RemoteName)>,
}

impl Attached {
    /// Takes the session out of reach: no dial reaches it from now on, and the dials still
    /// waiting for it fail. Its token keeps the name until this is dropped.
    pub(crate) fn detach(&self) {
        // First the session, then its dials: parking a dial checks the session while holding
        // the dials, so no dial can be parked for this session after this.
        lock(&self.table.sessions).remove(&self.id);
        // Dropping a pending dial drops its reply: the dialer hears the remote went away.
        lock(&self.table.dials).retain(|_, dial| dial.session != self.id);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.detach();
        let Some((token, name)) = &self.held else {
            return;
        };
        let mut holdings = lock(&self.table.holdings);
        if let Some(names) = holdings.get_mut(token) {
            if let Some(sessions) = names.get_mut(name) {
                sessions.remove(&self.id);
                if sessions.is_empty() {
                    names.remove(name);
                }
            }
            if names.is_empty() {
                holdings.remove(token);
            }
        }
    }
}

/// Takes a parked dial back out when its dial ends, whatever happened to it.
struct Parked {
    table: Arc<Table>,
    ticket: Ticket,
}

impl Drop for Parked {
    fn drop(&mut self) {
        lock(&self.table.dials).remove(&self.ticket);
    }
}

impl LocalSessions {
    /// No sessions yet; dials look remotes up in `registry`, and are counted in `metrics`.
    pub(crate) fn new(registry: Arc<dyn Registry>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        LocalSessions {
            registry,
            limits,
            table: Arc::default(),
            metrics,
        }
    }

    /// Parks a dial until its agent answers; the guard takes it back out if nobody does.
    /// `None` if the dial's session has already ended.
    fn park(&self, ticket: Ticket, dial: PendingDial) -> Option<Parked> {
        let mut dials = lock(&self.table.dials);
        if !lock(&self.table.sessions).contains_key(&dial.session) {
            return None;
        }
        dials.insert(ticket.clone(), dial);
        Some(Parked {
            table: self.table.clone(),
            ticket,
        })
    }

    async fn dial_here(&self, dial: Dial) -> Result<ToDialer, Status> {
        let Dial {
            name,
            port,
            peer,
            from_dialer,
            dialer_ended,
            entrance,
        } = dial;
        let started = Instant::now();
        let not_found = || Error::RemoteNotFound {
            name: name.to_string(),
        };
        let record = self.registry.get(&name).await?.ok_or_else(not_found)?;
        if !record.ports.contains_key(&port) {
            let name = name.to_string();
            return Err(Error::PortNotExposed { name, port }.into());
        }
        // The registry may know a session this relay does not hold (another relay's, or one
        // that just ended): either way it cannot be dialed from here.
        let link = self.get(&record.session).ok_or_else(not_found)?;
        let quoted = format!("{:?}", name.to_string());
        let (limit, whose) = match entrance {
            Entrance::Dial => (self.limits.connections_per_remote, ""),
            Entrance::Http | Entrance::Tcp => {
                (self.limits.public_connections_per_remote, "public ")
            }
        };
        let slot = link.take_slot(entrance, limit).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "remote {quoted} already carries {limit} {whose}connections, the relay's limit \
                 per remote"
            ))
        })?;

        let ticket = Ticket::generate();
        let (reply, answer) = oneshot::channel();
        let pending = PendingDial {
            session: record.session.clone(),
            origin: Origin {
                entrance,
                name: name.clone(),
                started,
            },
            slot,
            dialer_ended,
            from_dialer,
            reply,
        };
        let gone = || Status::unavailable(format!("remote {quoted} went away"));
        let _parked = self.park(ticket.clone(), pending).ok_or_else(gone)?;
        let notice = DialNotice {
            ticket: ticket.as_bytes().to_vec().into(),
            port: u32::from(port),
            dialer: peer.clone(),
        };
        let notice = OpenSessionResponse {
            message: Some(open_session_response::Message::DialNotice(notice)),
        };
        // A busy agent's notices queue up; the dial waits for room, within its timeout, so a
        // burst of dials slows down rather than fails.
        let timeout = self.limits.dial_timeout;
        let deadline = Instant::now() + timeout;
        let late = || {
            Status::deadline_exceeded(format!(
                "remote {quoted} did not answer within {}",
                format_duration(timeout)
            ))
        };
        match tokio::time::timeout_at(deadline, link.control.send(Ok(notice))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(gone()),
            Err(_) => return Err(late()),
        }
        debug!(remote = %name, port, %peer, "dial sent to the agent");

        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "remote {quoted} went away before answering"
            ))),
            Err(_) => Err(late()),
        }
    }
}

impl Sessions for LocalSessions {
    fn attach(
        &self,
        caller: &Caller,
        name: &RemoteName,
        id: SessionId,
        link: SessionLink,
    ) -> Result<Attached, Status> {
        let held = match caller.token() {
            None => None,
            Some(token) => {
                let limit = self.limits.remotes_per_token;
                let mut holdings = lock(&self.table.holdings);
                let names = holdings.entry(token.to_owned()).or_default();
                if !names.contains_key(name) && names.len() >= limit {
                    return Err(Status::resource_exhausted(format!(
                        "this token already holds {} remotes, the relay's limit per token",
                        names.len()
                    )));
                }
                names.entry(name.clone()).or_default().insert(id.clone());
                Some((token.to_owned(), name.clone()))
            }
        };
        lock(&self.table.sessions).insert(id.clone(), link);
        Ok(Attached {
            table: self.table.clone(),
            id,
            _counted: self.metrics.session(),
            held,
        })
    }

    fn replace(&self, id: &SessionId) {
        if let Some(link) = lock(&self.table.sessions).get(id) {
            link.replaced.cancel();
        }
    }

    fn get(&self, id: &SessionId) -> Option<SessionLink> {
        lock(&self.table.sessions).get(id).cloned()
    }

    fn take_dial(&self, ticket: &Ticket, session: &SessionId) -> Option<PendingDial> {
        let mut dials = lock(&self.table.dials);
        if dials.get(ticket)?.session != *session {
            return None;
        }
        dials.remove(ticket)
    }

    fn dial(&self, dial: Dial) -> BoxFuture<'_, Result<ToDialer, Status>> {
        async move {
            let dialed = self.dial_here(dial).await;
            if let Err(status) = &dialed {
                self.metrics.dial_failed(status.code());
            }
            dialed
        }
        .boxed()
    }

    fn remotes_held(&self, token: &str) -> usize {
        lock(&self.table.holdings)
            .get(token)
            .map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use futures_util::stream;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::MemoryRegistry;
    use crate::registry::{PublicEndpoints, RemoteRecord};

    const LIMITS: Limits = Limits {
        dial_timeout: Duration::from_secs(10),
        remotes_per_token: 2,
        connections_per_remote: 1,
        public_connections_per_remote: 1,
    };

    fn link() -> (
        SessionLink,
        mpsc::Receiver<Result<OpenSessionResponse, Status>>,
    ) {
        let (control, notices) = mpsc::channel(8);
        let link = SessionLink {
            control,
            chunk_limit: 1 << 16,
            replaced: CancellationToken::new(),
            owner: None,
            connections: Arc::default(),
            public_connections: Arc::default(),
        };
        (link, notices)
    }

    async fn registered(registry: &MemoryRegistry, name: &RemoteName, session: &SessionId) {
        let record = RemoteRecord {
            name: name.clone(),
            session: session.clone(),
            ports: BTreeMap::from([(22, PublicEndpoints::default())]),
            connect_time: SystemTime::now(),
            agent_version: "test".to_owned(),
            agent_key: None,
            owner: None,
        };
        registry.claim(record).await.unwrap();
    }

    fn dial(name: &RemoteName, port: u16) -> Dial {
        Dial {
            name: name.clone(),
            port,
            peer: "127.0.0.1:1".to_owned(),
            from_dialer: Box::pin(stream::empty()),
            dialer_ended: None,
            entrance: Entrance::Dial,
        }
    }

    fn caller(token: &str) -> Caller {
        Caller::new(token.to_owned(), Arc::from([]), CancellationToken::new())
    }

    #[test]
    fn a_token_holds_a_limited_number_of_remotes_and_gives_them_back() {
        let sessions =
            LocalSessions::new(Arc::new(MemoryRegistry::default()), LIMITS, Arc::default());
        let names: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|name| RemoteName::new(*name).unwrap())
            .collect();
        let ada = caller("ada");
        let a = sessions.attach(&ada, &names[0], SessionId::generate(), link().0);
        let b = sessions.attach(&ada, &names[1], SessionId::generate(), link().0);
        assert_eq!(sessions.remotes_held("ada"), 2);
        let refused = sessions.attach(&ada, &names[2], SessionId::generate(), link().0);
        assert_eq!(
            refused.err().map(|status| status.code()),
            Some(tonic::Code::ResourceExhausted)
        );
        // A reconnect of a name the token holds does not count twice, and when either of the
        // two sessions ends, the other still holds the name.
        let again = sessions.attach(&ada, &names[0], SessionId::generate(), link().0);
        assert!(again.is_ok());
        assert_eq!(sessions.remotes_held("ada"), 2);
        drop(again);
        assert_eq!(sessions.remotes_held("ada"), 2);
        let refused = sessions.attach(&ada, &names[2], SessionId::generate(), link().0);
        assert!(refused.is_err(), "the first session still holds its name");
        drop((a, b));
        assert_eq!(sessions.remotes_held("ada"), 0);
        assert_eq!(sessions.remotes_held("nobody"), 0);
    }

    #[tokio::test]
    async fn a_dial_reaches_its_session_and_ends_when_the_session_does() {
        let registry = Arc::new(MemoryRegistry::default());
        let sessions = LocalSessions::new(registry.clone(), LIMITS, Arc::default());
        let name = RemoteName::new("pi").unwrap();
        let id = SessionId::generate();
        registered(&registry, &name, &id).await;
        let (link, mut notices) = link();
        let attached = sessions
            .attach(&Caller::anyone(), &name, id.clone(), link)
            .unwrap();

        let dialing = tokio::spawn(async move {
            let sessions = sessions;
            let outcome = sessions.dial(dial(&name, 22)).await;
            (sessions, outcome)
        });
        let notice = match notices.recv().await {
            Some(Ok(OpenSessionResponse {
                message: Some(open_session_response::Message::DialNotice(notice)),
            })) => notice,
            _ => panic!("the agent hears of the dial"),
        };
        assert_eq!(notice.port, 22);
        assert!(Ticket::from_bytes(&notice.ticket).is_some());
        attached.detach();
        let (sessions, outcome) = dialing.await.unwrap();
        let status = outcome.err().expect("the session ended: the dial fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(sessions.get(&id).is_none());
        drop(attached);
    }

    #[tokio::test]
    async fn a_ticket_is_taken_only_by_its_own_session() {
        let registry = Arc::new(MemoryRegistry::default());
        let sessions = Arc::new(LocalSessions::new(registry.clone(), LIMITS, Arc::default()));
        let name = RemoteName::new("pi").unwrap();
        let id = SessionId::generate();
        registered(&registry, &name, &id).await;
        let (link, mut notices) = link();
        let _attached = sessions.attach(&Caller::anyone(), &name, id.clone(), link);
        let dialer = sessions.clone();
        let target = name.clone();
        let dialing = tokio::spawn(async move { dialer.dial(dial(&target, 22)).await });
        let Some(Ok(OpenSessionResponse {
            message: Some(open_session_response::Message::DialNotice(notice)),
        })) = notices.recv().await
        else {
            panic!("the agent hears of the dial");
        };
        let ticket = Ticket::from_bytes(&notice.ticket).unwrap();
        assert!(
            sessions
                .take_dial(&ticket, &SessionId::generate())
                .is_none()
        );
        let pending = sessions
            .take_dial(&ticket, &id)
            .expect("its own session takes it");
        assert!(sessions.take_dial(&ticket, &id).is_none(), "once");
        // Dropping the rest of the dial gives its connection slot back.
        let reply = {
            let pending = pending;
            pending.reply
        };
        reply.send(Err(Status::unavailable("refused"))).ok();
        let refused = dialing.await.unwrap().err().unwrap();
        assert_eq!(refused.message(), "refused");

        // The one connection slot came back with the dial: a second dial is let through.
        let dialer = sessions.clone();
        let second = tokio::spawn(async move { dialer.dial(dial(&name, 22)).await });
        assert!(
            notices.recv().await.is_some(),
            "the second dial is announced"
        );
        second.abort();
    }

    #[tokio::test]
    async fn dials_to_unknown_remotes_and_ports_fail_clearly() {
        let registry = Arc::new(MemoryRegistry::default());
        let sessions = LocalSessions::new(registry.clone(), LIMITS, Arc::default());
        let name = RemoteName::new("pi").unwrap();
        let unknown = sessions.dial(dial(&name, 22)).await.err().unwrap();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        // Registered, but with no session on this relay.
        registered(&registry, &name, &SessionId::generate()).await;
        let elsewhere = sessions.dial(dial(&name, 22)).await.err().unwrap();
        assert_eq!(elsewhere.code(), tonic::Code::NotFound);
        let port = sessions.dial(dial(&name, 23)).await.err().unwrap();
        assert!(port.message().contains("23"), "{}", port.message());
    }
}
