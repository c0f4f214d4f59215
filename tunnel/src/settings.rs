//! Protocol constants and the tuning shared by the relay and its clients.
//!
//! Internal: the constants are for the relay of this project; not a stable API, and hidden from
//! the documentation. Embedders find [`TransportSettings`] at the crate root.

use std::time::Duration;

/// The protocol version this crate speaks best.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest protocol version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The largest data payload any Sesame endpoint sends in one message. A peer may announce a
/// lower limit in its settings.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// The smallest limit a peer may announce: below this, chunks get too small to move data
/// efficiently, so such a peer is refused.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;

/// The largest encoded message any Sesame endpoint accepts: a full chunk plus framing.
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 1024;

/// How data moves over the HTTP/2 connection to or from a relay.
///
/// The defaults suit both loopback and WAN links; every field is a trade of memory for
/// throughput, explained on the field.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportSettings {
    /// The HTTP/2 flow-control window of each stream, that is, of each tunneled connection.
    /// It caps how much of one connection's data can be in flight unread, so it bounds the
    /// memory a stalled reader costs, and it caps one connection's throughput at
    /// window / round-trip time.
    pub stream_window: u32,
    /// The HTTP/2 window of the whole connection. It is as large as HTTP/2 allows, so that
    /// stalled streams, each bounded by `stream_window`, never starve the others.
    pub connection_window: u32,
    /// The largest HTTP/2 frame this side accepts.
    pub max_frame_size: u32,
    /// The data payload of one message when the sender has that much waiting.
    pub chunk_bytes: usize,
    /// How many bytes a [`Connection`](crate::Connection) accepts from its writer before
    /// `poll_write` waits for the transport to take them.
    pub write_buffer: usize,
    /// How long to wait for the TCP connection to the relay.
    pub connect_timeout: Duration,
    /// How long to wait for the relay to answer a session's hello.
    pub handshake_timeout: Duration,
    /// How often to ping the other side of an HTTP/2 connection when nothing arrives from
    /// it, even when idle, so that a peer that vanished (a lost link, a sleeping laptop) is
    /// noticed and its session ends. Set it with
    /// [`with_dead_peer_timeout`](Self::with_dead_peer_timeout).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl TransportSettings {
    /// The default bound on noticing a dead peer.
    pub const DEFAULT_DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(15);

    /// Notices a dead peer within `timeout`: an HTTP/2 ping goes out after two thirds of it
    /// without news from the peer, and may take the last third to be answered. An agent's
    /// control-stream heartbeats follow the same bound.
    pub fn with_dead_peer_timeout(mut self, timeout: Duration) -> Self {
        let third = timeout / 3;
        self.keepalive_interval = timeout - third;
        self.keepalive_timeout = third;
        self
    }

    /// How long a peer may stay silent before it is taken for dead.
    pub fn dead_peer_timeout(&self) -> Duration {
        self.keepalive_interval + self.keepalive_timeout
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            stream_window: 1 << 20,
            connection_window: (1 << 31) - 1,
            max_frame_size: 64 << 10,
            chunk_bytes: 64 << 10,
            write_buffer: 128 << 10,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
        }
        .with_dead_peer_timeout(Self::DEFAULT_DEAD_PEER_TIMEOUT)
    }
}

/// The chunk limit a peer announced, as the number to honour: zero means the protocol's
/// ceiling, and nothing above the ceiling counts.
pub(crate) fn announced_chunk_limit(announced: u32) -> usize {
    match announced as usize {
        0 => MAX_CHUNK_BYTES,
        n => n.min(MAX_CHUNK_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_peer_is_noticed_within_the_timeout_by_default() {
        let settings = TransportSettings::default();
        assert_eq!(settings.dead_peer_timeout(), Duration::from_secs(15));
        assert_eq!(settings.keepalive_interval, Duration::from_secs(10));
        assert_eq!(settings.keepalive_timeout, Duration::from_secs(5));
        let quick = settings.with_dead_peer_timeout(Duration::from_millis(900));
        assert_eq!(quick.keepalive_interval, Duration::from_millis(600));
        assert_eq!(quick.dead_peer_timeout(), Duration::from_millis(900));
    }
}
