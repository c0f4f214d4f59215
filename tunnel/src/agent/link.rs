//! [`Link`]: one registration of an agent with a relay, and [`Registration`], what it takes
//! to open one: the handshake, and what the relay's welcome settles.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sesame_proto::v1::tunnel_service_client::TunnelServiceClient;
use sesame_proto::v1::{
    ExposePort, OpenSessionRequest, OpenSessionResponse, UnexposePort, open_session_request,
    open_session_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::debug;

use super::publish::Publish;
use crate::handshake::{accept_welcome, hello};
use crate::settings::MAX_CHUNK_BYTES;
use crate::{AgentKey, Error, RelayAccess, RelayChannel, RemoteName, SessionId, TransportSettings};

/// How many control messages may wait to be sent to the relay.
const CONTROL_QUEUE: usize = 256;

/// The shortest heartbeat interval an agent keeps, whatever the relay asks.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// How long an agent waits for a target when the relay states no dial timeout.
const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a target: a little less than the relay waits for the agent, so the
/// dialer hears "target refused" rather than a timeout.
fn target_timeout(dial_timeout: Option<Duration>) -> Duration {
    dial_timeout.map_or(DEFAULT_TARGET_TIMEOUT, |relay| relay.mul_f32(0.9))
}

/// One registration with the relay: a control stream and what the relay said in its welcome.
/// A session has one link at a time; a reconnect makes a new one. Connections accepted on a
/// link keep using its data channel, so they outlive a link lost only at the protocol level.
#[derive(Debug)]
pub(super) struct Link {
    /// The relay's id of this registration.
    pub(super) id: SessionId,
    /// The channel for this link's data streams.
    pub(super) data_channel: RelayChannel,
    control: mpsc::Sender<OpenSessionRequest>,
    /// The largest data payload the relay accepts.
    pub(super) chunk_limit: usize,
    target_timeout: Duration,
    /// How often to send a heartbeat.
    pub(super) heartbeat_interval: Duration,
    /// Cancelled to end this link's control stream.
    pub(super) end: CancellationToken,
}

impl Link {
    /// How long to wait for a forward's target.
    pub(super) fn target_timeout(&self) -> Duration {
        self.target_timeout
    }

    /// Queues a control message for the relay without waiting; if the queue is full, a task
    /// waits for room, so the message is never dropped while the link lives.
    pub(super) fn send_control(&self, message: open_session_request::Message) {
        let message = OpenSessionRequest {
            message: Some(message),
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = self.control.try_send(message) {
            let control = self.control.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { control.send(message).await });
            }
        }
    }

    /// Asks the relay to expose `port`, published as `publish` says.
    pub(super) fn expose(&self, port: u16, publish: &Publish) {
        self.send_control(open_session_request::Message::ExposePort(ExposePort {
            port: Some(publish.to_proto(port)),
        }));
    }

    /// Tells the relay that `port` is no longer exposed.
    pub(super) fn withdraw(&self, port: u16) {
        self.send_control(open_session_request::Message::UnexposePort(UnexposePort {
            port: u32::from(port),
        }));
    }
}

/// Who an agent is and how it reaches its relay: all it takes to open a link, again and again.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) name: RemoteName,
    pub(super) relay: RelayAccess,
    /// A channel given by the user, reused by every link; `None` to dial `relay` each time.
    pub(super) channel: Option<RelayChannel>,
    /// Drawn once per session, presented by every link, so a new link takes the name over.
    pub(super) agent_key: AgentKey,
    pub(super) agent_version: String,
    pub(super) settings: TransportSettings,
}

impl Registration {
    /// Opens a link: connects (unless a channel was given), says hello, and waits for the
    /// welcome. Cancelling `parent` ends the link.
    ///
    /// The control stream and the data streams share one HTTP/2 connection, so the relay
    /// serves all of an agent's calls on one thread. Its connection window is as large as
    /// HTTP/2 allows, so streams that stall never hold up a dial notice.
    pub(super) async fn open(
        &self,
        parent: &CancellationToken,
    ) -> Result<(Arc<Link>, Streaming<OpenSessionResponse>), Error> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => self.relay.connect(&self.settings).await?,
        };
        let (control_channel, data_channel) = (channel.clone(), channel);
        let client = TunnelServiceClient::new(control_channel);
        let (control, queue) = mpsc::channel(CONTROL_QUEUE);
        let opening = hello(
            &self.name,
            &self.agent_version,
            MAX_CHUNK_BYTES,
            &self.agent_key,
        );
        control
            .try_send(OpenSessionRequest {
                message: Some(open_session_request::Message::Hello(opening)),
            })
            .expect("a new queue has room");
        // Ending the link ends the control stream at once, whoever still holds a sender.
        let end = parent.child_token();
        let requests = ReceiverStream::new(queue).take_until(end.clone().cancelled_owned());

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
        // On failure the call is dropped, and its control stream with it.
        let timeout = self.settings.handshake_timeout;
        let (welcome, responses) =
            tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| Error::Timeout {
                    what: "the session handshake",
                    after: timeout,
                })??;
        let own_bound = self.settings.dead_peer_timeout() / 3;
        let link = Link {
            id: welcome.session_id,
            data_channel,
            control,
            chunk_limit: welcome.chunk_limit,
            target_timeout: target_timeout(welcome.dial_timeout),
            heartbeat_interval: welcome
                .heartbeat_interval
                .map_or(own_bound, |relay| relay.min(own_bound))
                .max(MIN_HEARTBEAT_INTERVAL),
            end,
        };
        debug!(id = %link.id, "registered with the relay");
        Ok((Arc::new(link), responses))
    }
}
