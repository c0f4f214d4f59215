//! `DialerService`: opening connections to the ports remotes expose.

use std::sync::Arc;

use sesame_proto::v1::dialer_service_server::DialerService;
use sesame_proto::v1::{DialNotice, DialRequest, dial_request, open_session_response};
use sesame_tunnel::splice::ToDialer;
use sesame_tunnel::{Error, RemoteName, Ticket, format_duration};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::auth::Action;
use crate::state::{PendingDial, State};
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
        let state = &self.state;
        let peer = peer_of(&request);
        let metadata = request.metadata().clone();
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
        state.auth.authorize(&metadata, Action::Dial(&name))?;

        let not_found = || Error::RemoteNotFound {
            name: name.to_string(),
        };
        let record = state.registry.get(&name).await?.ok_or_else(not_found)?;
        if !record.ports.contains(&port) {
            let name = name.to_string();
            return Err(Error::PortNotExposed { name, port }.into());
        }
        // The registry may know a session this relay does not hold (another relay's, or one
        // that just ended): either way it cannot be dialed from here.
        let link = state.session(&record.session).ok_or_else(not_found)?;

        let ticket = Ticket::generate();
        let (reply, answer) = oneshot::channel();
        let dial = PendingDial {
            session: record.session.clone(),
            from_dialer: requests,
            reply,
        };
        let gone = || Status::unavailable(format!("remote {name:?} went away"));
        let _parked = state.park_dial(ticket.clone(), dial).ok_or_else(gone)?;
        let notice = DialNotice {
            ticket: ticket.as_bytes().to_vec().into(),
            port: u32::from(port),
            dialer: peer.clone(),
        };
        let notice = sesame_proto::v1::OpenSessionResponse {
            message: Some(open_session_response::Message::DialNotice(notice)),
        };
        link.control
            .try_send(Ok(notice))
            .map_err(|error| match error {
                TrySendError::Full(_) => {
                    Status::unavailable(format!("remote {name:?} is not keeping up with dials"))
                }
                TrySendError::Closed(_) => gone(),
            })?;
        debug!(remote = %name, port, %peer, "dial sent to the agent");

        let timeout = state.config.dial_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(to_dialer))) => Ok(Response::new(to_dialer)),
            Ok(Ok(Err(refusal))) => Err(refusal),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "remote {name:?} went away before answering"
            ))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "remote {name:?} did not answer within {}",
                format_duration(timeout)
            ))),
        }
    }
}
