//! The relay's half of a connection: joining a dialer's Dial call to an agent's
//! AcceptConnection call.
//!
//! Internal: for the relay of this project; not a stable API, and hidden from the
//! documentation.
//!
//! Each direction is a stream transformation: the response stream the relay returns to one
//! peer *is* the other peer's request stream, mapped message by message. No task and no
//! buffer sits in between, so tonic pulls from one peer exactly as fast as HTTP/2 flow
//! control lets it push to the other: backpressure passes straight through the relay, and
//! each direction holds at most one chunk of its own.
//!
//! The two directions share a joint that carries what one must tell the other: that it
//! has finished (a call ends with OK only once both directions have), or that it failed (then
//! both calls end with an error, each worded for its own peer). A cancellation token lets the
//! relay cut every spliced connection at once when its shutdown grace period ends.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, future, stream};
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, DialOpened, DialRequest, DialResponse,
    dial_response,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};

use crate::connection::ConnectionInfo;
use crate::frame::{ClientMessage, Outbound, ServerMessage};
use crate::pipe::{PipeWriter, pipe};
use crate::settings::MAX_CHUNK_BYTES;
use crate::{Connection, RemoteName, TransportSettings};

/// The longest reset reason passed on from one peer to the other.
const MAX_RESET_REASON: usize = 256;

/// What the relay sends the dialer: `opened`, then the agent's bytes.
pub type ToDialer = Pin<Box<dyn Stream<Item = Result<DialResponse, Status>> + Send>>;

/// What the relay sends the agent: the dialer's bytes.
pub type ToAgent = Pin<Box<dyn Stream<Item = Result<AcceptConnectionResponse, Status>> + Send>>;

/// Joins a dial to the agent's data stream that accepted it.
///
/// `from_dialer` and `from_agent` are the request streams after their opening messages;
/// `agent_chunk_limit` is the largest data payload the agent accepts (chunks from the dialer
/// are split, without copying, to fit). Cancelling `cut` ends both calls with `UNAVAILABLE`.
pub fn splice<D, A>(
    from_dialer: D,
    from_agent: A,
    agent_chunk_limit: usize,
    cut: &CancellationToken,
) -> (ToDialer, ToAgent)
where
    D: Stream<Item = Result<DialRequest, Status>> + Send + Unpin + 'static,
    A: Stream<Item = Result<AcceptConnectionRequest, Status>> + Send + Unpin + 'static,
{
    let joint = Arc::new(Joint::default());
    let opened = DialResponse {
        message: Some(dial_response::Message::Opened(DialOpened {})),
    };
    let to_dialer = Half::<_, DialResponse>::new(
        from_agent,
        Direction::TO_DIALER,
        MAX_CHUNK_BYTES,
        joint.clone(),
        cut,
    );
    let to_agent = Half::<_, AcceptConnectionResponse>::new(
        from_dialer,
        Direction::TO_AGENT,
        agent_chunk_limit,
        joint,
        cut,
    );
    (
        Box::pin(stream::once(async { Ok(opened) }).chain(to_dialer)),
        Box::pin(to_agent),
    )
}

/// A dialer's request stream after its target, as `splice` takes it.
pub type FromDialer = Pin<Box<dyn Stream<Item = Result<DialRequest, Status>> + Send>>;

/// The dialer's end of a dial that begins inside the relay's own process (a public
/// endpoint) instead of on a Dial call.
///
/// [`LocalDial::new`] gives the request stream to splice like a Dial call's; once the agent
/// has accepted, [`connect`](LocalDial::connect) turns the splice's [`ToDialer`] into a
/// [`Connection`] the relay reads and writes like any socket.
pub struct LocalDial {
    writer: PipeWriter,
}

impl std::fmt::Debug for LocalDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pipe holds bytes in flight, not state worth showing.
        f.debug_struct("LocalDial").finish_non_exhaustive()
    }
}

impl LocalDial {
    /// Starts a local dial: what it writes goes out in chunks of `settings.chunk_bytes`.
    pub fn new(settings: &TransportSettings) -> (LocalDial, FromDialer) {
        let chunk = settings.chunk_bytes.max(1);
        let (writer, reader) = pipe(settings.write_buffer.max(chunk), chunk);
        let requests = reader.map(|outbound| Ok(DialRequest::from_outbound(outbound)));
        (LocalDial { writer }, Box::pin(requests))
    }

    /// The connection, once the agent has accepted the dial: `to_dialer` is what `splice`
    /// returned for the dialer.
    pub fn connect(self, to_dialer: ToDialer, remote: RemoteName, port: u16) -> Connection {
        let inbound = to_dialer.filter_map(|message| {
            future::ready(match message {
                Ok(DialResponse {
                    message: Some(dial_response::Message::Opened(_)),
                }) => None,
                other => Some(other.and_then(DialResponse::into_inbound)),
            })
        });
        let info = ConnectionInfo::new(remote, port, None);
        Connection::new(Box::pin(inbound), self.writer, info, None)
    }
}

