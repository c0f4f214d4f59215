//! What a session reports about its connections: running totals and a stream of events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// Totals of a session's connections since it began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Dials the agent could not serve (for example, the target refused).
    pub dials_failed: u64,
    /// Bytes received from dialers.
    pub bytes_in: u64,
    /// Bytes sent to dialers.
    pub bytes_out: u64,
}

/// Something that happened in a session. Subscribers that fall behind by more than 1024
/// events miss the oldest ones.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was accepted.
    Opened {
        /// The exposed port dialed.
        port: u16,
        /// Who dialed, as the relay saw it.
        peer: String,
    },
    /// A connection ended.
    Closed {
        /// The exposed port dialed.
        port: u16,
        /// Who dialed.
        peer: String,
        /// Bytes received from the dialer.
        bytes_in: u64,
        /// Bytes sent to the dialer.
        bytes_out: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A dial could not be served.
    DialFailed {
        /// The exposed port dialed.
        port: u16,
        /// Who dialed.
        peer: String,
        /// Why.
        error: String,
    },
    /// The relay is going away; open connections may run for the grace period. The session
    /// reconnects, unless told not to.
    Draining {
        /// How long the relay lets open connections run.
        grace: Option<Duration>,
    },
    /// The session lost its relay. Open connections may live on; new dials wait for the
    /// session to reconnect.
    Disconnected {
        /// What happened, as a short phrase: `the connection broke (connection reset by
        /// peer)`, `the relay is shutting down`.
        reason: String,
    },
    /// The session tries to reach the relay again after `delay`.
    Reconnecting {
        /// How long until the attempt.
        delay: Duration,
        /// Why the previous attempt failed, as a short phrase (`connection refused`); `None`
        /// before the first attempt.
        error: Option<String>,
    },
    /// The session is registered again and every port is exposed again.
    Reconnected,
    /// The relay published a port at other endpoints than before (after a reconnect, a TCP
    /// port that was taken meanwhile).
    Republished {
        /// The exposed port.
        port: u16,
        /// Where it is published now.
        published: super::Published,
    },
    /// The relay refused to publish a port again after a reconnect: dials to it fail until it
    /// is exposed again.
    ExposeFailed {
        /// The exposed port.
        port: u16,
        /// Why.
        error: String,
    },
}

#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    dials_failed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// The session's side of its statistics: counters and the event channel.
#[derive(Clone)]
pub(crate) struct Observer {
    counters: Arc<Counters>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Observer {
    pub(crate) fn new() -> Self {
        Observer {
            counters: Arc::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            connections_total: c.connections_total.load(Relaxed),
            connections_open: c.connections_open.load(Relaxed),
            dials_failed: c.dials_failed.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// Counts a new connection and returns the meter that counts its bytes.
    pub(crate) fn opened(&self, port: u16, peer: String) -> ConnectionMeter {
        self.counters.connections_total.fetch_add(1, Relaxed);
        self.counters.connections_open.fetch_add(1, Relaxed);
        self.emit(Event::Opened {
            port,
            peer: peer.clone(),
        });
        ConnectionMeter {
            observer: self.clone(),
            port,
            peer,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
        }
    }

    pub(crate) fn dial_failed(&self, port: u16, peer: String, error: String) {
        self.counters.dials_failed.fetch_add(1, Relaxed);
        self.emit(Event::DialFailed { port, peer, error });
    }
}

/// Counts one connection's bytes into its session, and reports the connection closed when
/// dropped along with it.
pub(crate) struct ConnectionMeter {
    observer: Observer,
    port: u16,
    peer: String,
    bytes_in: u64,
    bytes_out: u64,
    error: Option<String>,
}

impl ConnectionMeter {
    pub(crate) fn add_in(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.observer.counters.bytes_in.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_out(&mut self, n: usize) {
        self.bytes_out += n as u64;
        self.observer
            .counters
            .bytes_out
            .fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.error.get_or_insert_with(|| error.to_string());
    }
}

impl Drop for ConnectionMeter {
    fn drop(&mut self) {
        self.observer
            .counters
            .connections_open
            .fetch_sub(1, Relaxed);
        self.observer.emit(Event::Closed {
            port: self.port,
            peer: std::mem::take(&mut self.peer),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error.take(),
        });
    }
}
