//! What the relay counts, for Prometheus: sessions, connections by entrance, bytes as they
//! flow, dial outcomes and latencies, authentication failures, TLS handshakes, and the
//! process's own CPU, memory and descriptors. Series are labelled by entrance, direction,
//! outcome and remote name (bounded by the relay's limits), never by client address.

mod endpoint;
mod process;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sesame_tunnel::RemoteName;
use tonic::Code;

pub(crate) use crate::sessions::Entrance;
pub use endpoint::serve_metrics;
pub use process::ProcessCollector;

/// The OpenMetrics text format's content type, which `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which way bytes went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the dialer (or public client) to the remote.
    ToRemote,
    /// From the remote to the dialer.
    FromRemote,
}

/// How a TLS handshake ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum HandshakeResult {
    /// It completed.
    Ok,
    /// The client failed it.
    Failed,
    /// It took longer than the handshake timeout.
    TimedOut,
    /// A newer handshake took its place.
    Shed,
}

/// Which listener a handshake was on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The gRPC listener.
    Grpc,
    /// The public HTTPS listener.
    Https,
}

/// Labels name their values in snake case, as Prometheus's own do.
macro_rules! label_values {
    ($($kind:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                let name = match self {
                    $($kind::$variant => $name),+
                };
                EncodeLabelValue::encode(&name, encoder)
            }
        }
    )+};
}

