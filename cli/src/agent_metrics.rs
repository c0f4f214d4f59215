//! `expose --metrics-listen`: the agent's figures for Prometheus, read from its session at each
//! scrape: whether it is connected, the connections it carried and carries, the dials it could
//! not serve, the bytes as they flow, and the process's own CPU, memory and descriptors.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sesame_relay::metrics::ProcessCollector;
use sesame_tunnel::Session;

/// Reads a session's figures at each scrape.
#[derive(Debug)]
struct AgentCollector {
    session: Session,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.session.stats();
        let remote = self.session.name().to_string();
        let labels = [("remote", remote.as_str())];
        let connected = i64::from(self.session.id().is_some());
        let gauges = [
            (
                "sesame_agent_connected",
                "Whether the agent's session with the relay is up (1) or reconnecting (0)",
                connected,
            ),
            (
                "sesame_agent_connections_active",
                "Connections the agent carries now",
                i64::try_from(stats.connections_open).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(family.encode_family(&labels)?)?;
        }
        let counters = [
            (
                "sesame_agent_connections_opened",
                "Connections the agent accepted",
                stats.connections_total,
            ),
            (
                "sesame_agent_dial_failures",
                "Dials the agent could not serve (its target refused, say)",
                stats.dials_failed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(family.encode_family(&labels)?)?;
        }
        let bytes = [
            ("from_dialers", stats.bytes_in),
            ("to_dialers", stats.bytes_out),
        ];
        let help = "Bytes carried, counted as they flow";
        let kind = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor("sesame_agent_bytes", help, None, kind)?;
        for (direction, value) in bytes {
            let labels = [("remote", remote.as_str()), ("direction", direction)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// What renders `session`'s metrics, in the OpenMetrics text format.
pub(crate) fn renderer(session: Session) -> impl Fn() -> String + Send + Sync + 'static {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry.register_collector(Box::new(AgentCollector { session }));
    move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a string cannot fail");
        text
    }
}
