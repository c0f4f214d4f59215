//! Unguessable identifiers: dial tickets, session ids and agent keys.

use std::fmt;

/// Fills a buffer from the operating system's random source.
fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// A one-use secret that binds an agent's data stream to one dial: 128 random bits.
///
/// Its `Debug` output is masked, so tickets never reach logs.
///
/// Internal: shared by the relay and the agent of this project; not a stable API, and hidden
/// from the documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ticket([u8; 16]);

impl Ticket {
    /// Draws a new ticket.
    pub fn generate() -> Self {
        Ticket(random())
    }

    /// Reads a ticket from the wire; `None` unless it is exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Ticket)
    }

    /// The ticket's bytes, for the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket(..)")
    }
}

/// The relay's identifier of one agent session: 128 random bits, in hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Draws a new session id.
    ///
    /// Internal: for the relay of this project, not a stable API.
    #[doc(hidden)]
    pub fn generate() -> Self {
        let bytes: [u8; 16] = random();
        SessionId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Wraps a session id received from the wire.
    ///
    /// Internal: for the relay of this project, not a stable API.
    #[doc(hidden)]
    pub fn from_wire(id: String) -> Self {
        SessionId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret an agent draws once per run and presents on every session it opens: the relay
/// gives the agent's name back to whoever presents the same key, ending the stale session
/// that still holds it. 128 random bits when drawn; 16 to 64 bytes from the wire.
///
/// Compared in constant time; its `Debug` output is masked.
///
/// Internal: shared by the relay and the agent of this project; not a stable API, and hidden
/// from the documentation.
#[derive(Clone)]
pub struct AgentKey(Box<[u8]>);

impl AgentKey {
    /// The shortest key accepted from the wire, in bytes.
    pub const MIN_LEN: usize = 16;
    /// The longest key accepted from the wire, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Draws a new key.
    pub fn generate() -> Self {
        AgentKey(Box::new(random::<16>()))
    }

    /// Reads a key from the wire; `None` unless it is 16 to 64 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (Self::MIN_LEN..=Self::MAX_LEN)
            .contains(&bytes.len())
            .then(|| AgentKey(bytes.into()))
    }

    /// The key's bytes, for the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for AgentKey {
    fn eq(&self, other: &Self) -> bool {
        // Lengths are not secret; the bytes are compared without an early exit.
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

impl Eq for AgentKey {}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_distinct_and_round_trip() {
        let a = Ticket::generate();
        assert_ne!(a, Ticket::generate());
        assert_eq!(Ticket::from_bytes(a.as_bytes()), Some(a.clone()));
        assert_eq!(Ticket::from_bytes(&a.as_bytes()[..15]), None);
        assert_eq!(format!("{a:?}"), "Ticket(..)");
    }

    #[test]
    fn session_ids_are_32_hex_digits() {
        let id = SessionId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, SessionId::generate());
    }

    #[test]
    fn agent_keys_compare_by_value_and_hide_themselves() {
        let key = AgentKey::generate();
        assert_eq!(AgentKey::from_bytes(key.as_bytes()), Some(key.clone()));
        assert_ne!(key, AgentKey::generate());
        assert_eq!(AgentKey::from_bytes(&[7; 15]), None);
        assert_eq!(AgentKey::from_bytes(&[7; 65]), None);
        assert_ne!(
            AgentKey::from_bytes(&[7; 16]),
            AgentKey::from_bytes(&[7; 17])
        );
        assert_eq!(format!("{key:?}"), "AgentKey(..)");
    }
}
