//! [`Session`]: an agent's registration with a relay, its control stream, and the routing of
//! dial notices to listeners and forwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use sesame_proto::v1::tunnel_service_client::TunnelServiceClient;
use sesame_proto::v1::{
    AcceptConnectionRequest, ConnectionTicket, DialFailure, DialNotice, ExposePort, ExposedPort,
    OpenSessionRequest, OpenSessionResponse, UnexposePort, accept_connection_request,
    open_session_request, open_session_response,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::forward::{self, Forward, Target};
use super::listener::Listener;
use super::observe::{Event, Observer, Stats};
use crate::connection::{ConnectionInfo, inbound_from_call, outbound};
use crate::handshake::{accept_welcome, hello};
use crate::settings::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use crate::transport::DEFAULT_RELAY;
use crate::{
    Connection, Error, RelayUrl, RemoteName, SessionId, Ticket, TransportSettings, format_duration,
};

/// How many control messages may wait to be sent to the relay.
const CONTROL_QUEUE: usize = 256;

/// How many accepted connections may wait for a listener to take them.
const LISTENER_BACKLOG: usize = 128;

/// How long an agent waits for a target when the relay states no dial timeout.
const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures and opens a [`Session`].
#[derive(Debug)]
#[must_use]
pub struct SessionBuilder {
    name: RemoteName,
    relay: Option<RelayUrl>,
    channel: Option<Channel>,
    agent_version: String,
    settings: TransportSettings,
}

impl SessionBuilder {
    /// The relay to register with; [`DEFAULT_RELAY`](crate::DEFAULT_RELAY) unless set.
    pub fn relay(mut self, relay: RelayUrl) -> Self {
        self.relay = Some(relay);
        self
    }

    /// An existing channel to the relay, used instead of connecting to an address.
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// How the agent describes itself to others (`name/version`); this crate's by default.
    pub fn agent_version(mut self, agent_version: impl Into<String>) -> Self {
        self.agent_version = agent_version.into();
        self
    }

    /// The transport tuning.
    pub fn transport(mut self, settings: TransportSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Connects, registers the remote, and returns the open session.
    ///
    /// Fails with [`Error::NameInUse`] when another agent holds the name, and with
    /// [`Error::RelayUnreachable`] when the relay cannot be reached.
    pub async fn connect(self) -> Result<Session, Error> {
        let relay = match &self.relay {
            Some(relay) => relay.clone(),
            None => DEFAULT_RELAY
                .parse()
                .expect("the default relay address is valid"),
        };
        let channel = match self.channel {
            Some(channel) => channel,
            None => relay.connect(&self.settings).await?,
        };
        let client = TunnelServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);

        let (control, queue) = mpsc::channel(CONTROL_QUEUE);
        let opening = hello(&self.name, &self.agent_version, MAX_CHUNK_BYTES);
        control
            .try_send(request(open_session_request::Message::Hello(opening)))
            .expect("a new queue has room");
        // Closing the session ends the control stream at once, whoever still holds a sender.
        let shutdown = CancellationToken::new();
        let requests = ReceiverStream::new(queue).take_until(shutdown.clone().cancelled_owned());

        let handshake = async {
            let mut responses = client.clone().open_session(requests).await?.into_inner();
            let welcome = match responses.message().await? {
                Some(OpenSessionResponse {
                    message: Some(open_session_response::Message::Welcome(welcome)),
                }) => welcome,
                Some(_) => {
                    return Err(Error::protocol(
                        "the relay's first message was not a welcome",
                    ));
                }
                None => {
                    return Err(Error::protocol(
                        "the relay ended the session during the handshake",
                    ));
                }
            };
            Ok::<_, Error>((accept_welcome(welcome)?, responses))
        };
        let timeout = self.settings.handshake_timeout;
        let (welcome, responses) =
            tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| Error::Timeout {
                    what: "the session handshake",
                    after: timeout,
                })??;

        let shared = Arc::new(Shared {
            id: welcome.session_id,
            name: self.name,
            relay: relay.to_string(),
            client,
            control,
            routes: Mutex::default(),
            acks: Mutex::default(),
            chunk_limit: welcome.chunk_limit,
            target_timeout: target_timeout(welcome.dial_timeout),
            settings: self.settings,
            observer: Observer::new(),
            closed: watch::channel(None).0,
            shutdown: shutdown.clone(),
        });
        let span = info_span!("session", remote = %shared.name, id = %shared.id);
        tokio::spawn(run_control(shared.clone(), responses).instrument(span));
        Ok(Session {
            handle: Arc::new(Handle {
                shared,
                _shutdown: shutdown.drop_guard(),
            }),
        })
    }
}

