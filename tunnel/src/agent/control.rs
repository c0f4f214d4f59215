//! The agent's side of the control stream as plain functions over a state value, the way
//! quinn-proto keeps QUIC apart from sockets: [`Control`] holds the exposed ports, what
//! serves each and where the relay published it, and [`Control::on_message`] turns each of
//! the relay's messages into [`Action`]s. Nothing here performs I/O, spawns or waits; the
//! session's task carries the actions out (see `dispatch`). So the protocol can be tested
//! message by message, without a relay, a socket or a runtime.

use std::collections::HashMap;
use std::time::Duration;

use sesame_proto::v1::{DialNotice, OpenSessionResponse, open_session_response};
use tokio::sync::mpsc;
use tokio::sync::mpsc::OwnedPermit;
use tonic::Status;
use tracing::info;

use super::observe::Event;
use super::publish::{Publish, Published};
use super::target::Target;
use crate::{Connection, Error, RemoteName, Ticket, format_duration, status_from_rpc};

/// What serves an exposed port.
#[derive(Clone, Debug)]
pub(super) enum Route {
    /// A listener, through its backlog.
    Listener(mpsc::Sender<Connection>),
    /// A forward to a TCP target.
    Forward(Target),
}

/// An exposed port: what serves it, how it is to be published, and where it is.
#[derive(Debug)]
struct Exposure {
    route: Route,
    publish: Publish,
    published: Published,
}

/// One dial the relay announced.
#[derive(Debug)]
pub(super) struct Dial {
    /// What the agent presents to take the dial.
    pub(super) ticket: Ticket,
    /// The exposed port dialed.
    pub(super) port: u16,
    /// Who dialed, as the relay saw it.
    pub(super) peer: String,
}

/// What the relay answered to an ExposePort.
#[derive(Clone, Debug)]
pub(super) enum Answer {
    /// The port is exposed, published here.
    Exposed(Published),
    /// The relay refused the port, with this status.
    Refused(Status),
}

/// What a waiter for a port learns.
pub(super) type ExposeOutcome = Result<Published, Error>;

impl Answer {
    /// The outcome for one waiter: each gets an error of its own, as errors are not `Clone`.
    pub(super) fn outcome(&self) -> ExposeOutcome {
        match self {
            Answer::Exposed(published) => Ok(published.clone()),
            Answer::Refused(status) => Err(Error::from_status(status.clone())),
        }
    }
}

/// What the session's task is to do about a control message.
#[derive(Debug)]
pub(super) enum Action {
    /// Open the dial's data stream and hand the connection to the listener, whose backlog has
    /// room for it.
    Accept {
        dial: Dial,
        /// A place in the listener's backlog, taken already.
        listener: OwnedPermit<Connection>,
    },
    /// Connect to the target and, once connected, accept the dial and join the two.
    Forward { dial: Dial, target: Target },
    /// Tell the relay that the dial cannot be served, and why.
    Refuse { dial: Dial, error: Error },
    /// Tell whoever waits for the relay's word on `port`.
    Answer { port: u16, answer: Answer },
    /// Report an event to the session's subscribers.
    Emit(Event),
}

/// The exposed ports of one session, and the rules for what the relay's messages do to them.
#[derive(Debug)]
pub(super) struct Control {
    /// The session's remote, named in refusals.
    remote: RemoteName,
    ports: HashMap<u16, Exposure>,
}

impl Control {
    /// No port exposed yet.
    pub(super) fn new(remote: RemoteName) -> Self {
        Control {
            remote,
            ports: HashMap::new(),
        }
    }

    /// Records `port` as exposed, served by `route`, not published anywhere yet. Fails if the
    /// session exposes the port already.
    pub(super) fn expose(
        &mut self,
        port: u16,
        route: Route,
        publish: Publish,
    ) -> Result<(), Error> {
        if self.ports.contains_key(&port) {
            return Err(Error::PortInUse { port });
        }
        let exposure = Exposure {
            route,
            publish,
            published: Published::default(),
        };
        self.ports.insert(port, exposure);
        Ok(())
    }

    /// Forgets `port`; whether it was exposed.
    pub(super) fn withdraw(&mut self, port: u16) -> bool {
        self.ports.remove(&port).is_some()
    }

    /// Forgets every port, as the session ends.
    pub(super) fn clear(&mut self) {
        self.ports.clear();
    }

    /// Where the relay last said it published `port`; empty if the port is not exposed.
    pub(super) fn published(&self, port: u16) -> Published {
        self.ports
            .get(&port)
            .map(|exposure| exposure.published.clone())
            .unwrap_or_default()
    }

    /// The exposed ports and how each is to be published, to expose them again on a new link.
    pub(super) fn exposed(&self) -> impl Iterator<Item = (u16, &Publish)> {
        self.ports
            .iter()
            .map(|(&port, exposure)| (port, &exposure.publish))
    }

