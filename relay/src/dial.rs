//! Dialing a port of a remote: the one path that Dial calls and the public endpoints share.
//!
//! A dial is parked under a fresh ticket, announced to the agent on its control stream, and
//! answered when the agent opens its data stream with that ticket (or refuses, or does not
//! answer in time).

use std::sync::Arc;

use sesame_proto::v1::{DialNotice, OpenSessionResponse, open_session_response};
use sesame_tunnel::splice::{FromDialer, LocalDial, ToDialer};
use sesame_tunnel::{Connection, Error, RemoteName, Ticket, format_duration};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::debug;

use crate::state::{PendingDial, State};

/// Dials `port` of `name` for `peer` (an address, for the agent's logs), carrying
/// `from_dialer`; returns the stream of what the remote sends, beginning with `opened`.
/// Cancelling `dialer_ended` (the dialer's token was revoked) cuts the connection.
pub(crate) async fn dial(
    state: &Arc<State>,
    name: &RemoteName,
    port: u16,
    peer: String,
    from_dialer: FromDialer,
    dialer_ended: Option<CancellationToken>,
) -> Result<ToDialer, Status> {
    let not_found = || Error::RemoteNotFound {
        name: name.to_string(),
    };
    let record = state.registry.get(name).await?.ok_or_else(not_found)?;
    if !record.ports.contains_key(&port) {
        let name = name.to_string();
        return Err(Error::PortNotExposed { name, port }.into());
    }
    // The registry may know a session this relay does not hold (another relay's, or one
    // that just ended): either way it cannot be dialed from here.
    let link = state.session(&record.session).ok_or_else(not_found)?;
    let quoted = format!("{:?}", name.to_string());
    let limit = state.config.max_connections_per_remote;
    let slot = link.take_slot(limit).ok_or_else(|| {
        Status::resource_exhausted(format!(
            "remote {quoted} already carries {limit} connections, the relay's limit per remote"
        ))
    })?;

    let ticket = Ticket::generate();
    let (reply, answer) = oneshot::channel();
    let dial = PendingDial {
        session: record.session.clone(),
        slot,
        dialer_ended,
        from_dialer,
        reply,
    };
    let gone = || Status::unavailable(format!("remote {quoted} went away"));
    let _parked = state.park_dial(ticket.clone(), dial).ok_or_else(gone)?;
    let notice = DialNotice {
        ticket: ticket.as_bytes().to_vec().into(),
        port: u32::from(port),
        dialer: peer.clone(),
    };
    let notice = OpenSessionResponse {
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
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Status::unavailable(format!(
            "remote {quoted} went away before answering"
        ))),
        Err(_) => Err(late()),
    }
}

/// Dials from inside the relay, for a public endpoint: returns the connection to read and
/// write once the agent has accepted it.
pub(crate) async fn dial_local(
    state: &Arc<State>,
    name: &RemoteName,
    port: u16,
    peer: String,
) -> Result<Connection, Status> {
    let (local, from_dialer) = LocalDial::new(&state.config.transport);
    let to_dialer = dial(state, name, port, peer, from_dialer, None).await?;
    Ok(local.connect(to_dialer, name.clone(), port))
}