/// How long to wait for a target: a little less than the relay waits for the agent, so the
/// dialer hears "target refused" rather than a timeout.
fn target_timeout(dial_timeout: Option<Duration>) -> Duration {
    dial_timeout.map_or(DEFAULT_TARGET_TIMEOUT, |relay| relay.mul_f32(0.9))
}

/// An agent's open session with a relay: its remote is registered for as long as the session
/// lives.
///
/// Cheap to clone. The session stays open while any clone, [`Listener`] or [`Forward`] of it
/// exists, until [`close`](Session::close) is called, or until the relay ends it.
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
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The relay's id of this session.
    pub fn id(&self) -> &SessionId {
        &self.shared().id
    }

    /// The remote's name.
    pub fn name(&self) -> &RemoteName {
        &self.shared().name
    }

    /// The relay's address.
    pub fn relay(&self) -> &str {
        &self.shared().relay
    }

    /// Exposes `port` and returns the stream of connections dialed to it.
    ///
    /// Returns once the relay has confirmed the port: from then on dials reach the listener.
    pub async fn listen(&self, port: u16) -> Result<Listener, Error> {
        let (sender, incoming) = mpsc::channel(LISTENER_BACKLOG);
        self.shared().expose(port, Route::Listener(sender)).await?;
        Ok(Listener::new(self.clone(), port, incoming))
    }

    /// Exposes `port` and forwards each connection dialed to it to `target`.
    ///
    /// The agent connects to the target when a dial arrives; if the target refuses, the dial
    /// fails with [`Error::TargetRefused`] and the session carries on.
    pub async fn forward(&self, port: u16, target: Target) -> Result<Forward, Error> {
        self.shared()
            .expose(port, Route::Forward(target.clone()))
            .await?;
        Ok(Forward::new(self.clone(), port, target))
    }

    /// Totals of the session's connections so far.
    pub fn stats(&self) -> Stats {
        self.shared().observer.stats()
    }

    /// Subscribes to the session's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared().observer.subscribe()
    }

    /// Waits until the session ends and says why.
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

/// The state a session's handles and its tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    id: SessionId,
    name: RemoteName,
    relay: String,
    client: TunnelServiceClient<Channel>,
    control: mpsc::Sender<OpenSessionRequest>,
    routes: Mutex<HashMap<u16, Route>>,
    acks: Mutex<HashMap<u16, oneshot::Sender<()>>>,
    /// The largest data payload the relay accepts.
    chunk_limit: usize,
    target_timeout: Duration,
    settings: TransportSettings,
    observer: Observer,
    /// Why the session ended, once it has.
    closed: watch::Sender<Option<String>>,
    /// Cancelled to end the session from the agent's side.
    shutdown: CancellationToken,
}

