//! What an agent's control messages mean to the relay, as plain functions over one session's
//! state: no sockets, no locks, no clocks. The session's task (`tunnel`) feeds messages in
//! and carries out the [`Action`]s that come back.

use std::collections::BTreeMap;

use sesame_proto::v1::{
    DialFailure, ExposeFailure, ExposedPort, OpenSessionRequest, PortExposed, open_session_request,
    open_session_response,
};
use sesame_tunnel::{Error, Ticket, status_from_rpc};
use tonic::Status;

use crate::port_number;
use crate::registry::PublicEndpoints;

/// What the session's task does in answer to a control message.
#[derive(Debug)]
pub(crate) enum Action {
    /// Publish `port` as `request` asks, then tell [`Control::published`] the outcome.
    Publish {
        /// The remote's port.
        port: u16,
        /// Where the agent asks for it to be published.
        request: ExposedPort,
    },
    /// Withdraw the public endpoints of `port`.
    Withdraw {
        /// The remote's port.
        port: u16,
    },
    /// Record in the registry that `port` is published at `endpoints`, or with `None`, that
    /// it is no longer exposed.
    SavePort {
        /// The remote's port.
        port: u16,
        /// Where it is published.
        endpoints: Option<PublicEndpoints>,
    },
    /// Send a message to the agent. The relay never waits on the agent: if its queue is full,
    /// the agent does not read its control stream, and the session ends.
    Send(open_session_response::Message),
    /// Send a message to the agent if its queue has room; drop it otherwise.
    SendIfRoom(open_session_response::Message),
    /// Fail the dial `ticket` stands for, as the agent refused it.
    FailDial {
        /// The dial's ticket.
        ticket: Ticket,
        /// Why, for the dialer.
        status: Status,
    },
}

/// One session's control state: the ports its agent exposes, and where each is published.
#[derive(Debug)]
pub(crate) struct Control {
    ports: BTreeMap<u16, PublicEndpoints>,
    /// The most ports the session may expose at once.
    max_ports: usize,
}

impl Control {
    /// A session that may expose up to `max_ports` ports at once.
    pub(crate) fn new(max_ports: usize) -> Self {
        Control {
            ports: BTreeMap::new(),
            max_ports,
        }
    }

    /// Interprets one control message from the agent; an error ends the session.
    pub(crate) fn on_message(&mut self, message: OpenSessionRequest) -> Result<Vec<Action>, Error> {
        use open_session_request::Message;
        let actions = match message.message {
            Some(Message::ExposePort(expose)) => {
                let request = expose.port.unwrap_or_default();
                let port = valid_port(request.port)?;
                if !self.ports.contains_key(&port) && self.ports.len() >= self.max_ports {
                    let refusal = Status::resource_exhausted(format!(
                        "this remote already exposes {} ports, the relay's limit per session",
                        self.ports.len()
                    ));
                    return Ok(refuse(port, refusal));
                }
                vec![Action::Publish { port, request }]
            }
            Some(Message::UnexposePort(unexpose)) => {
                let port = valid_port(unexpose.port)?;
                let mut actions = vec![Action::Withdraw { port }];
                if self.ports.remove(&port).is_some() {
                    let endpoints = None;
                    actions.push(Action::SavePort { port, endpoints });
                }
                actions
            }
            Some(Message::DialFailure(failure)) => fail_dial(failure).into_iter().collect(),
            Some(Message::Heartbeat(heartbeat)) => {
                // A full queue means the agent is not reading: its own silence timer will tell.
                vec![Action::SendIfRoom(
                    open_session_response::Message::Heartbeat(heartbeat),
                )]
            }
            Some(Message::Hello(_)) => return Err(Error::protocol("a second hello")),
            None => return Err(Error::protocol("an empty control message")),
        };
        Ok(actions)
    }

    /// Takes the outcome of publishing `port`: what it was published as (for the agent's
    /// confirmation, and for the registry), or why it was refused.
    pub(crate) fn published(
        &mut self,
        port: u16,
        outcome: Result<(ExposedPort, PublicEndpoints), Status>,
    ) -> Vec<Action> {
        match outcome {
            Ok((confirmed, public)) => {
                self.ports.insert(port, public.clone());
                let confirmation = PortExposed {
                    port: Some(confirmed),
                };
                let endpoints = Some(public);
                vec![
                    Action::SavePort { port, endpoints },
                    Action::Send(open_session_response::Message::PortExposed(confirmation)),
                ]
            }
            Err(refusal) => refuse(port, refusal),
        }
    }
}

/// Tells the agent that exposing `port` was refused, and why.
fn refuse(port: u16, refusal: Status) -> Vec<Action> {
    let failure = ExposeFailure {
        port: u32::from(port),
        status: Some(Error::Status(refusal).to_rpc_status()),
    };
    vec![Action::Send(open_session_response::Message::ExposeFailure(
        failure,
    ))]
}

fn valid_port(port: u32) -> Result<u16, Error> {
    port_number(port).ok_or_else(|| Error::protocol(format!("port {port} is not a valid port")))
}

/// The dial an agent refused, and why; nothing for a malformed ticket, which no dial waits
/// for.
fn fail_dial(failure: DialFailure) -> Option<Action> {
    let ticket = Ticket::from_bytes(&failure.ticket)?;
    let status = status_from_agent(failure.status);
    Some(Action::FailDial { ticket, status })
}

/// A status an agent reported, made safe to pass on: a real error code, a bounded message,
/// and details only when they are small.
fn status_from_agent(status: Option<sesame_proto::RpcStatus>) -> Status {
    status.map_or_else(
        || Status::unknown("the remote refused the connection without a reason"),
        status_from_rpc,
    )
}

