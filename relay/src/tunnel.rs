//! `TunnelService`: agent sessions and the data streams they accept dials with. What a
//! session's control messages mean is decided in `control`; this module runs the calls.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt, stream};
use sesame_proto::v1::tunnel_service_server::TunnelService;
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, DialResponse, Drain, OpenSessionRequest,
    OpenSessionResponse, Settings, Welcome, accept_connection_request, accept_connection_response,
    dial_response, open_session_request, open_session_response,
};
use sesame_tunnel::handshake::accept_hello;
use sesame_tunnel::settings::MAX_CHUNK_BYTES;
use sesame_tunnel::splice::{ToAgent, ToDialer, splice};
use sesame_tunnel::{Error, SessionId, Ticket, format_duration};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{Action as Permission, Caller, Gate};
use crate::config::RelayConfig;
use crate::control::{Action, Control};
use crate::endpoints::Endpoints;
use crate::metrics::Metrics;
use crate::registry::{Registry, RemoteRecord};
use crate::remotes::to_proto;
use crate::sessions::{Attached, SessionLink, Sessions};
use crate::shutdown::Shutdown;
use crate::{first_message, peer_of};

/// Serves agents.
#[derive(Clone)]
pub(crate) struct Tunnel {
    pub(crate) config: Arc<RelayConfig>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) sessions: Arc<dyn Sessions>,
    pub(crate) endpoints: Arc<Endpoints>,
    pub(crate) shutdown: Shutdown,
    pub(crate) metrics: Arc<Metrics>,
}

type ControlSender = mpsc::Sender<Result<OpenSessionResponse, Status>>;

fn response(message: open_session_response::Message) -> OpenSessionResponse {
    OpenSessionResponse {
        message: Some(message),
    }
}

#[tonic::async_trait]
impl TunnelService for Tunnel {
    type OpenSessionStream =
        Pin<Box<dyn Stream<Item = Result<OpenSessionResponse, Status>> + Send>>;
    type AcceptConnectionStream = ToAgent;