fn request(message: open_session_request::Message) -> OpenSessionRequest {
    OpenSessionRequest {
        message: Some(message),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn target_timeout(&self) -> Duration {
        self.target_timeout
    }

    pub(super) fn close_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "the session is closing".to_owned())
    }

    async fn expose(&self, port: u16, route: Route) -> Result<(), Error> {
        if port == 0 {
            return Err(Error::Status(Status::invalid_argument(
                "port 0 cannot be exposed",
            )));
        }
        let (ack, acked) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if self.closed.borrow().is_some() {
                return Err(Error::SessionClosed {
                    reason: self.close_reason(),
                });
            }
            if routes.contains_key(&port) {
                return Err(Error::PortInUse { port });
            }
            routes.insert(port, route);
            lock(&self.acks).insert(port, ack);
        }
        let message = request(open_session_request::Message::ExposePort(ExposePort {
            port: Some(ExposedPort {
                port: u32::from(port),
            }),
        }));
        let mut sent = false;
        let confirmed = async {
            self.control.send(message).await.ok()?;
            sent = true;
            acked.await.ok()
        };
        let timeout = self.settings.handshake_timeout;
        let outcome = match tokio::time::timeout(timeout, confirmed).await {
            Ok(Some(())) => return Ok(()),
            Ok(None) => Error::SessionClosed {
                reason: self.close_reason(),
            },
            Err(_) => Error::Timeout {
                what: "exposing a port",
                after: timeout,
            },
        };
        lock(&self.routes).remove(&port);
        lock(&self.acks).remove(&port);
        if sent {
            // The relay may yet expose the port: take it back.
            self.withdraw(port);
        }
        Err(outcome)
    }

    pub(super) fn unexpose(&self, port: u16) {
        if lock(&self.routes).remove(&port).is_some() {
            self.withdraw(port);
        }
    }

    /// Tells the relay that `port` is no longer exposed.
    fn withdraw(&self, port: u16) {
        self.send_control(request(open_session_request::Message::UnexposePort(
            UnexposePort {
                port: u32::from(port),
            },
        )));
    }

    /// Accepts a dial: opens its data stream, presenting the ticket. The call runs in its own
    /// task, so the connection can be written to before the relay's answer arrives.
    pub(super) fn accept(&self, ticket: Ticket, port: u16, peer: String) -> Connection {
        let opening = AcceptConnectionRequest {
            message: Some(accept_connection_request::Message::Ticket(
                ConnectionTicket {
                    session_id: self.id.to_string(),
                    ticket: ticket.as_bytes().to_vec().into(),
                },
            )),
        };
        let (writer, requests) = outbound(opening, &self.settings, self.chunk_limit);
        let mut client = self.client.clone();
        let call = tokio::spawn(async move { client.accept_connection(requests).await });
        let info = ConnectionInfo::new(self.name.clone(), port, Some(peer.clone()));
        let meter = self.observer.opened(port, peer);
        Connection::new(inbound_from_call(call), writer, info, Some(meter))
    }

    /// Tells the relay that a dial cannot be served, and why.
    pub(super) fn refuse(&self, ticket: Ticket, port: u16, peer: String, error: Error) {
        debug!(port, %peer, %error, "refusing a dial");
        let failure = DialFailure {
            ticket: ticket.as_bytes().to_vec().into(),
            status: Some(error.to_rpc_status()),
        };
        self.observer.dial_failed(port, peer, error.to_string());
        self.send_control(request(open_session_request::Message::DialFailure(failure)));
    }

    /// Queues a control message for the relay without waiting; if the queue is full, a task
    /// waits for room, so the message is never dropped while the session lives.
    fn send_control(&self, message: OpenSessionRequest) {
        if let Err(mpsc::error::TrySendError::Full(message)) = self.control.try_send(message) {
            let control = self.control.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { control.send(message).await });
            }
        }
    }

    fn dispatch(self: &Arc<Self>, notice: DialNotice) -> Result<(), Error> {
        let ticket = Ticket::from_bytes(&notice.ticket)
            .ok_or_else(|| Error::protocol("a dial notice carried a malformed ticket"))?;
        let peer = notice.dialer;
        let Ok(port) = u16::try_from(notice.port) else {
            return Err(Error::protocol("a dial notice named a port above 65535"));
        };
        let route = lock(&self.routes).get(&port).cloned();
        match route {
            None => {
                let name = self.name.to_string();
                self.refuse(ticket, port, peer, Error::PortNotExposed { name, port });
            }
            Some(Route::Listener(sender)) => match sender.try_reserve() {
                Ok(permit) => permit.send(self.accept(ticket, port, peer)),
                Err(_) => {
                    let busy = Status::unavailable(format!(
                        "port {port}'s listener is not taking connections"
                    ));
                    self.refuse(ticket, port, peer, Error::Status(busy));
                }
            },
            Some(Route::Forward(target)) => {
                tokio::spawn(forward::serve(self.clone(), ticket, port, peer, target));
            }
        }
        Ok(())
    }

    fn handle(self: &Arc<Self>, message: OpenSessionResponse) -> Result<(), Error> {
        use open_session_response::Message;
        match message.message {
            Some(Message::DialNotice(notice)) => self.dispatch(notice)?,
            Some(Message::PortExposed(exposed)) => {
                let port = exposed.port.map_or(0, |p| p.port);
                let ack = u16::try_from(port)
                    .ok()
                    .and_then(|port| lock(&self.acks).remove(&port));
                match ack {
                    Some(ack) => {
                        let _ = ack.send(());
                    }
                    None => warn!(
                        port,
                        "the relay confirmed a port that was not being exposed"
                    ),
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
            Some(Message::Welcome(_)) => return Err(Error::protocol("a second welcome")),
            None => return Err(Error::protocol("an empty control message")),
        }
        Ok(())
    }

    /// Marks the session closed: listeners end, pending exposes fail.
    fn close(&self, reason: String) {
        lock(&self.routes).clear();
        lock(&self.acks).clear();
        self.closed.send_replace(Some(reason));
    }
}

/// Reads the relay's control messages until the session ends, from either side.
async fn run_control(shared: Arc<Shared>, mut responses: Streaming<OpenSessionResponse>) {
    let reason = loop {
        let message = tokio::select! {
            _ = shared.shutdown.cancelled() => break "the agent closed the session".to_owned(),
            message = responses.message() => message,
        };
        match message {
            Ok(Some(message)) => {
                if let Err(error) = shared.handle(message) {
                    warn!(%error, "ending the session");
                    break error.to_string();
                }
            }
            Ok(None) => break "the relay ended the session".to_owned(),
            Err(status) => break Error::from_status(status).to_string(),
        }
    };
    debug!(%reason, "session closed");
    shared.close(reason);
}
