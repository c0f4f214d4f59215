//! `TunnelService`: agent sessions and the data streams they accept dials with.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt, stream};
use sesame_proto::v1::tunnel_service_server::TunnelService;
use sesame_proto::v1::{
    AcceptConnectionRequest, DialFailure, Drain, ExposeFailure, OpenSessionRequest,
    OpenSessionResponse, PortExposed, Settings, Welcome, accept_connection_request,
    open_session_request, open_session_response,
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

use crate::auth::{Action, Caller};
use crate::registry::{PublicEndpoints, RemoteRecord};
use crate::remotes::to_proto;
use crate::state::{SessionLink, State};
use crate::{first_message, peer_of, port_number};

/// The longest message of a dial failure the relay passes on to the dialer.
const MAX_FAILURE_MESSAGE: usize = 1024;

/// The most bytes of error details (such as a reason) of a dial failure the relay passes on.
const MAX_FAILURE_DETAILS: usize = 4096;

/// Serves agents.
pub(crate) struct Tunnel {
    pub(crate) state: Arc<State>,
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
        let state = &self.state;
        let peer = peer_of(&request);
        let caller = state.authenticate(&request)?;
        let mut requests = request.into_inner();
        let hello =
            match first_message(&mut requests, state.config.handshake_timeout, "hello").await? {
                OpenSessionRequest {
                    message: Some(open_session_request::Message::Hello(hello)),
                } => hello,
                _ => return Err(Error::protocol("a session must begin with a hello").into()),
            };
        let hello = accept_hello(hello)?;
        caller.check(Action::Register(&hello.name))?;
        state.auth.claim_name(&caller, &hello.name)?;
        if state.shutdown.is_cancelled() {
            return Err(Status::unavailable("the relay is shutting down"));
        }

        let session = SessionId::generate();
        let holding = state.hold(&caller, &hello.name, &session)?;
        let record = RemoteRecord {
            name: hello.name.clone(),
            session: session.clone(),
            ports: BTreeMap::new(),
            connect_time: SystemTime::now(),
            agent_version: hello.agent_version,
            agent_key: hello.agent_key,
            owner: caller.token().map(str::to_owned),
        };
        if let Some(stale) = state.registry.claim(record.clone()).await? {
            // The same agent is back before its old session was noticed dead: end that one.
            state.replace_session(&stale);
        }

        let (control, queue) = mpsc::channel(state.config.control_queue.max(1));
        // The session's last words (a drain notice, the reason it ended) come after the queue,
        // so a full queue cannot lose them; whatever is still queued then is dropped.
        let ended = CancellationToken::new();
        let (last_words, said) = oneshot::channel::<Vec<Result<OpenSessionResponse, Status>>>();
        let responses = ReceiverStream::new(queue)
            .take_until(ended.clone().cancelled_owned())
            .chain(stream::once(said).flat_map(|words| stream::iter(words.unwrap_or_default())));
        let welcome = Welcome {
            protocol_version: hello.protocol_version,
            session_id: session.to_string(),
            remote: Some(to_proto(&record)),
            settings: Some(Settings {
                max_chunk_bytes: MAX_CHUNK_BYTES as u32,
                dial_timeout: prost_types::Duration::try_from(state.config.dial_timeout).ok(),
                heartbeat_interval: prost_types::Duration::try_from(heartbeat_interval(state)).ok(),
            }),
        };
        control
            .try_send(Ok(response(open_session_response::Message::Welcome(
                welcome,
            ))))
            .expect("a new queue has room");
        let replaced = CancellationToken::new();
        state.add_session(
            session.clone(),
            SessionLink {
                control: control.clone(),
                chunk_limit: hello.chunk_limit,
                replaced: replaced.clone(),
                owner: caller.token().map(str::to_owned),
                connections: Arc::default(),
            },
        );
        let span = info_span!("session", remote = %hello.name, %session);
        span.in_scope(|| info!(%peer, agent = %record.agent_version, "remote connected"));
        let session = run_session(state.clone(), record, requests, control, replaced, caller);
        tokio::spawn(
            async move {
                let words = session.await;
                drop(holding);
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
        let state = &self.state;
        let caller = state.authenticate(&request)?;
        let mut requests = request.into_inner();
        let presented =
            match first_message(&mut requests, state.config.handshake_timeout, "ticket").await? {
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
        let link = state.session(&session).ok_or_else(unknown)?;
        if link.owner.as_deref() != caller.token() {
            return Err(unknown());
        }
        let dial = state.take_dial(&ticket, &session).ok_or_else(unknown)?;
        let (cut, cut_guard) = state.connection_cut(caller.ended(), dial.dialer_ended.as_ref());
        let (to_dialer, to_agent) = splice(dial.from_dialer, requests, link.chunk_limit, &cut);
        // The slot is given back, and the cut's watcher stopped, when both halves of the
        // connection are gone.
        let slot = Arc::new((dial.slot, cut_guard));
        let (dialer_slot, agent_slot) = (slot.clone(), slot);
        let to_dialer: ToDialer = Box::pin(to_dialer.inspect(move |_| {
            let _ = &dialer_slot;
        }));
        let to_agent: ToAgent = Box::pin(to_agent.inspect(move |_| {
            let _ = &agent_slot;
        }));
        dial.reply.send(Ok(to_dialer)).map_err(|_| {
            Status::not_found("the dialer gave up before the connection was accepted")
        })?;
        Ok(Response::new(to_agent))
    }
}

/// How often agents should send heartbeats: three within the time a silent agent is given.
fn heartbeat_interval(state: &State) -> Duration {
    state.config.transport.dead_peer_timeout() / 3
}

/// Runs one session's control stream until the agent leaves, goes silent, is replaced by a
/// new session of its own, or the relay shuts down; then forgets the remote. Returns the
/// session's last messages for the agent.
async fn run_session(
    state: Arc<State>,
    record: RemoteRecord,
    mut requests: Streaming<OpenSessionRequest>,
    control: ControlSender,
    replaced: CancellationToken,
    caller: Caller,
) -> Vec<Result<OpenSessionResponse, Status>> {
    let token_ended = caller.ended().cloned().unwrap_or_default();
    let mut ports = BTreeMap::new();
    let silence = state.config.transport.dead_peer_timeout();
    let quiet = tokio::time::sleep(silence);
    tokio::pin!(quiet);
    let (reason, last_words) = loop {
        let message = tokio::select! {
            _ = state.shutdown.cancelled() => {
                let grace = prost_types::Duration::try_from(state.config.grace_period).ok();
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
        if let Err(error) = handle(&state, &record, &mut ports, message, &control).await {
            warn!(%error, "ending the session");
            break (error.to_string(), vec![Err(error.to_status())]);
        }
    };
    info!(%reason, "remote disconnected");
    state.remove_session(&record.session);
    state
        .endpoints
        .withdraw_session(&record.name, &record.session);
    if let Err(error) = state.registry.release(&record.name, &record.session).await {
        warn!(%error, "could not release the remote's name");
    }
    last_words
}

/// Acts on one control message from an agent.
async fn handle(
    state: &Arc<State>,
    record: &RemoteRecord,
    ports: &mut BTreeMap<u16, PublicEndpoints>,
    message: OpenSessionRequest,
    control: &ControlSender,
) -> Result<(), Error> {
    use open_session_request::Message;
    match message.message {
        Some(Message::ExposePort(expose)) => {
            let request = expose.port.unwrap_or_default();
            let port = valid_port(request.port)?;
            let published =
                state
                    .endpoints
                    .publish(state, &record.name, &record.session, port, &request);
            let answer = match published {
                Ok((confirmed, public)) => {
                    ports.insert(port, public);
                    state
                        .registry
                        .set_ports(&record.name, &record.session, ports.clone())
                        .await?;
                    debug!(port, "port exposed");
                    open_session_response::Message::PortExposed(PortExposed {
                        port: Some(confirmed),
                    })
                }
                Err(refusal) => {
                    debug!(port, reason = refusal.message(), "port refused");
                    let status = Error::Status(refusal).to_rpc_status();
                    open_session_response::Message::ExposeFailure(ExposeFailure {
                        port: u32::from(port),
                        status: Some(status),
                    })
                }
            };
            let confirmation = response(answer);
            // Never wait on the agent here: this loop also serves its dial failures.
            control.try_send(Ok(confirmation)).map_err(|_| {
                Error::Status(Status::resource_exhausted(
                    "the agent does not read its control stream",
                ))
            })?;
        }
        Some(Message::UnexposePort(unexpose)) => {
            let port = valid_port(unexpose.port)?;
            state
                .endpoints
                .withdraw(&record.name, &record.session, port);
            if ports.remove(&port).is_some() {
                state
                    .registry
                    .set_ports(&record.name, &record.session, ports.clone())
                    .await?;
                debug!(port, "port withdrawn");
            }
        }
        Some(Message::DialFailure(failure)) => fail_dial(state, &record.session, failure),
        Some(Message::Heartbeat(heartbeat)) => {
            // A full queue means the agent is not reading: its own silence timer will tell.
            let _ = control.try_send(Ok(response(open_session_response::Message::Heartbeat(
                heartbeat,
            ))));
        }
        Some(Message::Hello(_)) => return Err(Error::protocol("a second hello")),
        None => return Err(Error::protocol("an empty control message")),
    }
    Ok(())
}

fn valid_port(port: u32) -> Result<u16, Error> {
    port_number(port).ok_or_else(|| Error::protocol(format!("port {port} is not a valid port")))
}

/// Passes an agent's refusal of a dial on to the dialer waiting for it.
fn fail_dial(state: &State, session: &SessionId, failure: DialFailure) {
    let Some(ticket) = Ticket::from_bytes(&failure.ticket) else {
        return;
    };
    let Some(dial) = state.take_dial(&ticket, session) else {
        // Already answered, timed out, or never ours: nothing waits for it.
        return;
    };
    let _ = dial.reply.send(Err(status_from_agent(failure.status)));
}

/// A status an agent reported, made safe to pass on: a real error code and a bounded message.
fn status_from_agent(status: Option<sesame_proto::RpcStatus>) -> Status {
    let Some(status) = status else {
        return Status::unknown("the remote refused the connection without a reason");
    };
    let code = match tonic::Code::from_i32(status.code) {
        tonic::Code::Ok => tonic::Code::Unknown,
        code => code,
    };
    let message: String = status.message.chars().take(MAX_FAILURE_MESSAGE).collect();
    let details_len: usize = status
        .details
        .iter()
        .map(|any| any.value.len() + any.type_url.len())
        .sum();
    let details = sesame_proto::RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: if details_len <= MAX_FAILURE_DETAILS {
            status.details
        } else {
            Vec::new()
        },
    };
    Status::with_details(
        code,
        message,
        prost::Message::encode_to_vec(&details).into(),
    )
}
