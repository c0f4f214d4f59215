//! Untrusted input: one message of an agent session's control stream, as the relay receives
//! it from an agent (`OpenSessionRequest`) and as an agent receives it from a relay
//! (`OpenSessionResponse`).
//!
//! The bytes are decoded as both. What decodes goes through the pure checks each side
//! applies: the handshake (`accept_hello`, `accept_welcome`), port numbers, tickets, the
//! `google.rpc.Status` a dial or expose failure carries (turned back into an `Error`), and
//! durations. Nothing may panic, and what is accepted must be what was sent.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sesame_proto::RpcStatus;
use sesame_proto::v1::{
    ExposedPort, OpenSessionRequest, OpenSessionResponse, open_session_request,
    open_session_response,
};
use sesame_tunnel::settings::{MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, PROTOCOL_VERSION};
use sesame_tunnel::{AgentKey, Error, RemoteName, Ticket, handshake, status_from_rpc};
use tonic::Code;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = OpenSessionRequest::decode(data) {
        on_relay(request);
    }
    if let Ok(response) = OpenSessionResponse::decode(data) {
        on_agent(response);
    }
});

/// What the relay does with an agent's control message, short of the registry.
fn on_relay(request: OpenSessionRequest) {
    use open_session_request::Message;
    match request.message {
        Some(Message::Hello(hello)) => {
            let remote = hello.remote.clone();
            let key_len = hello.agent_key.len();
            match handshake::accept_hello(hello) {
                Ok(accepted) => {
                    assert_eq!(accepted.name.resource_name(), remote);
                    assert_eq!(
                        RemoteName::new(accepted.name.as_str()).ok(),
                        Some(accepted.name.clone())
                    );
                    assert!(accepted.protocol_version <= PROTOCOL_VERSION);
                    assert!((MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&accepted.chunk_limit));
                    assert!(accepted.agent_version.len() <= 64);
                    assert!(
                        accepted
                            .agent_version
                            .bytes()
                            .all(|b| b.is_ascii_graphic() || b == b' ')
                    );
                    assert_eq!(accepted.agent_key.is_some(), key_len > 0);
                    // The hello an agent would send with what was accepted is accepted as is.
                    let key = accepted
                        .agent_key
                        .clone()
                        .unwrap_or_else(AgentKey::generate);
                    let again = handshake::hello(
                        &accepted.name,
                        &accepted.agent_version,
                        accepted.chunk_limit,
                        &key,
                    );
                    let again = handshake::accept_hello(again).expect("a hello of our own");
                    assert_eq!(again.name, accepted.name);
                    assert_eq!(again.agent_version, accepted.agent_version);
                    assert_eq!(again.chunk_limit, accepted.chunk_limit);
                }
                Err(error) => report(&error),
            }
        }
        Some(Message::ExposePort(expose)) => {
            let request = expose.port.unwrap_or_default();
            let _ = port_number(request.port);
            exposed_port(&request);
        }
        Some(Message::UnexposePort(unexpose)) => {
            let _ = port_number(unexpose.port);
        }
        Some(Message::DialFailure(failure)) => {
            let _ = Ticket::from_bytes(&failure.ticket);
            if let Some(status) = failure.status {
                // The relay passes the agent's status on to the dialer, who reads it back.
                report(&from_peer(status));
            }
        }
        Some(Message::Heartbeat(_)) | None => {}
    }
}

/// What an agent does with a relay's control message, short of its own state.
fn on_agent(response: OpenSessionResponse) {
    use open_session_response::Message;
    match response.message {
        Some(Message::Welcome(welcome)) => {
            let session_id = welcome.session_id.clone();
            match handshake::accept_welcome(welcome) {
                Ok(accepted) => {
                    assert_eq!(accepted.session_id.as_str(), session_id);
                    assert!(!session_id.is_empty());
                    assert!((MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&accepted.chunk_limit));
                    assert_ne!(accepted.heartbeat_interval, Some(Duration::ZERO));
                }
                Err(error) => report(&error),
            }
        }
        Some(Message::PortExposed(exposed)) => exposed_port(&exposed.port.unwrap_or_default()),
        Some(Message::DialNotice(notice)) => {
            let _ = Ticket::from_bytes(&notice.ticket);
            let _ = u16::try_from(notice.port);
        }
        Some(Message::ExposeFailure(failure)) => {
            let _ = u16::try_from(failure.port);
            report(&from_peer(failure.status.unwrap_or_default()));
        }
        Some(Message::Drain(drain)) => {
            let _ = drain.grace_period.and_then(|d| Duration::try_from(d).ok());
        }
        Some(Message::Heartbeat(_)) | None => {}
    }
}

/// The checks either side makes of a port's public endpoints.
fn exposed_port(port: &ExposedPort) {
    let _ = u16::try_from(port.port);
    if let Some(http) = &port.http {
        let _ = sesame_proto::v1::HttpProtocol::try_from(http.protocol);
        let _ = http::HeaderValue::from_str(&http.host_header);
        for url in &http.urls {
            let _ = url.parse::<http::Uri>();
        }
    }
    if let Some(tcp) = &port.tcp {
        let _ = u16::try_from(tcp.public_port);
        let _ = tcp
            .address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok());
    }
}

/// A port number from the wire, as the relay reads one.
fn port_number(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|port| *port != 0)
}

/// A status received inside a message, read back as both sides do: whatever the peer sent,
/// it is a failure, and its message is bounded.
fn from_peer(status: RpcStatus) -> Error {
    let status = status_from_rpc(status);
    assert_ne!(status.code(), Code::Ok);
    assert!(status.message().chars().count() <= 1024);
    Error::from_status(status)
}

/// Everything an error is shown or sent as.
fn report(error: &Error) {
    let _ = error.to_string();
    let _ = error.code();
    let back = Error::from_status(error.to_status());
    // An error of Sesame's own comes back as itself; a peer's status may name any reason.
    if !matches!(error, Error::Status(_)) {
        assert_eq!(back.code(), error.code());
        assert_eq!(back.to_string(), error.to_string());
    }
    let _ = error.to_rpc_status();
}
