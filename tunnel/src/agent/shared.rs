//! [`Shared`]: the state a session's handles and its task share, and what either does to it:
//! exposing and withdrawing ports, installing a new link, accepting or refusing a dial,
//! answering who waits for a port, and ending the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, ConnectionTicket, DialFailure,
    OpenSessionResponse, accept_connection_request, open_session_request,
};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, warn};

use super::control::{Action, Answer, Control, Dial, ExposeOutcome, Route};
use super::link::{Link, Registration};
use super::observe::Observer;
use super::publish::{Publish, Published};
use super::reconnect::Reconnect;
use crate::connection::{ConnectionInfo, inbound_from_call, outbound};
use crate::wire::{self, ACCEPT_CONNECTION_PATH};
use crate::{Connection, Error, SessionId};

/// The exposed ports, and the link they are currently exposed on. One lock, so that a port
/// exposed while the agent reconnects is either seen by the new link or sent on it.
#[derive(Debug)]
struct Routing {
    link: Option<Arc<Link>>,
    control: Control,
}

/// The state a session's handles and its tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) registration: Registration,
    /// How to reconnect; `None` to end the session when its link is lost.
    pub(super) reconnect: Option<Reconnect>,
    routing: Mutex<Routing>,
    /// Who waits for the relay to confirm a port.
    acks: Mutex<HashMap<u16, Vec<oneshot::Sender<ExposeOutcome>>>>,
    pub(super) observer: Observer,
    /// Why the session ended, once it has.
    closed: watch::Sender<Option<String>>,
    /// Cancelled to end the session from the agent's side.
    pub(super) shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// A session of `registration` with nothing exposed and no link yet.
    pub(super) fn new(registration: Registration, reconnect: Option<Reconnect>) -> Self {
        let control = Control::new(registration.name.clone());
        Shared {
            registration,
            reconnect,
            routing: Mutex::new(Routing {
                link: None,
                control,
            }),
            acks: Mutex::default(),
            observer: Observer::new(),
            closed: watch::channel(None).0,
            shutdown: CancellationToken::new(),
        }
    }

    /// The relay's id of the current link; `None` while the agent is reconnecting.
    pub(super) fn session_id(&self) -> Option<SessionId> {
        lock(&self.routing)
            .link
            .as_ref()
            .map(|link| link.id.clone())
    }

    /// Where the relay currently publishes `port`.
    pub(super) fn published(&self, port: u16) -> Published {
        lock(&self.routing).control.published(port)
    }

    pub(super) fn close_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "the session is closing".to_owned())
    }

    /// Waits until the session ends for good; why it did.
    pub(super) async fn closed(&self) -> String {
        let mut closed = self.closed.subscribe();
        closed
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default())
            .unwrap_or_else(|_| "the session task ended".to_owned())
    }

    /// Exposes `port`, served by `route`, and waits for the relay to confirm it.
    pub(super) async fn expose(
        &self,
        port: u16,
        route: Route,
        publish: Publish,
    ) -> Result<(), Error> {
        if port == 0 {
            return Err(Error::Status(Status::invalid_argument(
                "port 0 cannot be exposed",
            )));
        }
        let (ack, acked) = oneshot::channel();
        {
            let routing = &mut *lock(&self.routing);
            if self.closed.borrow().is_some() {
                return Err(Error::SessionClosed {
                    reason: self.close_reason(),
                });
            }
            routing.control.expose(port, route, publish.clone())?;
            // While the agent reconnects there is no link: the new one exposes the port.
            if let Some(link) = &routing.link {
                link.expose(port, &publish);
            }
            lock(&self.acks).entry(port).or_default().push(ack);
        }
        let timeout = self.registration.settings.handshake_timeout;
        let outcome = match tokio::time::timeout(timeout, acked).await {
            Ok(Ok(Ok(_))) => return Ok(()),
            Ok(Ok(Err(refused))) => {
                // The relay did not expose the port: forget it without withdrawing it.
                lock(&self.routing).control.withdraw(port);
                return Err(refused);
            }
            Ok(Err(_)) => Error::SessionClosed {
                reason: self.close_reason(),
            },
            Err(_) => Error::Timeout {
                what: "exposing a port",
                after: timeout,
            },
        };
        // The relay may yet expose the port: take it back.
        self.unexpose(port);
        Err(outcome)
    }

    pub(super) fn unexpose(&self, port: u16) {
        let routing = &mut *lock(&self.routing);
        if routing.control.withdraw(port)
            && let Some(link) = &routing.link
        {
            link.withdraw(port);
        }
    }

    /// Makes `link` the session's link and exposes every port on it. Returns what confirms
    /// them.
    pub(super) fn install(&self, link: &Arc<Link>) -> Vec<(u16, oneshot::Receiver<ExposeOutcome>)> {
        let mut routing = lock(&self.routing);
        routing.link = Some(link.clone());
        let mut acks = lock(&self.acks);
        routing
            .control
            .exposed()
            .map(|(port, publish)| {
                let (ack, acked) = oneshot::channel();
                acks.entry(port).or_default().push(ack);
                link.expose(port, publish);
                (port, acked)
            })
            .collect()
    }

    /// Forgets `link` if it is still the session's link.
    pub(super) fn uninstall(&self, link: &Arc<Link>) {
        let mut routing = lock(&self.routing);
        if routing
            .link
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, link))
        {
            routing.link = None;
        }
    }

    /// What the relay's `message` calls for, decided under the lock; the caller carries the
    /// actions out once it is released.
    pub(super) fn on_message(&self, message: OpenSessionResponse) -> Result<Vec<Action>, Error> {
        lock(&self.routing).control.on_message(message)
    }

    /// Accepts a dial: opens its data stream on the link the notice came on, presenting the
    /// ticket. The call runs in its own task, so the connection can be written to before the
    /// relay's answer arrives.
    pub(super) fn accept(&self, link: &Link, dial: Dial) -> Connection {
        let Dial { ticket, port, peer } = dial;
        let opening = AcceptConnectionRequest {
            message: Some(accept_connection_request::Message::Ticket(
                ConnectionTicket {
                    session_id: link.id.to_string(),
                    ticket: ticket.as_bytes().to_vec().into(),
                },
            )),
        };
        let (writer, requests) = outbound(opening, &self.registration.settings, link.chunk_limit);
        let channel = link.data_channel.clone();
        let call = tokio::spawn(wire::call::<_, AcceptConnectionResponse, _>(
            channel,
            ACCEPT_CONNECTION_PATH,
            requests,
        ));
        let info = ConnectionInfo::new(self.registration.name.clone(), port, Some(peer.clone()));
        let meter = self.observer.opened(port, peer);
        Connection::new(inbound_from_call(call), writer, info, Some(meter))
    }

    /// Tells the relay that a dial cannot be served, and why.
    pub(super) fn refuse(&self, link: &Link, dial: Dial, error: Error) {
        let Dial { ticket, port, peer } = dial;
        debug!(port, %peer, %error, "refusing a dial");
        let failure = DialFailure {
            ticket: ticket.as_bytes().to_vec().into(),
            status: Some(error.to_rpc_status()),
        };
        self.observer.dial_failed(port, peer, error.to_string());
        link.send_control(open_session_request::Message::DialFailure(failure));
    }

    /// Answers whoever waits for the relay's word on `port`.
    pub(super) fn answer(&self, port: u16, answer: &Answer) {
        let waiting = lock(&self.acks).remove(&port).unwrap_or_default();
        if waiting.is_empty() {
            // Exposed twice while reconnecting: the first answer served both.
            debug!(port, "the relay answered for a port nobody waits for");
        }
        let mut anyone = false;
        for ack in waiting {
            anyone |= ack.send(answer.outcome()).is_ok();
        }
        if !anyone && let Answer::Refused(status) = answer {
            let error = Error::from_status(status.clone());
            warn!(port, %error, "the relay refused a port nobody waits for");
        }
    }

    /// Marks the session closed for good: listeners end, pending exposes fail.
    pub(super) fn close(&self, reason: String) {
        {
            let mut routing = lock(&self.routing);
            routing.control.clear();
            if let Some(link) = routing.link.take() {
                link.end.cancel();
            }
        }
        lock(&self.acks).clear();
        self.closed.send_replace(Some(reason));
    }
}
