//! The relay's settings: every one of them, so that the parts that read them depend on this
//! module and on nothing else of the relay's.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use sesame_tunnel::TransportSettings;

/// How a relay behaves. The defaults suit a relay on a trusted network.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// How long a dial waits for the agent to accept or refuse it.
    pub dial_timeout: Duration,
    /// How long a new call may take to send its opening message (a session's hello, a dial's
    /// target, a data stream's ticket).
    pub handshake_timeout: Duration,
    /// How long open connections may run after the relay is told to shut down.
    pub grace_period: Duration,
    /// How many control messages (dial notices, confirmations) may wait for a slow agent;
    /// further dials wait for room, within the dial timeout.
    pub control_queue: usize,
    /// The most concurrent streams on one HTTP/2 connection: one per tunneled connection,
    /// plus an agent's control stream.
    pub max_concurrent_streams: u32,
    /// HTTP/2 windows and frame sizes.
    pub transport: TransportSettings,
    /// The public HTTP listeners' limits.
    pub http: HttpConfig,
    /// The most remotes one token may hold at once.
    pub max_remotes_per_token: usize,
    /// The most remote names one token may own. A name stays with the token that registered
    /// it first, connected or not, until the token is revoked or expires.
    pub max_names_per_token: usize,
    /// The most connections one remote may carry at once for token holders (`Dial` calls);
    /// public clients have a budget of their own, [`PublicLimits::connections_per_remote`].
    pub max_connections_per_remote: usize,
    /// The most ports one session may expose at once.
    pub max_ports_per_session: usize,
    /// The most public TCP ports one token may hold, counting the ports held for it after
    /// its remotes went away.
    pub max_tcp_ports_per_token: usize,
    /// How long a public TCP port stays held for the token whose remote had it, once the
    /// remote went away: no other token's remote gets it meanwhile, and the remote gets it
    /// back when it returns, across relay restarts too.
    pub tcp_port_hold: Duration,
    /// The most connections one client address (an IPv6 /64) may have open to the gRPC
    /// listener, TLS handshakes included.
    pub max_connections_per_address: usize,
    /// The most TLS handshakes one client address (an IPv6 /64) may have under way, on the
    /// gRPC listener and on the public HTTPS listener each; a new one beyond it sheds that
    /// address's oldest.
    pub max_handshakes_per_address: usize,
    /// What anonymous clients of public endpoints may take.
    pub public: PublicLimits,
    /// How many authentications may fail from one address, and how fast it may try again.
    pub failed_auth: FailureBudget,
    /// Threads that serve the connections [`Relay::serve`](crate::Relay::serve),
    /// [`serve_tls`](crate::Relay::serve_tls) and the public HTTP listeners accept, each
    /// thread with a single-threaded runtime of its own. A connection stays on the thread it
    /// was handed to, with everything it starts: an agent's calls, its public TCP ports and
    /// the connections they carry. 0 (the default) serves them on the runtime that runs the
    /// relay, as [`serve_with_incoming`](crate::Relay::serve_with_incoming) always does.
    pub worker_threads: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            dial_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            control_queue: 256,
            max_concurrent_streams: 4096,
            transport: TransportSettings::default(),
            http: HttpConfig::default(),
            max_remotes_per_token: 1000,
            max_names_per_token: 10_000,
            max_connections_per_remote: 1024,
            max_ports_per_session: 256,
            max_tcp_ports_per_token: 64,
            tcp_port_hold: Duration::from_secs(24 * 60 * 60),
            max_connections_per_address: 1024,
            max_handshakes_per_address: 64,
            public: PublicLimits::default(),
            failed_auth: FailureBudget {
                burst: 20,
                refill: Duration::from_secs(3),
            },
            worker_threads: 0,
        }
    }
}

/// What the anonymous clients of public endpoints (HTTP virtual hosts, TCP ports) may take:
/// budgets of their own, so that they never lock token holders out of a remote.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublicLimits {
    /// The most public connections one remote may carry at once.
    pub connections_per_remote: usize,
    /// The most connections one client address (an IPv6 /64) may have through the public
    /// HTTP listeners and TCP ports together: its own, and those the relay opens to remotes
    /// for its HTTP requests.
    pub connections_per_address: usize,
    /// How long a public TCP connection may carry no bytes either way before it is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for PublicLimits {
    fn default() -> Self {
        PublicLimits {
            connections_per_remote: 1024,
            connections_per_address: 256,
            tcp_idle_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Settings of the public HTTP listeners.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpConfig {
    /// How long a client may take to send a request head (and, for HTTPS, its TLS handshake)
    /// before the connection is cut.
    pub head_timeout: Duration,
    /// The largest request head; larger ones get `431 Request Header Fields Too Large`.
    pub max_head_bytes: usize,
    /// The most concurrent requests on one HTTP/2 client connection.
    pub max_streams: u32,
    /// How long a client connection may stay open with no request under way.
    pub idle_timeout: Duration,
    /// How long a request body may send nothing before the request is abandoned.
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 64 << 10,
            max_streams: 256,
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// How many failures an address may make at once, and how fast its allowance comes back.
#[derive(Clone, Copy, Debug)]
pub struct FailureBudget {
    /// Failures allowed in a burst.
    pub burst: u32,
    /// One more failure is allowed after each period.
    pub refill: Duration,
}

/// The TCP ports a relay may publish remotes' ports on.
#[derive(Clone, Debug)]
pub struct TcpPortRange {
    /// The address to listen on.
    pub bind: IpAddr,
    /// The ports, for example `20000..=20999`.
    pub ports: RangeInclusive<u16>,
    /// The host clients connect to, as published in addresses (`host:port`).
    pub public_host: String,
}