/// One direction of a spliced connection, and who is at either end of it.
#[derive(Clone, Copy)]
struct Direction {
    index: usize,
    /// The peer whose requests this direction reads.
    source: &'static str,
    /// The peer this direction's responses go to.
    sink: &'static str,
}

impl Direction {
    const TO_DIALER: Direction = Direction {
        index: 0,
        source: "remote",
        sink: "dialer",
    };
    const TO_AGENT: Direction = Direction {
        index: 1,
        source: "dialer",
        sink: "remote",
    };

    fn other(self) -> usize {
        1 - self.index
    }
}

/// What the two directions of one connection share.
#[derive(Default)]
struct Joint {
    state: Mutex<JointState>,
}

#[derive(Default)]
struct JointState {
    /// Which directions have sent `close_write`.
    closed: [bool; 2],
    /// Once the connection fails: the status each direction ends its call with.
    abort: Option<[Status; 2]>,
    wakers: [Option<Waker>; 2],
}

impl Joint {
    fn lock(&self) -> MutexGuard<'_, JointState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails the connection; the first failure wins.
    fn abort(&self, statuses: [Status; 2]) {
        let mut state = self.lock();
        if state.abort.is_none() {
            state.abort = Some(statuses);
        }
        state
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .for_each(Waker::wake);
    }
}

enum Stage {
    /// Forwarding the source's data.
    Forwarding,
    /// The source ended: send `close_write` next.
    Closing,
    /// `close_write` sent: wait for the other direction before ending the call.
    Waiting,
    /// Finished, with or without error.
    Done,
}

/// One direction: the source peer's requests mapped into responses for the sink peer.
struct Half<S, Out> {
    source: S,
    direction: Direction,
    chunk_limit: usize,
    pending: Bytes,
    stage: Stage,
    joint: Arc<Joint>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    _out: PhantomData<fn() -> Out>,
}

impl<S, Out> Half<S, Out> {
    fn new(
        source: S,
        direction: Direction,
        chunk_limit: usize,
        joint: Arc<Joint>,
        cut: &CancellationToken,
    ) -> Self {
        Half {
            source,
            direction,
            chunk_limit: chunk_limit.max(1),
            pending: Bytes::new(),
            stage: Stage::Forwarding,
            joint,
            cut: Box::pin(cut.clone().cancelled_owned()),
            _out: PhantomData,
        }
    }

    /// Fails the connection if the relay cut it.
    fn check_cut(&mut self, cx: &mut Context<'_>) {
        if self.cut.as_mut().poll(cx).is_ready() {
            let cut = Status::unavailable("the relay shut down");
            self.joint.abort([cut.clone(), cut]);
        }
    }

    /// Fails the connection because of this direction's source, with `to_source` for the
    /// peer at fault and `to_sink` for the other.
    fn fail(&mut self, to_sink: Status, to_source: Status) -> Status {
        let mut statuses = [to_sink.clone(), to_sink];
        statuses[self.direction.other()] = to_source;
        self.joint.abort(statuses);
        self.stage = Stage::Done;
        self.joint.lock().abort.as_ref().expect("just aborted")[self.direction.index].clone()
    }
}

