//! [`Session`]: an agent's registration with a relay, kept up across reconnects; its control
//! stream and heartbeats; and the routing of dial notices to listeners and forwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, ConnectionTicket, DialFailure, DialNotice,
    OpenSessionResponse, accept_connection_request, open_session_request, open_session_response,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use super::forward::{self, Forward};
use super::link::{Link, Registration};
use super::listener::Listener;
use super::observe::{Event, Observer, Stats};
use super::publish::{Publish, Published};
use super::reconnect::Reconnect;
use super::supervisor::supervise;
use super::target::Target;
use crate::connection::{ConnectionInfo, inbound_from_call, outbound};
use crate::transport::DEFAULT_RELAY;
use crate::wire::{self, ACCEPT_CONNECTION_PATH};
use crate::{
    AgentKey, Connection, Error, RelayAccess, RelayChannel, RelayUrl, RemoteName, SessionId,
    Ticket, TransportSettings, format_duration,
};

/// How many accepted connections may wait for a listener to take them.
const LISTENER_BACKLOG: usize = 128;

/// Configures and opens a [`Session`].
#[derive(Debug)]
#[must_use]
pub struct SessionBuilder {
    name: RemoteName,
    relay: Option<RelayAccess>,
    channel: Option<RelayChannel>,
    agent_version: String,
    settings: TransportSettings,
    reconnect: Option<Reconnect>,
}

impl SessionBuilder {
    /// The relay to register with, how to trust it and the token to present (or just its
    /// address); [`DEFAULT_RELAY`](crate::DEFAULT_RELAY), without a token, unless set.
    pub fn relay(mut self, relay: impl Into<RelayAccess>) -> Self {
        self.relay = Some(relay.into());
        self
    }

    /// An existing channel to the relay, used instead of connecting to an address, for the
    /// first session and for every reconnect.
    pub fn channel(mut self, channel: RelayChannel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// How the agent describes itself to others (`name/version`); this crate's by default.
    pub fn agent_version(mut self, agent_version: impl Into<String>) -> Self {
        self.agent_version = agent_version.into();
        self
    }

    /// The transport tuning, including how soon a dead relay is noticed.
    pub fn transport(mut self, settings: TransportSettings) -> Self {
        self.settings = settings;
        self
    }

    /// How to reconnect after losing the relay; [`Reconnect::default`] unless set.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = Some(reconnect);
        self
    }

    /// Never reconnect: the session ends when its relay is lost.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// Connects, registers the remote, and returns the open session.
    ///
    /// Fails with [`Error::NameInUse`] when another agent holds the name, and with
    /// [`Error::RelayUnreachable`] when the relay cannot be reached: the first connection
    /// fails fast, so that a wrong address shows at once. Once connected, the session
    /// reconnects by itself when it loses the relay, as configured with
    /// [`reconnect`](Self::reconnect).
    pub async fn connect(self) -> Result<Session, Error> {
        let relay = match self.relay {
            Some(relay) => relay,
            None => RelayAccess::from(
                DEFAULT_RELAY
                    .parse::<RelayUrl>()
                    .expect("the default relay address is valid"),
            ),
        };
        let shared = Arc::new(Shared {
            registration: Registration {
                name: self.name,
                relay,
                channel: self.channel,
                agent_key: AgentKey::generate(),
                agent_version: self.agent_version,
                settings: self.settings,
            },
            reconnect: self.reconnect,
            routing: Mutex::default(),
            acks: Mutex::default(),
            observer: Observer::new(),
            closed: watch::channel(None).0,
            shutdown: CancellationToken::new(),
        });
        let (link, responses) = shared.registration.open(&shared.shutdown).await?;
        lock(&shared.routing).link = Some(link.clone());
        let span = info_span!("session", remote = %shared.registration.name);
        tokio::spawn(supervise(shared.clone(), link, responses).instrument(span));
        let shutdown = shared.shutdown.clone().drop_guard();
        Ok(Session {
            handle: Arc::new(Handle {
                shared,
                _shutdown: shutdown,
            }),
        })
    }
}