#[cfg(test)]
mod tests {
    use sesame_proto::v1::{ExposePort, Heartbeat, Hello, UnexposePort};

    use super::*;

    fn message(message: open_session_request::Message) -> OpenSessionRequest {
        OpenSessionRequest {
            message: Some(message),
        }
    }

    fn expose(port: u32) -> OpenSessionRequest {
        message(open_session_request::Message::ExposePort(ExposePort {
            port: Some(ExposedPort {
                port,
                ..ExposedPort::default()
            }),
        }))
    }

    fn unexpose(port: u32) -> OpenSessionRequest {
        message(open_session_request::Message::UnexposePort(UnexposePort {
            port,
        }))
    }

    fn public(address: &str) -> PublicEndpoints {
        PublicEndpoints {
            http_urls: Vec::new(),
            tcp_address: Some(address.to_owned()),
        }
    }

    #[test]
    fn an_exposed_port_is_published_saved_and_confirmed() {
        let mut control = Control::new(8);
        let actions = control.on_message(expose(8080)).unwrap();
        let [
            Action::Publish {
                port: 8080,
                request,
            },
        ] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        let confirmed = request.clone();
        let actions = control.published(8080, Ok((confirmed, public("relay:20000"))));
        match &actions[..] {
            [
                Action::SavePort {
                    port: 8080,
                    endpoints: Some(endpoints),
                },
                Action::Send(open_session_response::Message::PortExposed(exposed)),
            ] => {
                assert_eq!(endpoints, &public("relay:20000"));
                assert_eq!(exposed.port.as_ref().map(|port| port.port), Some(8080));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_port_is_reported_and_not_saved() {
        let mut control = Control::new(8);
        let refusal = Status::already_exists("TCP port 20000 is taken by another remote");
        let actions = control.published(22, Err(refusal));
        let [Action::Send(open_session_response::Message::ExposeFailure(failure))] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(failure.port, 22);
        let status = failure.status.as_ref().unwrap();
        assert_eq!(status.code, tonic::Code::AlreadyExists as i32);
        assert!(status.message.contains("taken"));
        // Withdrawing it later touches the endpoints, but the registry has nothing to forget.
        let actions = control.on_message(unexpose(22)).unwrap();
        assert!(matches!(&actions[..], [Action::Withdraw { port: 22 }]));
    }

    #[test]
    fn a_withdrawn_port_leaves_the_registry() {
        let mut control = Control::new(8);
        control.published(22, Ok((ExposedPort::default(), public("a:1"))));
        control.published(80, Ok((ExposedPort::default(), public("a:2"))));
        let actions = control.on_message(unexpose(22)).unwrap();
        match &actions[..] {
            [
                Action::Withdraw { port: 22 },
                Action::SavePort {
                    port: 22,
                    endpoints: None,
                },
            ] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_session_exposes_a_limited_number_of_ports() {
        let mut control = Control::new(2);
        for port in [22, 80] {
            control.published(port, Ok((ExposedPort::default(), public("a:1"))));
        }
        let actions = control.on_message(expose(443)).unwrap();
        let [Action::Send(open_session_response::Message::ExposeFailure(failure))] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        let status = failure.status.as_ref().unwrap();
        assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);
        assert!(status.message.contains("2 ports"), "{}", status.message);
        // A port already exposed may be exposed again, with new settings.
        let again = control.on_message(expose(80)).unwrap();
        assert!(matches!(&again[..], [Action::Publish { port: 80, .. }]));
        // One withdrawn makes room.
        control.on_message(unexpose(22)).unwrap();
        let room = control.on_message(expose(443)).unwrap();
        assert!(matches!(&room[..], [Action::Publish { port: 443, .. }]));
    }

    #[test]
    fn bad_ports_second_hellos_and_empty_messages_end_the_session() {
        let mut control = Control::new(8);
        for bad in [
            expose(0),
            expose(65536),
            unexpose(0),
            message(open_session_request::Message::Hello(Hello::default())),
            OpenSessionRequest { message: None },
        ] {
            let error = control.on_message(bad).unwrap_err();
            assert!(matches!(error, Error::Protocol { .. }), "{error:?}");
        }
    }

    #[test]
    fn heartbeats_are_echoed_when_there_is_room() {
        let mut control = Control::new(8);
        let heartbeat = message(open_session_request::Message::Heartbeat(Heartbeat {
            ..Heartbeat::default()
        }));
        let actions = control.on_message(heartbeat).unwrap();
        assert!(matches!(
            &actions[..],
            [Action::SendIfRoom(
                open_session_response::Message::Heartbeat(_)
            )]
        ));
    }

    #[test]
    fn refusals_reach_the_dialer_bounded_and_never_as_ok() {
        let mut control = Control::new(8);
        let ticket = Ticket::generate();
        let refusal = |status| {
            message(open_session_request::Message::DialFailure(DialFailure {
                ticket: ticket.as_bytes().to_vec().into(),
                status,
            }))
        };
        let ok_but_long = sesame_proto::RpcStatus {
            code: 0,
            message: "x".repeat(5000),
            details: Vec::new(),
        };
        let actions = control.on_message(refusal(Some(ok_but_long))).unwrap();
        let [
            Action::FailDial {
                ticket: failed,
                status,
            },
        ] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(failed, &ticket);
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(status.message().len(), 1024, "bounded");

        let actions = control.on_message(refusal(None)).unwrap();
        let [Action::FailDial { status, .. }] = &actions[..] else {
            panic!("{actions:?}");
        };
        assert!(status.message().contains("without a reason"));

        let malformed = message(open_session_request::Message::DialFailure(DialFailure {
            ticket: vec![1, 2, 3].into(),
            status: None,
        }));
        assert!(control.on_message(malformed).unwrap().is_empty());
    }
}
