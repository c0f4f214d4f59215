//! Untrusted input: one message of a data stream, as the relay receives it from a dialer
//! (`DialRequest`) or an agent (`AcceptConnectionRequest`), and as a dialer or an agent
//! receives it from the relay (`DialResponse`, `AcceptConnectionResponse`); and the small
//! identifiers those messages and the control stream carry (tickets, agent keys, session ids,
//! remote names and host names).
//!
//! What decodes goes through `sesame_tunnel::frame` (`ClientMessage::into_outbound`,
//! `ServerMessage::into_inbound`), and what that accepts must survive the way back. The raw
//! bytes also go to `Ticket::from_bytes`, `AgentKey::from_bytes`, `SessionId::from_wire` and
//! `RemoteName::{new, from_resource_name, from_hostname}`. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, DialRequest, DialResponse,
    accept_connection_request, dial_request,
};
use sesame_tunnel::frame::{ClientMessage, Inbound, Outbound, ServerMessage};
use sesame_tunnel::{AgentKey, RemoteName, SessionId, Ticket};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = DialRequest::decode(data) {
        if let Some(dial_request::Message::Target(target)) = &request.message {
            // The relay's first look at a dial.
            let _ = RemoteName::from_resource_name(&target.remote);
        }
        client(request);
    }
    if let Ok(request) = AcceptConnectionRequest::decode(data) {
        if let Some(accept_connection_request::Message::Ticket(ticket)) = &request.message {
            // The relay's first look at an agent's data stream.
            let _ = Ticket::from_bytes(&ticket.ticket);
            let _ = SessionId::from_wire(ticket.session_id.clone());
        }
        client(request);
    }
    if let Ok(response) = DialResponse::decode(data) {
        server(response);
    }
    if let Ok(response) = AcceptConnectionResponse::decode(data) {
        server(response);
    }
    identifiers(data);
});

/// A client's message after its opening one: what it means, and back.
fn client<M: ClientMessage>(message: M) {
    if let Ok(outbound) = message.into_outbound() {
        let copy = match &outbound {
            Outbound::Data(chunk) => Outbound::Data(chunk.clone()),
            Outbound::Reset(reason) => Outbound::Reset(reason.clone()),
        };
        assert_eq!(M::from_outbound(copy).into_outbound().ok(), Some(outbound));
    }
}

/// A server's message after its opening one: what it means, and back.
fn server<M: ServerMessage>(message: M) {
    match message.into_inbound() {
        Ok(Inbound::Data(chunk)) => {
            let again = M::data(chunk.clone()).into_inbound().ok();
            assert_eq!(again, Some(Inbound::Data(chunk)));
        }
        Ok(Inbound::CloseWrite) => {
            assert_eq!(
                M::close_write().into_inbound().ok(),
                Some(Inbound::CloseWrite)
            );
        }
        Err(status) => {
            let _ = sesame_tunnel::Error::from_status(status).to_string();
        }
    }
}

/// The identifiers, from the raw bytes.
fn identifiers(data: &[u8]) {
    if let Some(ticket) = Ticket::from_bytes(data) {
        assert_eq!(ticket.as_bytes(), data);
    }
    if let Some(key) = AgentKey::from_bytes(data) {
        assert_eq!(key.as_bytes(), data);
        assert_eq!(AgentKey::from_bytes(key.as_bytes()), Some(key));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let id = SessionId::from_wire(text.to_owned());
    assert_eq!(id.as_str(), text);
    if let Ok(name) = RemoteName::new(text) {
        assert_eq!(name.as_str(), text);
        let resource = name.resource_name();
        assert_eq!(
            RemoteName::from_resource_name(&resource).ok(),
            Some(name.clone())
        );
        assert_eq!(text.parse::<RemoteName>().ok(), Some(name));
    }
    if let Ok(name) = RemoteName::from_resource_name(text) {
        assert_eq!(name.resource_name(), text);
    }
    if let Some(name) = RemoteName::from_hostname(text) {
        // A derived name is a valid name, and derives itself.
        assert_eq!(RemoteName::new(name.as_str()).ok(), Some(name.clone()));
        assert_eq!(RemoteName::from_hostname(name.as_str()), Some(name));
    }
}