/// An agent's session with a relay: its remote is registered for as long as the session
/// lives, across reconnects.
///
/// Cheap to clone. The session stays open while any clone, [`Listener`] or [`Forward`] of it
/// exists, until [`close`](Session::close) is called, or until the relay refuses it for good.
/// When the relay is lost, the session reconnects by itself (unless told not to), registers
/// the name again and exposes the same ports; listeners and forwards carry on unchanged.
#[derive(Clone, Debug)]
pub struct Session {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl Session {
    /// Starts configuring a session for the remote `name`.
    pub fn builder(name: RemoteName) -> SessionBuilder {
        SessionBuilder {
            name,
            relay: None,
            channel: None,
            agent_version: concat!("sesame/", env!("CARGO_PKG_VERSION")).to_owned(),
            settings: TransportSettings::default(),
            reconnect: Some(Reconnect::default()),
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The relay's id of the current session; `None` while the agent is reconnecting.
    pub fn id(&self) -> Option<SessionId> {
        lock(&self.shared().routing)
            .link
            .as_ref()
            .map(|link| link.id.clone())
    }

    /// The remote's name.
    pub fn name(&self) -> &RemoteName {
        &self.shared().registration.name
    }

    /// The relay's address.
    pub fn relay(&self) -> &RelayUrl {
        &self.shared().registration.relay.url
    }

    /// Exposes `port` and returns the stream of connections dialed to it.
    ///
    /// Returns once the relay has confirmed the port: from then on dials reach the listener.
    pub async fn listen(&self, port: u16) -> Result<Listener, Error> {
        self.listen_with(port, Publish::none()).await
    }

    /// Exposes `port`, published as `publish` says, and returns the stream of connections
    /// dialed to it or made to its public endpoints.
    ///
    /// Fails with the relay's refusal when it cannot publish the port (a TCP port that is
    /// taken, HTTP on a relay without a domain); the session carries on.
    pub async fn listen_with(&self, port: u16, publish: Publish) -> Result<Listener, Error> {
        let (sender, incoming) = mpsc::channel(LISTENER_BACKLOG);
        self.shared()
            .expose(port, Route::Listener(sender), publish)
            .await?;
        Ok(Listener::new(self.clone(), port, incoming))
    }

    /// Exposes `port` and forwards each connection dialed to it to `target`.
    ///
    /// The agent connects to the target when a dial arrives; if the target refuses, the dial
    /// fails with [`Error::TargetRefused`] and the session carries on.
    pub async fn forward(&self, port: u16, target: Target) -> Result<Forward, Error> {
        self.forward_with(port, target, Publish::none()).await
    }

    /// Exposes `port`, published as `publish` says, and forwards each of its connections to
    /// `target`. Fails like [`listen_with`](Self::listen_with).
    pub async fn forward_with(
        &self,
        port: u16,
        target: Target,
        publish: Publish,
    ) -> Result<Forward, Error> {
        self.shared()
            .expose(port, Route::Forward(target.clone()), publish)
            .await?;
        Ok(Forward::new(self.clone(), port, target))
    }

    /// Where the relay currently publishes `port`; empty for a port published nowhere or not
    /// exposed.
    pub fn published(&self, port: u16) -> Published {
        lock(&self.shared().routing)
            .routes
            .get(&port)
            .map(|exposure| exposure.published.clone())
            .unwrap_or_default()
    }

    /// Totals of the session's connections so far.
    pub fn stats(&self) -> Stats {
        self.shared().observer.stats()
    }

    /// Subscribes to the session's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared().observer.subscribe()
    }

    /// Waits until the session ends for good and says why.
    pub async fn closed(&self) -> Error {
        let mut closed = self.shared().closed.subscribe();
        let reason = closed
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default())
            .unwrap_or_else(|_| "the session task ended".to_owned());
        Error::SessionClosed { reason }
    }

