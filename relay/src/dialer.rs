//! `DialerService`: opening connections to the ports remotes expose.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use sesame_proto::v1::dialer_service_server::DialerService;
use sesame_proto::v1::{DialRequest, dial_request};
use sesame_tunnel::splice::ToDialer;
use sesame_tunnel::{Error, RemoteName};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, Gate};
use crate::sessions::{Dial, Entrance, Sessions};
use crate::{first_message, peer_of, port_number};

/// Serves dialers.
pub(crate) struct Dialer {
    pub(crate) gate: Arc<Gate>,
    pub(crate) sessions: Arc<dyn Sessions>,
    /// How long a dial may take to send its target.
    pub(crate) handshake_timeout: Duration,
}

#[tonic::async_trait]
impl DialerService for Dialer {
    type DialStream = ToDialer;

    async fn dial(
        &self,
        request: Request<Streaming<DialRequest>>,
    ) -> Result<Response<ToDialer>, Status> {
        self.answer_dial(request).await
    }
}

impl Dialer {
    /// Answers a Dial call, whichever framing brought its messages.
    pub(crate) async fn answer_dial<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<ToDialer>, Status>
    where
        S: Stream<Item = Result<DialRequest, Status>> + Send + Unpin + 'static,
    {
        let peer = peer_of(&request);
        let caller = self.gate.authenticate(&request)?;
        let mut requests = request.into_inner();
        let target = match first_message(&mut requests, self.handshake_timeout, "target").await? {
            DialRequest {
                message: Some(dial_request::Message::Target(target)),
            } => target,
            _ => return Err(Error::protocol("a dial must begin with its target").into()),
        };
        let name = RemoteName::from_resource_name(&target.remote)?;
        let port = port_number(target.port).ok_or_else(|| {
            Status::invalid_argument(format!("port {} is not a valid port", target.port))
        })?;
        caller.check(Action::Dial(&name))?;
        let dial = Dial {
            name,
            port,
            peer,
            from_dialer: Box::pin(requests),
            dialer_ended: caller.ended().cloned(),
            entrance: Entrance::Dial,
        };
        let to_dialer = self.sessions.dial(dial).await?;
        Ok(Response::new(to_dialer))
    }
}