    /// What the relay's `message` calls for. An error is a protocol violation that ends the
    /// link; the state is then as it was.
    pub(super) fn on_message(
        &mut self,
        message: OpenSessionResponse,
    ) -> Result<Vec<Action>, Error> {
        use open_session_response::Message;
        Ok(match message.message {
            Some(Message::DialNotice(notice)) => vec![self.on_dial(notice)?],
            Some(Message::PortExposed(exposed)) => {
                let exposed = exposed.port.unwrap_or_default();
                let published = Published::from_proto(&exposed);
                let port = port_number(exposed.port, "the relay confirmed a port above 65535")?;
                let mut actions = Vec::with_capacity(2);
                if let Some(exposure) = self.ports.get_mut(&port)
                    && exposure.published != published
                {
                    let before = std::mem::replace(&mut exposure.published, published.clone());
                    // The first confirmation publishes the port; a later one that differs
                    // moved it (a TCP port taken while the agent reconnected).
                    if !before.is_empty() {
                        info!(port, %published, "the relay published the port elsewhere");
                        let published = published.clone();
                        actions.push(Action::Emit(Event::Republished { port, published }));
                    }
                }
                let answer = Answer::Exposed(published);
                actions.push(Action::Answer { port, answer });
                actions
            }
            Some(Message::ExposeFailure(failure)) => {
                let port = port_number(failure.port, "the relay refused a port above 65535")?;
                let status = status_from_rpc(failure.status.unwrap_or_default());
                let answer = Answer::Refused(status);
                vec![Action::Answer { port, answer }]
            }
            Some(Message::Drain(drain)) => {
                let grace = drain.grace_period.and_then(|d| Duration::try_from(d).ok());
                match grace {
                    Some(grace) => info!(grace = %format_duration(grace), "the relay is draining"),
                    None => info!("the relay is draining"),
                }
                vec![Action::Emit(Event::Draining { grace })]
            }
            Some(Message::Heartbeat(_)) => Vec::new(),
            Some(Message::Welcome(_)) => return Err(Error::protocol("a second welcome")),
            None => return Err(Error::protocol("an empty control message")),
        })
    }

    /// Routes a dial to what serves its port, or refuses it.
    fn on_dial(&self, notice: DialNotice) -> Result<Action, Error> {
        let ticket = Ticket::from_bytes(&notice.ticket)
            .ok_or_else(|| Error::protocol("a dial notice carried a malformed ticket"))?;
        let port = port_number(notice.port, "a dial notice named a port above 65535")?;
        let dial = Dial {
            ticket,
            port,
            peer: notice.dialer,
        };
        let route = self.ports.get(&port).map(|exposure| &exposure.route);
        Ok(match route {
            None => {
                let name = self.remote.to_string();
                let error = Error::PortNotExposed { name, port };
                Action::Refuse { dial, error }
            }
            // Taking the place now, rather than when the connection exists, lets a full
            // backlog refuse the dial before anything is opened for it.
            Some(Route::Listener(sender)) => match sender.clone().try_reserve_owned() {
                Ok(listener) => Action::Accept { dial, listener },
                Err(_) => {
                    let busy = format!("port {port}'s listener is not taking connections");
                    let error = Error::Status(Status::unavailable(busy));
                    Action::Refuse { dial, error }
                }
            },
            Some(Route::Forward(target)) => Action::Forward {
                dial,
                target: target.clone(),
            },
        })
    }
}

/// A port number from the relay; `violation` says what a number above 65535 breaks.
fn port_number(port: u32, violation: &'static str) -> Result<u16, Error> {
    u16::try_from(port).map_err(|_| Error::protocol(violation))
}

#[cfg(test)]
mod tests {
    use sesame_proto::v1::{
        Drain, ExposeFailure, ExposedPort, Heartbeat, PortExposed, TcpEndpoint, Welcome,
    };
    use tonic::Code;

    use super::*;

    fn control() -> Control {
        Control::new(RemoteName::new("device-42").unwrap())
    }

    fn message(message: open_session_response::Message) -> OpenSessionResponse {
        OpenSessionResponse {
            message: Some(message),
        }
    }

    fn dial_notice(port: u32, ticket: &[u8]) -> OpenSessionResponse {
        message(open_session_response::Message::DialNotice(DialNotice {
            ticket: ticket.to_vec().into(),
            port,
            dialer: "198.51.100.7:40000".to_owned(),
        }))
    }

    fn dial(port: u32) -> OpenSessionResponse {
        dial_notice(port, Ticket::generate().as_bytes())
    }

