//! `relay serve`'s limits: what one token, remote, session or client address may take of a
//! relay, as flags, and the relay settings they make.

use std::time::Duration;

use clap::Args;
use sesame_relay::RelayConfig;

/// The limits a relay keeps. Each default is the relay library's own (a test checks that
/// they agree).
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// The most remotes one token may hold at once.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_remotes_per_token: usize,

    /// The most remote names one token may own; a name stays with the token that registered
    /// it first until the token is revoked or expires.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_names_per_token: usize,

    /// The most connections one remote may carry at once for token holders.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections_per_remote: usize,

    /// The most connections one remote may carry at once for public clients (virtual hosts,
    /// TCP ports): a budget of their own, so token holders always get through.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_public_connections_per_remote: usize,

    /// The most ports one agent session may expose at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_ports_per_session: usize,

    /// The most public TCP ports one token may hold, counting those held for it after its
    /// remotes went away.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_tcp_ports_per_token: usize,

    /// How long a public TCP port stays held for the token whose remote had it, once the
    /// remote went away (across relay restarts too).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub tcp_port_hold: Duration,

    /// The most connections one client address (an IPv6 /64) may have open to the gRPC
    /// listener.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections_per_address: usize,

    /// The most connections one client address (an IPv6 /64) may have through the public
    /// HTTP listeners and TCP ports together: its own, and those the relay opens to remotes
    /// for its requests.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_public_connections_per_address: usize,

    /// The most TLS handshakes one client address (an IPv6 /64) may have under way on a
    /// listener; a new one beyond it sheds that address's oldest.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_handshakes_per_address: usize,

    /// How long a new connection may take for its TLS handshake, and a new call for its first
    /// message.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// How long a public TCP connection, or a switched protocol (WebSocket) of a virtual host,
    /// may carry nothing either way before it is closed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub public_tcp_idle_timeout: Duration,

    /// How long a public HTTP/2 connection may stay open with no request under way (an
    /// HTTP/1.1 connection waits for its next request no longer than --handshake-timeout).
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub http_idle_timeout: Duration,

    /// How long a public HTTP request body may send nothing before the request is abandoned
    /// (gRPC requests are not timed).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub http_body_timeout: Duration,
}

impl LimitArgs {
    /// Sets these limits in `config`.
    pub(crate) fn apply(&self, config: &mut RelayConfig) {
        config.max_remotes_per_token = self.max_remotes_per_token;
        config.max_names_per_token = self.max_names_per_token;
        config.max_connections_per_remote = self.max_connections_per_remote;
        config.public.connections_per_remote = self.max_public_connections_per_remote;
        config.max_ports_per_session = self.max_ports_per_session;
        config.max_tcp_ports_per_token = self.max_tcp_ports_per_token;
        config.tcp_port_hold = self.tcp_port_hold;
        config.max_connections_per_address = self.max_connections_per_address;
        config.public.connections_per_address = self.max_public_connections_per_address;
        config.max_handshakes_per_address = self.max_handshakes_per_address;
        config.handshake_timeout = self.handshake_timeout;
        config.http.head_timeout = self.handshake_timeout;
        config.public.tcp_idle_timeout = self.public_tcp_idle_timeout;
        config.http.idle_timeout = self.http_idle_timeout;
        config.http.body_timeout = self.http_body_timeout;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn the_flags_defaults_are_the_relays() {
        let flags = Flags::try_parse_from(["relay"]).unwrap();
        let mut config = RelayConfig::default();
        flags.limits.apply(&mut config);
        // Debug shows every setting: the flags changed none.
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", RelayConfig::default())
        );
    }

    #[test]
    fn each_flag_reaches_its_setting() {
        let flags = Flags::try_parse_from([
            "relay",
            "--max-ports-per-session",
            "3",
            "--tcp-port-hold",
            "5m",
            "--max-public-connections-per-address",
            "7",
        ])
        .unwrap();
        let mut config = RelayConfig::default();
        flags.limits.apply(&mut config);
        assert_eq!(config.max_ports_per_session, 3);
        assert_eq!(config.tcp_port_hold, Duration::from_secs(300));
        assert_eq!(config.public.connections_per_address, 7);
    }
}