impl<S, In, Out> Stream for Half<S, Out>
where
    S: Stream<Item = Result<In, Status>> + Unpin,
    In: ClientMessage,
    Out: ServerMessage,
{
    type Item = Result<Out, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let me = this.direction.index;
        if !matches!(this.stage, Stage::Done) {
            this.check_cut(cx);
        }
        loop {
            match this.stage {
                Stage::Forwarding => {
                    {
                        let mut joint = this.joint.lock();
                        if let Some(statuses) = &joint.abort {
                            let status = statuses[me].clone();
                            drop(joint);
                            this.stage = Stage::Done;
                            return Poll::Ready(Some(Err(status)));
                        }
                        joint.wakers[me] = Some(cx.waker().clone());
                    }
                    if !this.pending.is_empty() {
                        let n = this.pending.len().min(this.chunk_limit);
                        return Poll::Ready(Some(Ok(Out::data(this.pending.split_to(n)))));
                    }
                    let source = this.direction.source;
                    match ready!(this.source.poll_next_unpin(cx)) {
                        Some(Ok(message)) => match message.into_outbound() {
                            Ok(Outbound::Data(chunk)) => this.pending = chunk,
                            Ok(Outbound::Reset(reason)) => {
                                let reason: String =
                                    reason.chars().take(MAX_RESET_REASON).collect();
                                let to_sink = match reason.as_str() {
                                    "" => format!("the {source} reset the connection"),
                                    reason => {
                                        format!("the {source} reset the connection: {reason}")
                                    }
                                };
                                let to_source = Status::aborted("connection reset");
                                return Poll::Ready(Some(Err(
                                    this.fail(Status::aborted(to_sink), to_source)
                                )));
                            }
                            Err(violation) => {
                                let to_sink =
                                    Status::aborted(format!("the {source} broke the protocol"));
                                return Poll::Ready(Some(Err(this.fail(to_sink, violation))));
                            }
                        },
                        Some(Err(status)) => {
                            let to_sink = match status.code() {
                                Code::Cancelled => format!("the {source} reset the connection"),
                                // A source means the transport broke, not the peer's words.
                                _ if std::error::Error::source(&status).is_some() => format!(
                                    "the {source}'s connection broke ({})",
                                    crate::root_cause_phrase(&status)
                                ),
                                _ => format!("the {source}'s stream failed: {}", status.message()),
                            };
                            return Poll::Ready(Some(Err(
                                this.fail(Status::aborted(to_sink), status)
                            )));
                        }
                        None => this.stage = Stage::Closing,
                    }
                }
                Stage::Closing => {
                    let mut joint = this.joint.lock();
                    joint.closed[me] = true;
                    if let Some(waker) = joint.wakers[this.direction.other()].take() {
                        waker.wake();
                    }
                    this.stage = Stage::Waiting;
                    return Poll::Ready(Some(Ok(Out::close_write())));
                }
                Stage::Waiting => {
                    let mut joint = this.joint.lock();
                    if let Some(statuses) = &joint.abort {
                        let status = statuses[me].clone();
                        drop(joint);
                        this.stage = Stage::Done;
                        return Poll::Ready(Some(Err(status)));
                    }
                    if joint.closed[this.direction.other()] {
                        drop(joint);
                        this.stage = Stage::Done;
                        return Poll::Ready(None);
                    }
                    joint.wakers[me] = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Stage::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<S, Out> Drop for Half<S, Out> {
    fn drop(&mut self) {
        // Dropped before the end: the sink peer's call went away (a reset, or the relay
        // shutting down). The other direction ends its call with an error.
        if !matches!(self.stage, Stage::Done) {
            let sink = self.direction.sink;
            let gone = Status::aborted(format!("the {sink} closed the connection"));
            self.joint.abort([gone.clone(), gone]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;
    use sesame_proto::v1::accept_connection_response;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    type Sender<T> = mpsc::UnboundedSender<Result<T, Status>>;

    /// Both peers' request senders and the relay's two response streams.
    struct Spliced {
        dialer: Sender<DialRequest>,
        agent: Sender<AcceptConnectionRequest>,
        to_dialer: ToDialer,
        to_agent: ToAgent,
    }

    fn spliced(agent_chunk_limit: usize, cut: &CancellationToken) -> Spliced {
        let (dialer, from_dialer) = mpsc::unbounded_channel();
        let (agent, from_agent) = mpsc::unbounded_channel();
        let (to_dialer, to_agent) = splice(
            UnboundedReceiverStream::new(from_dialer),
            UnboundedReceiverStream::new(from_agent),
            agent_chunk_limit,
            cut,
        );
        Spliced {
            dialer,
            agent,
            to_dialer,
            to_agent,
        }
    }

    /// A splice without limits whose `opened` the dialer has already read.
    fn opened() -> Spliced {
        let mut spliced = spliced(MAX_CHUNK_BYTES, &CancellationToken::new());
        assert!(matches!(
            poll(&mut spliced.to_dialer),
            Poll::Ready(Some(Ok(DialResponse {
                message: Some(dial_response::Message::Opened(_))
            })))
        ));
        spliced
    }

    fn poll<S: Stream + Unpin>(s: &mut S) -> Poll<Option<S::Item>> {
        s.poll_next_unpin(&mut Context::from_waker(noop_waker_ref()))
    }

    fn data<M: ClientMessage>(chunk: &'static [u8]) -> Result<M, Status> {
        Ok(M::from_outbound(Outbound::Data(Bytes::from_static(chunk))))
    }

    fn data_to_agent(item: Poll<Option<Result<AcceptConnectionResponse, Status>>>) -> Bytes {
        match item {
            Poll::Ready(Some(Ok(AcceptConnectionResponse {
                message: Some(accept_connection_response::Message::Data(b)),
            }))) => b,
            other => panic!("expected data, got {other:?}"),
        }
    }

    fn error<T: std::fmt::Debug>(item: Poll<Option<Result<T, Status>>>) -> Status {
        match item {
            Poll::Ready(Some(Err(status))) => status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn bytes_flow_both_ways_and_calls_end_after_both_half_closes() {
        let Spliced {
            dialer,
            agent,
            mut to_dialer,
            mut to_agent,
        } = opened();
        dialer.send(data(b"ping")).unwrap();
        assert_eq!(data_to_agent(poll(&mut to_agent)), "ping");

        // The dialer half-closes; the agent still answers, and its call stays open.
        drop(dialer);
        assert!(matches!(
            poll(&mut to_agent),
            Poll::Ready(Some(Ok(m))) if m == AcceptConnectionResponse::close_write()
        ));
        assert!(
            poll(&mut to_agent).is_pending(),
            "waits for the other direction"
        );

        agent.send(data(b"pong")).unwrap();
        assert!(matches!(
            poll(&mut to_dialer),
            Poll::Ready(Some(Ok(m))) if m == DialResponse::data(Bytes::from_static(b"pong"))
        ));
        drop(agent);
        assert!(matches!(
            poll(&mut to_dialer),
            Poll::Ready(Some(Ok(m))) if m == DialResponse::close_write()
        ));
        assert!(
            matches!(poll(&mut to_dialer), Poll::Ready(None)),
            "both closed: OK"
        );
        assert!(matches!(poll(&mut to_agent), Poll::Ready(None)));
    }

    #[test]
    fn chunks_are_split_to_the_agents_limit_without_copying() {
        let Spliced {
            dialer,
            agent: _agent,
            to_dialer: _to_dialer,
            mut to_agent,
        } = spliced(4, &CancellationToken::new());
        let chunk = Bytes::from_static(b"0123456789");
        let message = DialRequest::from_outbound(Outbound::Data(chunk.clone()));
        dialer.send(Ok(message)).unwrap();
        let pieces: Vec<Bytes> = (0..3).map(|_| data_to_agent(poll(&mut to_agent))).collect();
        assert_eq!(pieces, ["0123", "4567", "89"]);
        assert_eq!(
            pieces[1].as_ptr(),
            chunk[4..].as_ptr(),
            "a slice, not a copy"
        );
    }

    #[test]
    fn a_reset_stream_fails_both_calls() {
        let Spliced {
            dialer,
            agent: _agent,
            mut to_dialer,
            mut to_agent,
        } = opened();
        assert!(poll(&mut to_dialer).is_pending());
        // A cancelled stream is the dialer resetting it.
        dialer.send(Err(Status::cancelled("gone"))).unwrap();
        let status = error(poll(&mut to_agent));
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "the dialer reset the connection");
        error(poll(&mut to_dialer));
        assert!(matches!(poll(&mut to_agent), Poll::Ready(None)));
    }

    #[test]
    fn a_reset_message_is_passed_on_with_its_reason() {
        let Spliced {
            dialer: _dialer,
            agent,
            mut to_dialer,
            mut to_agent,
        } = opened();
        let reset = Outbound::Reset("localhost:80: connection reset".into());
        agent
            .send(Ok(AcceptConnectionRequest::from_outbound(reset)))
            .unwrap();
        let status = error(poll(&mut to_dialer));
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(
            status.message(),
            "the remote reset the connection: localhost:80: connection reset"
        );
        error(poll(&mut to_agent));
    }

    #[test]
    fn a_protocol_violation_is_reported_to_the_offender() {
        let Spliced {
            dialer,
            agent: _agent,
            mut to_dialer,
            mut to_agent,
        } = opened();
        dialer.send(Ok(DialRequest { message: None })).unwrap();
        let to_innocent = error(poll(&mut to_agent));
        assert_eq!(to_innocent.message(), "the dialer broke the protocol");
        let to_offender = error(poll(&mut to_dialer));
        assert_eq!(to_offender.code(), Code::FailedPrecondition);
        assert!(
            to_offender.message().contains("unexpected empty message"),
            "{to_offender:?}"
        );
    }

    #[test]
    fn a_dropped_call_fails_the_other_even_after_its_half_close() {
        let Spliced {
            dialer,
            agent: _agent,
            to_dialer,
            mut to_agent,
        } = opened();
        drop(dialer);
        assert!(
            matches!(poll(&mut to_agent), Poll::Ready(Some(Ok(_)))),
            "close_write"
        );
        assert!(poll(&mut to_agent).is_pending());
        drop(to_dialer);
        let status = error(poll(&mut to_agent));
        assert_eq!(status.message(), "the dialer closed the connection");
    }

    #[test]
    fn the_relay_can_cut_every_connection() {
        let cut = CancellationToken::new();
        let Spliced {
            dialer: _dialer,
            agent: _agent,
            mut to_dialer,
            mut to_agent,
        } = spliced(MAX_CHUNK_BYTES, &cut);
        let _opened = poll(&mut to_dialer);
        assert!(poll(&mut to_dialer).is_pending());
        cut.cancel();
        let status = error(poll(&mut to_dialer));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "the relay shut down");
        assert_eq!(error(poll(&mut to_agent)).code(), Code::Unavailable);
    }
}