    fn port_exposed(port: u32, tcp_address: &str) -> OpenSessionResponse {
        let tcp = (!tcp_address.is_empty()).then(|| TcpEndpoint {
            address: tcp_address.to_owned(),
            ..Default::default()
        });
        message(open_session_response::Message::PortExposed(PortExposed {
            port: Some(ExposedPort {
                port,
                tcp,
                ..Default::default()
            }),
        }))
    }

    fn published_at(tcp_address: &str) -> Published {
        Published::from_proto(&ExposedPort {
            tcp: Some(TcpEndpoint {
                address: tcp_address.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn protocol_reason(outcome: Result<Vec<Action>, Error>) -> String {
        match outcome {
            Err(Error::Protocol { reason }) => reason,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn a_dial_for_an_unexposed_port_is_refused_as_not_exposed() {
        let mut control = control();
        let actions = control.on_message(dial(8080)).unwrap();
        match &actions[..] {
            [
                Action::Refuse {
                    dial,
                    error: Error::PortNotExposed { name, port },
                },
            ] => {
                assert_eq!((name.as_str(), *port), ("device-42", 8080));
                assert_eq!(dial.port, 8080);
                assert_eq!(dial.peer, "198.51.100.7:40000");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_dial_reaches_what_serves_its_port() {
        let mut control = control();
        let ticket = Ticket::generate();
        let target = Target::local(5432);
        control
            .expose(22, Route::Forward(target.clone()), Publish::none())
            .unwrap();
        let (sender, _incoming) = mpsc::channel(1);
        control
            .expose(80, Route::Listener(sender), Publish::none())
            .unwrap();

        let actions = control
            .on_message(dial_notice(22, ticket.as_bytes()))
            .unwrap();
        match &actions[..] {
            [Action::Forward { dial, target: to }] => {
                assert_eq!(to, &target);
                assert_eq!((&dial.ticket, dial.port), (&ticket, 22));
            }
            other => panic!("unexpected {other:?}"),
        }
        let actions = control.on_message(dial(80)).unwrap();
        assert!(
            matches!(&actions[..], [Action::Accept { dial, .. }] if dial.port == 80),
            "{actions:?}"
        );
    }

    #[test]
    fn a_dial_for_a_listener_with_a_full_backlog_is_refused_as_unavailable() {
        let mut control = control();
        let (sender, _incoming) = mpsc::channel(1);
        control
            .expose(80, Route::Listener(sender), Publish::none())
            .unwrap();
        // The first dial takes the only place; it is still held by its action.
        let first = control.on_message(dial(80)).unwrap();
        assert!(matches!(&first[..], [Action::Accept { .. }]), "{first:?}");
        let second = control.on_message(dial(80)).unwrap();
        match &second[..] {
            [Action::Refuse { error, .. }] => assert_eq!(error.code(), Code::Unavailable),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_dial_notices_break_the_protocol() {
        let mut control = control();
        let reason = protocol_reason(control.on_message(dial_notice(80, b"short")));
        assert!(reason.contains("malformed ticket"), "{reason}");
        let reason = protocol_reason(control.on_message(dial(65_536)));
        assert!(reason.contains("above 65535"), "{reason}");
    }

    #[test]
    fn a_port_above_65535_in_any_answer_breaks_the_protocol() {
        let mut control = control();
        let reason = protocol_reason(control.on_message(port_exposed(70_000, "")));
        assert!(reason.contains("confirmed a port above 65535"), "{reason}");
        let failure = message(open_session_response::Message::ExposeFailure(
            ExposeFailure {
                port: 70_000,
                status: None,
            },
        ));
        let reason = protocol_reason(control.on_message(failure));
        assert!(reason.contains("refused a port above 65535"), "{reason}");
    }

    #[test]
    fn a_confirmation_answers_the_waiters_and_records_where_the_port_is() {
        let mut control = control();
        control
            .expose(22, Route::Forward(Target::local(22)), Publish::none())
            .unwrap();
        let actions = control
            .on_message(port_exposed(22, "relay.example.com:40022"))
            .unwrap();
        let expected = published_at("relay.example.com:40022");
        match &actions[..] {
            // Published for the first time: nothing moved, so no event.
            [
                Action::Answer {
                    port: 22,
                    answer: Answer::Exposed(published),
                },
            ] => assert_eq!(published, &expected),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(control.published(22), expected);
        assert!(control.published(23).is_empty());
    }

    #[test]
    fn a_port_published_elsewhere_than_before_is_reported_republished() {
        let mut control = control();
        control
            .expose(22, Route::Forward(Target::local(22)), Publish::none())
            .unwrap();
        control
            .on_message(port_exposed(22, "relay.example.com:40022"))
            .unwrap();
        // The same place again, after a reconnect: no event.
        let same = control
            .on_message(port_exposed(22, "relay.example.com:40022"))
            .unwrap();
        assert!(matches!(&same[..], [Action::Answer { .. }]), "{same:?}");

        let moved = control
            .on_message(port_exposed(22, "relay.example.com:40023"))
            .unwrap();
        let now = published_at("relay.example.com:40023");
        match &moved[..] {
            [
                Action::Emit(Event::Republished {
                    port: 22,
                    published,
                }),
                Action::Answer {
                    port: 22,
                    answer: Answer::Exposed(answered),
                },
            ] => {
                assert_eq!(published, &now);
                assert_eq!(answered, &now);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(control.published(22), now);
    }

    #[test]
    fn a_confirmation_for_a_port_no_longer_exposed_changes_nothing() {
        let mut control = control();
        control
            .expose(22, Route::Forward(Target::local(22)), Publish::none())
            .unwrap();
        assert!(control.withdraw(22));
        let actions = control
            .on_message(port_exposed(22, "relay.example.com:40022"))
            .unwrap();
        assert!(matches!(&actions[..], [Action::Answer { port: 22, .. }]));
        assert!(control.published(22).is_empty());
        assert!(!control.withdraw(22));
    }

    #[test]
    fn an_expose_failure_answers_the_waiters_with_the_relays_error() {
        let mut control = control();
        let refusal = Error::Status(Status::already_exists("port 40022 is taken"));
        let failure = message(open_session_response::Message::ExposeFailure(
            ExposeFailure {
                port: 22,
                status: Some(refusal.to_rpc_status()),
            },
        ));
        let actions = control.on_message(failure).unwrap();
        let [Action::Answer { port: 22, answer }] = &actions[..] else {
            panic!("unexpected {actions:?}");
        };
        match answer.outcome() {
            Err(error) => {
                assert_eq!(error.code(), Code::AlreadyExists);
                assert_eq!(error.to_string(), "port 40022 is taken");
            }
            Ok(published) => panic!("refused, yet published at {published}"),
        }

        // An error with a reason of Sesame's own comes back as itself.
        let refusal = Error::InvalidName {
            name: "x".into(),
            reason: "too short".into(),
        };
        let failure = message(open_session_response::Message::ExposeFailure(
            ExposeFailure {
                port: 22,
                status: Some(refusal.to_rpc_status()),
            },
        ));
        let actions = control.on_message(failure).unwrap();
        let [Action::Answer { answer, .. }] = &actions[..] else {
            panic!("unexpected {actions:?}");
        };
        assert!(matches!(
            answer.outcome(),
            Err(Error::InvalidName { name, reason }) if name == "x" && reason == "too short"
        ));
    }

    #[test]
    fn an_expose_failure_without_a_status_still_fails_the_waiters() {
        let failure = message(open_session_response::Message::ExposeFailure(
            ExposeFailure {
                port: 22,
                status: None,
            },
        ));
        let actions = control().on_message(failure).unwrap();
        let [Action::Answer { port: 22, answer }] = &actions[..] else {
            panic!("unexpected {actions:?}");
        };
        assert!(
            matches!(answer.outcome(), Err(error) if error.code() == Code::Unknown),
            "{answer:?}"
        );
    }

    #[test]
    fn a_drain_is_reported_with_its_grace_period() {
        let mut control = control();
        let drain = message(open_session_response::Message::Drain(Drain {
            grace_period: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        }));
        let actions = control.on_message(drain).unwrap();
        assert!(
            matches!(
                &actions[..],
                [Action::Emit(Event::Draining { grace: Some(grace) })]
                    if *grace == Duration::from_secs(30)
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn heartbeats_call_for_nothing() {
        let heartbeat = message(open_session_response::Message::Heartbeat(Heartbeat {
            sequence: 7,
        }));
        assert!(control().on_message(heartbeat).unwrap().is_empty());
    }

    #[test]
    fn a_second_welcome_or_an_empty_message_breaks_the_protocol() {
        let mut control = control();
        let welcome = message(open_session_response::Message::Welcome(Welcome::default()));
        assert_eq!(
            protocol_reason(control.on_message(welcome)),
            "a second welcome"
        );
        let empty = OpenSessionResponse { message: None };
        assert_eq!(
            protocol_reason(control.on_message(empty)),
            "an empty control message"
        );
    }

    #[test]
    fn a_port_is_exposed_once_until_withdrawn() {
        let mut control = control();
        let route = Route::Forward(Target::local(22));
        control.expose(22, route.clone(), Publish::none()).unwrap();
        assert!(matches!(
            control.expose(22, route.clone(), Publish::none()),
            Err(Error::PortInUse { port: 22 })
        ));
        assert_eq!(
            control.exposed().map(|(port, _)| port).collect::<Vec<_>>(),
            [22]
        );
        control.clear();
        assert_eq!(control.exposed().count(), 0);
        control.expose(22, route, Publish::none()).unwrap();
    }
}
