//! `DialerService`: opening connections to the ports remotes expose.

use std::sync::Arc;

use futures_util::Stream;
use sesame_proto::v1::dialer_service_server::DialerService;
use sesame_proto::v1::{DialRequest, dial_request};
use sesame_tunnel::splice::ToDialer;
use sesame_tunnel::{Error, RemoteName};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Action;
use crate::dial::dial;
use crate::state::State;
use crate::{first_message, peer_of, port_number};

/// Serves dialers.
pub(crate) struct Dialer {
    pub(crate) state: Arc<State>,
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
        let state = &self.state;
        let peer = peer_of(&request);
        let caller = state.authenticate(&request)?;
        let mut requests = request.into_inner();
        let target =
            match first_message(&mut requests, state.config.handshake_timeout, "target").await? {
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
        let ended = caller.ended().cloned();
        let to_dialer = dial(state, &name, port, peer, Box::pin(requests), ended).await?;
        Ok(Response::new(to_dialer))
    }
}