    /// Ends the session: the relay forgets the remote. Open connections keep running.
    pub fn close(&self) {
        self.shared().shutdown.cancel();
    }
}

/// What serves an exposed port.
#[derive(Clone, Debug)]
enum Route {
    Listener(mpsc::Sender<Connection>),
    Forward(Target),
}

/// An exposed port: what serves it, how it is to be published, and where it is.
#[derive(Debug)]
struct Exposure {
    route: Route,
    publish: Publish,
    published: Published,
}

/// The exposed ports, and the link they are currently exposed on. One lock, so that a port
/// exposed while the agent reconnects is either seen by the new link or sent on it.
#[derive(Debug, Default)]
struct Routing {
    link: Option<Arc<Link>>,
    routes: HashMap<u16, Exposure>,
}

/// What the relay answers to an ExposePort.
pub(super) type ExposeOutcome = Result<Published, Error>;

/// The state a session's handles and its tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) registration: Registration,
    /// How to reconnect; `None` to end the session when its link is lost.
    pub(super) reconnect: Option<Reconnect>,
    routing: Mutex<Routing>,
    /// Who waits for the relay to confirm a port.
    acks: Mutex<HashMap<u16, Vec<oneshot::Sender<ExposeOutcome>>>>,
    pub(super) observer: Observer,
    /// Why the session ended, once it has.
    closed: watch::Sender<Option<String>>,
    /// Cancelled to end the session from the agent's side.
    pub(super) shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn close_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "the session is closing".to_owned())
    }

    async fn expose(&self, port: u16, route: Route, publish: Publish) -> Result<(), Error> {
        if port == 0 {
            return Err(Error::Status(Status::invalid_argument(
                "port 0 cannot be exposed",
            )));
        }
        let (ack, acked) = oneshot::channel();
        {
            let mut routing = lock(&self.routing);
            if self.closed.borrow().is_some() {
                return Err(Error::SessionClosed {
                    reason: self.close_reason(),
                });
            }
            if routing.routes.contains_key(&port) {
                return Err(Error::PortInUse { port });
            }
            // While the agent reconnects there is no link: the new one exposes the port.
            if let Some(link) = &routing.link {
                link.expose(port, &publish);
            }
            let exposure = Exposure {
                route,
                publish,
                published: Published::default(),
            };
            routing.routes.insert(port, exposure);
            lock(&self.acks).entry(port).or_default().push(ack);
        }
        let timeout = self.registration.settings.handshake_timeout;
        let outcome = match tokio::time::timeout(timeout, acked).await {
            Ok(Ok(Ok(_))) => return Ok(()),
            Ok(Ok(Err(refused))) => {
                // The relay did not expose the port: forget it without withdrawing it.
                lock(&self.routing).routes.remove(&port);
                return Err(refused);
            }
            Ok(Err(_)) => Error::SessionClosed {
                reason: self.close_reason(),
            },
            Err(_) => Error::Timeout {
                what: "exposing a port",
                after: timeout,
            },
        };
        // The relay may yet expose the port: take it back.
        self.unexpose(port);
        Err(outcome)
    }

    pub(super) fn unexpose(&self, port: u16) {
        let routing = &mut *lock(&self.routing);
        if routing.routes.remove(&port).is_some()
            && let Some(link) = &routing.link
        {
            link.withdraw(port);
        }
    }

    /// Makes `link` the session's link and exposes every port on it. Returns what confirms
    /// them.
    pub(super) fn install(&self, link: &Arc<Link>) -> Vec<(u16, oneshot::Receiver<ExposeOutcome>)> {
        let mut routing = lock(&self.routing);
        routing.link = Some(link.clone());
        let mut acks = lock(&self.acks);
        routing
            .routes
            .iter()
            .map(|(&port, exposure)| {
                let (ack, acked) = oneshot::channel();
                acks.entry(port).or_default().push(ack);
                link.expose(port, &exposure.publish);
                (port, acked)
            })
            .collect()
    }

    /// Forgets `link` if it is still the session's link.
    pub(super) fn uninstall(&self, link: &Arc<Link>) {
        let mut routing = lock(&self.routing);
        if routing
            .link
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, link))
        {
            routing.link = None;
        }
    }

    /// Accepts a dial: opens its data stream on the link the notice came on, presenting the
    /// ticket. The call runs in its own task, so the connection can be written to before the
    /// relay's answer arrives.
    pub(super) fn accept(
        &self,
        link: &Link,
        ticket: Ticket,
        port: u16,
        peer: String,
    ) -> Connection {
        let opening = AcceptConnectionRequest {
            message: Some(accept_connection_request::Message::Ticket(
                ConnectionTicket {
                    session_id: link.id.to_string(),
                    ticket: ticket.as_bytes().to_vec().into(),
                },
            )),
        };
        let (writer, requests) = outbound(opening, &self.registration.settings, link.chunk_limit);
        let channel = link.data_channel.clone();
        let call = tokio::spawn(wire::call::<_, AcceptConnectionResponse, _>(
            channel,
            ACCEPT_CONNECTION_PATH,
            requests,
        ));
        let info = ConnectionInfo::new(self.registration.name.clone(), port, Some(peer.clone()));
        let meter = self.observer.opened(port, peer);
        Connection::new(inbound_from_call(call), writer, info, Some(meter))
    }

    /// Tells the relay that a dial cannot be served, and why.
    pub(super) fn refuse(
        &self,
        link: &Link,
        ticket: Ticket,
        port: u16,
        peer: String,
        error: Error,
    ) {
        debug!(port, %peer, %error, "refusing a dial");
        let failure = DialFailure {
            ticket: ticket.as_bytes().to_vec().into(),
            status: Some(error.to_rpc_status()),
        };
        self.observer.dial_failed(port, peer, error.to_string());
        link.send_control(open_session_request::Message::DialFailure(failure));
    }

    fn dispatch(self: &Arc<Self>, link: &Arc<Link>, notice: DialNotice) -> Result<(), Error> {
        let ticket = Ticket::from_bytes(&notice.ticket)
            .ok_or_else(|| Error::protocol("a dial notice carried a malformed ticket"))?;
        let peer = notice.dialer;
        let Ok(port) = u16::try_from(notice.port) else {
            return Err(Error::protocol("a dial notice named a port above 65535"));
        };
        let route = lock(&self.routing)
            .routes
            .get(&port)
            .map(|exposure| exposure.route.clone());
        match route {
            None => {
                let name = self.registration.name.to_string();
                self.refuse(
                    link,
                    ticket,
                    port,
                    peer,
                    Error::PortNotExposed { name, port },
                );
            }
            Some(Route::Listener(sender)) => match sender.try_reserve() {
                Ok(permit) => permit.send(self.accept(link, ticket, port, peer)),
                Err(_) => {
                    let busy = Status::unavailable(format!(
                        "port {port}'s listener is not taking connections"
                    ));
                    self.refuse(link, ticket, port, peer, Error::Status(busy));
                }
            },
            Some(Route::Forward(target)) => {
                let (shared, link) = (self.clone(), link.clone());
                tokio::spawn(forward::serve(shared, link, ticket, port, peer, target));
            }
        }
        Ok(())
    }

    pub(super) fn handle(
        self: &Arc<Self>,
        link: &Arc<Link>,
        message: OpenSessionResponse,
    ) -> Result<(), Error> {
        use open_session_response::Message;
        match message.message {
            Some(Message::DialNotice(notice)) => self.dispatch(link, notice)?,
            Some(Message::PortExposed(exposed)) => {
                let exposed = exposed.port.unwrap_or_default();
                let published = Published::from_proto(&exposed);
                let Ok(port) = u16::try_from(exposed.port) else {
                    return Err(Error::protocol("the relay confirmed a port above 65535"));
                };
                let changed = match lock(&self.routing).routes.get_mut(&port) {
                    Some(exposure) if exposure.published != published => {
                        let before = std::mem::replace(&mut exposure.published, published.clone());
                        !before.is_empty()
                    }
                    _ => false,
                };
                if changed {
                    info!(port, %published, "the relay published the port elsewhere");
                    let event = Event::Republished {
                        port,
                        published: published.clone(),
                    };
                    self.observer.emit(event);
                }
                self.answer(port, &|| Ok(published.clone()));
            }
            Some(Message::ExposeFailure(failure)) => {
                let Ok(port) = u16::try_from(failure.port) else {
                    return Err(Error::protocol("the relay refused a port above 65535"));
                };
                let status = failure.status.unwrap_or_default();
                let code = tonic::Code::from_i32(status.code);
                let message = status.message.clone();
                let details = prost::Message::encode_to_vec(&status);
                let status = Status::with_details(code, message, details.into());
                let error = || Error::from_status(status.clone());
                if !self.answer(port, &|| Err(error())) {
                    warn!(port, error = %error(), "the relay refused a port nobody waits for");
                }
            }
            Some(Message::Drain(drain)) => {
                let grace = drain.grace_period.and_then(|d| Duration::try_from(d).ok());
                match grace {
                    Some(grace) => info!(grace = %format_duration(grace), "the relay is draining"),
                    None => info!("the relay is draining"),
                }
                self.observer.emit(Event::Draining { grace });
            }
            Some(Message::Heartbeat(_)) => {}
            Some(Message::Welcome(_)) => return Err(Error::protocol("a second welcome")),
            None => return Err(Error::protocol("an empty control message")),
        }
        Ok(())
    }

    /// Answers whoever waits for the relay's word on `port`; whether anyone did.
    fn answer(&self, port: u16, outcome: &dyn Fn() -> ExposeOutcome) -> bool {
        let waiting = lock(&self.acks).remove(&port).unwrap_or_default();
        if waiting.is_empty() {
            // Exposed twice while reconnecting: the first answer served both.
            debug!(port, "the relay answered for a port nobody waits for");
        }
        let mut anyone = false;
        for ack in waiting {
            anyone |= ack.send(outcome()).is_ok();
        }
        anyone
    }

    /// Marks the session closed for good: listeners end, pending exposes fail.
    pub(super) fn close(&self, reason: String) {
        {
            let mut routing = lock(&self.routing);
            routing.routes.clear();
            if let Some(link) = routing.link.take() {
                link.end.cancel();
            }
        }
        lock(&self.acks).clear();
        self.closed.send_replace(Some(reason));
    }
}
