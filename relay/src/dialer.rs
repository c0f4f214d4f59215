//! `DialerService`: opening connections to the ports remotes expose.

use std::sync::Arc;

use sesame_proto::v1::dialer_service_server::DialerService;
use sesame_proto::v1::{DialNotice, DialRequest, dial_request, open_session_response};
use sesame_tunnel::splice::ToDialer;
use sesame_tunnel::{Error, RemoteName, Ticket, format_duration};
use tokio::sync::oneshot;
use tokio::time::Instant;
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
        let quoted = format!("{:?}", name.to_string());
        let gone = || Status::unavailable(format!("remote {quoted} went away"));
        let _parked = state.park_dial(ticket.clone(), dial).ok_or_else(gone)?;
        let notice = DialNotice {
            ticket: ticket.as_bytes().to_vec().into(),
            port: u32::from(port),
            dialer: peer.clone(),
        };
        let notice = sesame_proto::v1::OpenSessionResponse {
            message: Some(open_session_response::Message::DialNotice(notice)),
        };
        // A busy agent's notices queue up; the dial waits for room, within its timeout, so a
        // burst of dials slows down rather than fails.
        let timeout = state.config.dial_timeout;
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
            Ok(Ok(Ok(to_dialer))) => Ok(Response::new(to_dialer)),
            Ok(Ok(Err(refusal))) => Err(refusal),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "remote {quoted} went away before answering"
            ))),
            Err(_) => Err(late()),
        }
    }
}