label_values! {
    Entrance { Dial => "dial", Http => "http", Tcp => "tcp" }
    Direction { ToRemote => "to_remote", FromRemote => "from_remote" }
    HandshakeResult { Ok => "ok", Failed => "failed", TimedOut => "timed_out", Shed => "shed" }
    Listener { Grpc => "grpc", Https => "https" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntranceLabels {
    entrance: Entrance,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteLabels {
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteDirectionLabels {
    remote: String,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: Listener,
    result: HandshakeResult,
}

/// The relay's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: Gauge,
    opened: Family<EntranceLabels, Counter>,
    active: Family<EntranceLabels, Gauge>,
    bytes: Family<DirectionLabels, Counter>,
    remote_active: Family<RemoteLabels, Gauge>,
    remote_bytes: Family<RemoteDirectionLabels, Counter>,
    dial_failures: Family<ReasonLabels, Counter>,
    dial_seconds: Histogram,
    first_byte_seconds: Histogram,
    auth_failures: Counter,
    throttled: Counter,
    handshakes: Family<HandshakeLabels, Counter>,
}

/// Buckets from 100 µs to about 26 s: loopback dials to dials across the world to timeouts.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 19)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics that count from zero.
    pub fn new() -> Self {
        let sessions = Gauge::default();
        let opened = Family::<EntranceLabels, Counter>::default();
        let active = Family::<EntranceLabels, Gauge>::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        let remote_active = Family::<RemoteLabels, Gauge>::default();
        let remote_bytes = Family::<RemoteDirectionLabels, Counter>::default();
        let dial_failures = Family::<ReasonLabels, Counter>::default();
        let dial_seconds = Histogram::new(latency_buckets());
        let first_byte_seconds = Histogram::new(latency_buckets());
        let auth_failures = Counter::default();
        let throttled = Counter::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();

        let mut registry = Registry::default();
        // The process's figures under the names every client uses; the relay's under its own.
        registry.register_collector(Box::new(ProcessCollector));
        let relay = registry.sub_registry_with_prefix("sesame_relay");
        relay.register(
            "sessions",
            "Agent sessions connected to this relay",
            sessions.clone(),
        );
        relay.register(
            "connections_opened",
            "Tunneled connections opened, by entrance (dial, http, tcp)",
            opened.clone(),
        );
        relay.register(
            "connections_active",
            "Tunneled connections open now, by entrance",
            active.clone(),
        );
        relay.register(
            "bytes",
            "Bytes carried through tunneled connections, counted as they flow",
            bytes.clone(),
        );
        relay.register(
            "remote_connections_active",
            "Tunneled connections open now, by remote",
            remote_active.clone(),
        );
        relay.register(
            "remote_bytes",
            "Bytes carried through tunneled connections, by remote and direction",
            remote_bytes.clone(),
        );
        relay.register(
            "dial_failures",
            "Dials that did not open a connection, by reason (a gRPC code's name)",
            dial_failures.clone(),
        );
        relay.register_with_unit(
            "dial_duration",
            "Time from a dial to the agent's acceptance",
            Unit::Seconds,
            dial_seconds.clone(),
        );
        relay.register_with_unit(
            "first_byte",
            "Time from a dial to the first byte from the remote",
            Unit::Seconds,
            first_byte_seconds.clone(),
        );
        relay.register(
            "auth_failures",
            "Calls refused for a missing, unknown, revoked or expired token",
            auth_failures.clone(),
        );
        relay.register(
            "throttled",
            "Calls refused because their address failed to authenticate too often",
            throttled.clone(),
        );
        relay.register(
            "tls_handshakes",
            "TLS handshakes, by listener and result",
            handshakes.clone(),
        );
        Metrics {
            registry,
            sessions,
            opened,
            active,
            bytes,
            remote_active,
            remote_bytes,
            dial_failures,
            dial_seconds,
            first_byte_seconds,
            auth_failures,
            throttled,
            handshakes,
        }
    }

    /// Every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a string cannot fail");
        text
    }

    /// A session attached; the guard counts it out.
    pub(crate) fn session(self: &Arc<Self>) -> SessionCount {
        self.sessions.inc();
        SessionCount(self.clone())
    }

    /// A connection of `remote` opened through `entrance`, `dialed` after the dial began:
    /// what counts its bytes, and its end when dropped.
    pub(crate) fn connection(
        self: &Arc<Self>,
        entrance: Entrance,
        remote: &RemoteName,
        dialed: Duration,
    ) -> ConnectionCount {
        let labels = EntranceLabels { entrance };
        self.opened.get_or_create(&labels).inc();
        self.active.get_or_create(&labels).inc();
        self.dial_seconds.observe(dialed.as_secs_f64());
        let remote = remote.to_string();
        self.remote_active
            .get_or_create(&RemoteLabels {
                remote: remote.clone(),
            })
            .inc();
        let bytes = |direction| {
            let all = self
                .bytes
                .get_or_create(&DirectionLabels { direction })
                .clone();
            let labels = RemoteDirectionLabels {
                remote: remote.clone(),
                direction,
            };
            let of_remote = self.remote_bytes.get_or_create(&labels).clone();
            (all, of_remote)
        };
        let (to_remote, from_remote) = (bytes(Direction::ToRemote), bytes(Direction::FromRemote));
        ConnectionCount {
            metrics: self.clone(),
            entrance,
            remote,
            to_remote,
            from_remote,
        }
    }

    /// A dial failed with `code`.
    pub(crate) fn dial_failed(&self, code: Code) {
        let reason = format!("{code:?}");
        let reason = snake_case(&reason);
        self.dial_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A call was refused for its token.
    pub(crate) fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// A call was refused because its address failed too often.
    pub(crate) fn throttled(&self) {
        self.throttled.inc();
    }

    /// A TLS handshake on `listener` ended with `result`.
    pub(crate) fn handshake(&self, listener: Listener, result: HandshakeResult) {
        self.handshakes
            .get_or_create(&HandshakeLabels { listener, result })
            .inc();
    }

    /// Forgets `remote`'s own series once it has gone and carries nothing: the series of
    /// remotes that come and go would otherwise grow without bound.
    pub(crate) fn forget_remote(&self, remote: &RemoteName) {
        let remote = remote.to_string();
        let labels = RemoteLabels {
            remote: remote.clone(),
        };
        if self
            .remote_active
            .get(&labels)
            .is_some_and(|active| active.get() > 0)
        {
            return;
        }
        self.remote_active.remove(&labels);
        for direction in [Direction::ToRemote, Direction::FromRemote] {
            let labels = RemoteDirectionLabels {
                remote: remote.clone(),
                direction,
            };
            self.remote_bytes.remove(&labels);
        }
    }
}

/// `DeadlineExceeded` as `deadline_exceeded`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A session, counted until dropped.
#[derive(Debug)]
pub(crate) struct SessionCount(Arc<Metrics>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
}

/// A connection, counted until dropped, and its bytes as they flow.
#[derive(Debug)]
pub(crate) struct ConnectionCount {
    metrics: Arc<Metrics>,
    entrance: Entrance,
    remote: String,
    to_remote: (Counter<u64, AtomicU64>, Counter<u64, AtomicU64>),
    from_remote: (Counter<u64, AtomicU64>, Counter<u64, AtomicU64>),
}

impl ConnectionCount {
    /// `n` bytes went to the remote.
    pub(crate) fn went_to_remote(&self, n: usize) {
        self.to_remote.0.inc_by(n as u64);
        self.to_remote.1.inc_by(n as u64);
    }

    /// `n` bytes came from the remote.
    pub(crate) fn came_from_remote(&self, n: usize) {
        self.from_remote.0.inc_by(n as u64);
        self.from_remote.1.inc_by(n as u64);
    }

    /// The first byte from the remote came `after` the dial began.
    pub(crate) fn first_byte(&self, after: Duration) {
        self.metrics.first_byte_seconds.observe(after.as_secs_f64());
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        let labels = EntranceLabels {
            entrance: self.entrance,
        };
        self.metrics.active.get_or_create(&labels).dec();
        let labels = RemoteLabels {
            remote: std::mem::take(&mut self.remote),
        };
        self.metrics.remote_active.get_or_create(&labels).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_count_in_and_out_and_bytes_as_they_flow() {
        let metrics = Arc::new(Metrics::new());
        let pi = RemoteName::new("pi").unwrap();
        let connection = metrics.connection(Entrance::Tcp, &pi, Duration::from_millis(3));
        connection.went_to_remote(10);
        connection.came_from_remote(7);
        let text = metrics.encode();
        for line in [
            "sesame_relay_connections_opened_total{entrance=\"tcp\"} 1",
            "sesame_relay_connections_active{entrance=\"tcp\"} 1",
            "sesame_relay_bytes_total{direction=\"to_remote\"} 10",
            "sesame_relay_remote_bytes_total{remote=\"pi\",direction=\"from_remote\"} 7",
            "sesame_relay_dial_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(connection);
        metrics.forget_remote(&pi);
        let text = metrics.encode();
        assert!(text.contains("sesame_relay_connections_active{entrance=\"tcp\"} 0"));
        assert!(!text.contains("remote=\"pi\""), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn dial_failures_are_named_by_their_code() {
        let metrics = Metrics::new();
        metrics.dial_failed(Code::DeadlineExceeded);
        let text = metrics.encode();
        assert!(
            text.contains("sesame_relay_dial_failures_total{reason=\"deadline_exceeded\"} 1"),
            "{text}"
        );
    }
}