    async fn open_session(
        &self,
        request: Request<Streaming<OpenSessionRequest>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let peer = peer_of(&request);
        let caller = self.gate.authenticate(&request)?;
        let mut requests = request.into_inner();
        let timeout = self.config.handshake_timeout;
        let hello = match first_message(&mut requests, timeout, "hello").await? {
            OpenSessionRequest {
                message: Some(open_session_request::Message::Hello(hello)),
            } => hello,
            _ => return Err(Error::protocol("a session must begin with a hello").into()),
        };
        let hello = accept_hello(hello)?;
        caller.check(Permission::Register(&hello.name))?;
        if self.shutdown.begun.is_cancelled() {
            return Err(Status::unavailable("the relay is shutting down"));
        }

        let session = SessionId::generate();
        let record = RemoteRecord {
            name: hello.name.clone(),
            session: session.clone(),
            ports: BTreeMap::new(),
            connect_time: SystemTime::now(),
            agent_version: hello.agent_version,
            agent_key: hello.agent_key,
            owner: caller.token().map(str::to_owned),
        };
        let (control, queue) = mpsc::channel(self.config.control_queue.max(1));
        let welcome = Welcome {
            protocol_version: hello.protocol_version,
            session_id: session.to_string(),
            remote: Some(to_proto(&record)),
            settings: Some(Settings {
                max_chunk_bytes: MAX_CHUNK_BYTES as u32,
                dial_timeout: prost_types::Duration::try_from(self.config.dial_timeout).ok(),
                heartbeat_interval: prost_types::Duration::try_from(self.heartbeat_interval()).ok(),
            }),
        };
        // First in the queue, before anyone can reach the session to queue a dial notice.
        control
            .try_send(Ok(response(open_session_response::Message::Welcome(
                welcome,
            ))))
            .expect("a new queue has room");
        let replaced = CancellationToken::new();
        let link = SessionLink {
            control: control.clone(),
            chunk_limit: hello.chunk_limit,
            replaced: replaced.clone(),
            owner: caller.token().map(str::to_owned),
            connections: Arc::default(),
            public_connections: Arc::default(),
        };
        // The limit of remotes per token first: a token at its limit claims no new name.
        let attached = self
            .sessions
            .attach(&caller, &hello.name, session.clone(), link)?;
        let max_names = self.config.max_names_per_token;
        self.gate.claim_name(&caller, &hello.name, max_names)?;
        if let Some(stale) = self.registry.claim(record.clone()).await? {
            // The same agent is back before its old session was noticed dead: end that one.
            self.sessions.replace(&stale);
        }

        // The session's last words (a drain notice, the reason it ended) come after the queue,
        // so a full queue cannot lose them; whatever is still queued then is dropped.
        let ended = CancellationToken::new();
        let (last_words, said) = oneshot::channel::<Vec<Result<OpenSessionResponse, Status>>>();
        let responses = ReceiverStream::new(queue)
            .take_until(ended.clone().cancelled_owned())
            .chain(stream::once(said).flat_map(|words| stream::iter(words.unwrap_or_default())));
        let span = info_span!("session", remote = %hello.name, %session);
        span.in_scope(|| info!(%peer, agent = %record.agent_version, "remote connected"));
        let running = self
            .clone()
            .run_session(record, attached, requests, control, replaced, caller);
        tokio::spawn(
            async move {
                let words = running.await;
                let _ = last_words.send(words);
                ended.cancel();
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn accept_connection(
        &self,
        request: Request<Streaming<AcceptConnectionRequest>>,
    ) -> Result<Response<ToAgent>, Status> {
        self.accept(request).await
    }
}

impl Tunnel {
    /// Answers an AcceptConnection call, whichever framing brought its messages: joins the
    /// agent's data stream to the dial its ticket names.
    pub(crate) async fn accept<S>(&self, request: Request<S>) -> Result<Response<ToAgent>, Status>
    where
        S: Stream<Item = Result<AcceptConnectionRequest, Status>> + Send + Unpin + 'static,
    {
        let caller = self.gate.authenticate(&request)?;
        let mut requests = request.into_inner();
        let timeout = self.config.handshake_timeout;
        let presented = match first_message(&mut requests, timeout, "ticket").await? {
            AcceptConnectionRequest {
                message: Some(accept_connection_request::Message::Ticket(ticket)),
            } => ticket,
            _ => return Err(Error::protocol("a data stream must begin with its ticket").into()),
        };
        let unknown = || {
            Status::not_found(
                "no dial waits for this ticket: it expired, was used, or belongs to another session",
            )
        };
        let ticket = Ticket::from_bytes(&presented.ticket).ok_or_else(unknown)?;
        let session = SessionId::from_wire(presented.session_id);
        // A ticket is good only on its own session, presented with the session's own token.
        let link = self.sessions.get(&session).ok_or_else(unknown)?;
        if link.owner.as_deref() != caller.token() {
            return Err(unknown());
        }
        let dial = self
            .sessions
            .take_dial(&ticket, &session)
            .ok_or_else(unknown)?;
        let (cut, cut_guard) = self
            .shutdown
            .connection_cut(caller.ended(), dial.dialer_ended.as_ref());
        let (to_dialer, to_agent) = splice(dial.from_dialer, requests, link.chunk_limit, &cut);
        let origin = &dial.origin;
        let count =
            self.metrics
                .connection(origin.entrance, &origin.name, origin.started.elapsed());
        // The slot is given back, the cut's watcher stopped and the connection counted out
        // when both halves of the connection are gone.
        let slot = Arc::new((dial.slot, cut_guard, count));
        let (dialer_slot, agent_slot) = (slot.clone(), slot);
        let started = origin.started;
        let mut first = true;
        let to_dialer: ToDialer = Box::pin(to_dialer.inspect(move |message| {
            if let Ok(DialResponse {
                message: Some(dial_response::Message::Data(data)),
            }) = message
            {
                let count = &dialer_slot.2;
                count.came_from_remote(data.len());
                if std::mem::take(&mut first) {
                    count.first_byte(started.elapsed());
                }
            }
        }));
        let to_agent: ToAgent = Box::pin(to_agent.inspect(move |message| {
            if let Ok(AcceptConnectionResponse {
                message: Some(accept_connection_response::Message::Data(data)),
            }) = message
            {
                agent_slot.2.went_to_remote(data.len());
            }
        }));
        dial.reply.send(Ok(to_dialer)).map_err(|_| {
            Status::not_found("the dialer gave up before the connection was accepted")
        })?;
        Ok(Response::new(to_agent))
    }

    /// How often agents should send heartbeats: three within the time a silent agent is given.
    fn heartbeat_interval(&self) -> Duration {
        self.config.transport.dead_peer_timeout() / 3
    }

    /// Runs one session's control stream until the agent leaves, goes silent, is replaced by
    /// a new session of its own, or the relay shuts down; then forgets the remote: no dial
    /// reaches it from then on. Returns the session's last messages for the agent.
    async fn run_session(
        self,
        record: RemoteRecord,
        attached: Attached,
        mut requests: Streaming<OpenSessionRequest>,
        control: ControlSender,
        replaced: CancellationToken,
        caller: Caller,
    ) -> Vec<Result<OpenSessionResponse, Status>> {
        let token_ended = caller.ended().cloned().unwrap_or_default();
        let mut state = Control::new(self.config.max_ports_per_session);
        let silence = self.config.transport.dead_peer_timeout();
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(quiet);
        let (reason, last_words) = loop {
            let message = tokio::select! {
                _ = self.shutdown.begun.cancelled() => {
                    let grace = prost_types::Duration::try_from(self.config.grace_period).ok();
                    let drain = response(open_session_response::Message::Drain(Drain { grace_period: grace }));
                    let closing = Status::unavailable("the relay is shutting down");
                    break ("the relay is shutting down".to_owned(), vec![Ok(drain), Err(closing)]);
                }
                () = token_ended.cancelled() => {
                    let reason = "the session's token was revoked or expired";
                    break (reason.to_owned(), vec![Err(Status::unauthenticated(reason))]);
                }
                _ = replaced.cancelled() => {
                    let reason = "a new session of the same agent replaced it";
                    break (reason.to_owned(), vec![Err(Status::aborted(reason))]);
                }
                () = &mut quiet => {
                    let reason = format!("the agent went silent for {}", format_duration(silence));
                    break (reason.clone(), vec![Err(Status::unavailable(reason))]);
                }
                message = requests.message() => message,
            };
            quiet.as_mut().reset(Instant::now() + silence);
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break ("the agent closed the session".to_owned(), Vec::new()),
                Err(status) => {
                    break (
                        format!("the agent went away: {}", status.message()),
                        Vec::new(),
                    );
                }
            };
            let done = match state.on_message(message) {
                Ok(actions) => {
                    let (session, record) = (&mut state, &record);
                    self.carry_out(&caller, record, session, actions, &control)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = done {
                warn!(%error, "ending the session");
                break (error.to_string(), vec![Err(error.to_status())]);
            }
        };
        info!(%reason, "remote disconnected");
        attached.detach();
        self.endpoints
            .withdraw_session(&record.name, &record.session);
        if let Err(error) = self.registry.release(&record.name, &record.session).await {
            warn!(error = %error, "could not release the remote's name");
        }
        self.metrics.forget_remote(&record.name);
        // The token holds the name until here, as the registry did.
        drop(attached);
        last_words
    }

    /// Carries out what the session's control state decided, and what follows from it.
    async fn carry_out(
        &self,
        caller: &Caller,
        record: &RemoteRecord,
        state: &mut Control,
        actions: Vec<Action>,
        control: &ControlSender,
    ) -> Result<(), Error> {
        let mut actions = std::collections::VecDeque::from(actions);
        // Each Publish adds at most two actions that add none: this ends.
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Publish { port, request } => {
                    let (name, session) = (&record.name, &record.session);
                    let outcome = self
                        .endpoints
                        .publish(caller, name, session, port, &request);
                    match &outcome {
                        Ok(_) => debug!(port, "port exposed"),
                        Err(refusal) => debug!(port, reason = refusal.message(), "port refused"),
                    }
                    actions.extend(state.published(port, outcome));
                }
                Action::Withdraw { port } => {
                    let (name, session) = (&record.name, &record.session);
                    self.endpoints.withdraw(name, session, port);
                    debug!(port, "port withdrawn");
                }
                Action::SavePort { port, endpoints } => {
                    let (name, session) = (&record.name, &record.session);
                    self.registry
                        .set_port(name, session, port, endpoints)
                        .await?;
                }
                Action::Send(message) => {
                    // Never wait on the agent here: this loop also serves its dial failures.
                    control.try_send(Ok(response(message))).map_err(|_| {
                        Error::Status(Status::resource_exhausted(
                            "the agent does not read its control stream",
                        ))
                    })?;
                }
                Action::SendIfRoom(message) => {
                    let _ = control.try_send(Ok(response(message)));
                }
                Action::FailDial { ticket, status } => {
                    // Already answered, timed out, or never ours: then nothing waits for it.
                    if let Some(dial) = self.sessions.take_dial(&ticket, &record.session) {
                        let _ = dial.reply.send(Err(status));
                    }
                }
            }
        }
        Ok(())
    }
}
