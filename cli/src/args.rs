//! The command line.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sesame_tunnel::{Fingerprint, RelayUrl, RemoteName, Token, TransportSettings};

use crate::relay_limits::LimitArgs;
use crate::spec::ExposeSpec;

/// Reverse tunnels over gRPC: expose ports from behind NAT, reach them through your own relay.
#[derive(Debug, Parser)]
#[command(
    name = "sesame",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Which relay, and how to trust it and sign in.
    #[command(flatten)]
    pub client: ClientFlags,

    /// How soon a dead peer (the relay, or an agent, or a dialer) is noticed: pings go out
    /// after two thirds of it without news.
    #[arg(long, global = true, env = "SESAME_KEEPALIVE", default_value = "15s", value_parser = parse_keepalive, value_name = "DURATION")]
    pub keepalive: Duration,

    /// Log more: -v for info, -vv for debug, -vvv for trace. RUST_LOG, if set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How log lines are written to stderr: text for people, or json (one object per line,
    /// with the fields of the spans it happened in: remote, session, port, client) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "SESAME_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which relay a client uses, how it trusts the relay's certificate, and its token: flags and
/// environment first, then what `sesame login` stored.
#[derive(Debug, Args)]
pub(crate) struct ClientFlags {
    /// The relay to use (`https://HOST:PORT`, or `http://` for a plaintext relay on
    /// loopback); the one `sesame login` last logged in to, else https://127.0.0.1:7373.
    #[arg(long, global = true, env = "SESAME_RELAY", value_name = "URL")]
    pub relay: Option<RelayUrl>,

    /// The token to present to the relay, instead of the one `sesame login` stored.
    #[arg(
        long,
        global = true,
        env = "SESAME_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,

    /// Trust the relay's certificate with this SHA-256 fingerprint (as the relay prints it),
    /// whatever signed it: for a relay with a self-signed certificate.
    #[arg(long, global = true, env = "SESAME_FINGERPRINT", value_name = "SHA256")]
    pub fingerprint: Option<Fingerprint>,

    /// Trust relay certificates signed by the authorities in this PEM file, instead of the
    /// system's.
    #[arg(
        long,
        global = true,
        env = "SESAME_CA",
        value_name = "FILE",
        conflicts_with = "fingerprint"
    )]
    pub ca: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run or manage a relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Expose local ports through the relay, until Ctrl-C.
    Expose(ExposeArgs),
    /// Connect to a port of a remote: listen locally, or carry one connection on stdin/stdout.
    Connect(ConnectArgs),
    /// List the remotes connected to the relay that your token may see.
    Ls(LsArgs),
    /// Log in to a relay: check its certificate, and store its token in the system keyring
    /// (or a file only you can read).
    Login(LoginArgs),
    /// Forget what `login` stored for a relay.
    Logout(LogoutArgs),
    /// Print a completion script for a shell: `sesame completions bash > /etc/bash_completion.d/sesame`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `sesame man | man -l -`.
    Man,
}

/// `sesame completions`
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `sesame login`
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The relay (`https://HOST:PORT`).
    #[arg(value_name = "RELAY_URL")]
    pub url: RelayUrl,
}

/// `sesame logout`
#[derive(Debug, Args)]
pub(crate) struct LogoutArgs {
    /// The relay; the one --relay names, else the last one logged in to.
    #[arg(value_name = "RELAY_URL")]
    pub url: Option<RelayUrl>,
}

/// `sesame relay ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Serve the relay: agents register with it, dialers connect through it.
    Serve(Box<ServeArgs>),
    /// Manage the relay's tokens (needs a token with the admin scope).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `sesame relay token ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; it is shown once.
    Create(TokenCreateArgs),
    /// List the relay's tokens.
    Ls(TokenLsArgs),
    /// Revoke a token: its sessions and connections end at once.
    Revoke(TokenRevokeArgs),
}

/// `sesame relay token create`
#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    /// What the token may do: admin, expose:PATTERN (register remotes so named) or
    /// connect:PATTERN (dial them); `*` in a pattern matches anything. Repeatable.
    #[arg(long = "scope", required = true, value_name = "SCOPE", value_parser = parse_scope)]
    pub scopes: Vec<String>,

    /// A description for people (`laptop of Ada`).
    #[arg(long, default_value = "")]
    pub label: String,

    /// How long the token is valid (`30d`, `12h`); for ever unless given.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,

    /// Print JSON (the token, with its secret) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sesame relay token ls`
#[derive(Debug, Args)]
pub(crate) struct TokenLsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `sesame relay token revoke`
#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    /// The token's id (the 8 hex digits after `sesame_`, as `relay token ls` shows).
    #[arg(value_name = "ID")]
    pub id: String,

    /// Print JSON (the revoked token) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sesame relay serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7373", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// How long open connections may run after SIGINT or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// How many threads serve connections: one per core by default. Each connection stays on
    /// one thread with everything it carries. With 1, everything runs on one thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// How long a dial waits for the remote's agent to answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub dial_timeout: Duration,

    /// Where the relay keeps its tokens (hashed) and its self-signed certificate.
    #[arg(long, env = "SESAME_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Serve gRPC without TLS: accepted only on a loopback address, where nothing crosses a
    /// network.
    #[arg(long)]
    pub insecure_plaintext: bool,

    /// The certificate chain (PEM) for the gRPC listener and, with --https-listen, the virtual
    /// hosts; a self-signed one kept in the data directory unless given. Reloaded when the
    /// file changes and on SIGHUP, without dropping connections.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "insecure_plaintext"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key, PEM.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: keep it on a private
    /// address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Serve HTTP virtual hosts: a remote's published HTTP port is NAME.DOMAIN. Needs
    /// --http-listen or --https-listen.
    #[arg(long, value_name = "DOMAIN", help_heading = "Public endpoints")]
    pub domain: Option<String>,

    /// Serve the virtual hosts over plain HTTP here (HTTP/1.1, and HTTP/2 with prior
    /// knowledge).
    #[arg(
        long,
        value_name = "ADDR",
        requires = "domain",
        help_heading = "Public endpoints"
    )]
    pub http_listen: Option<SocketAddr>,

    /// Serve the virtual hosts over HTTPS here (HTTP/1.1, and HTTP/2 through ALPN), with
    /// --tls-cert and --tls-key (a certificate for *.DOMAIN).
    #[arg(long, value_name = "ADDR", requires_all = ["domain", "tls_cert", "tls_key"], help_heading = "Public endpoints")]
    pub https_listen: Option<SocketAddr>,

    /// Publish remotes' ports on TCP ports of this range when they ask (`20000-20999`, or
    /// one port).
    #[arg(long, value_name = "RANGE", value_parser = parse_port_range, help_heading = "Public endpoints")]
    pub tcp_ports: Option<RangeInclusive<u16>>,

    /// The address the TCP ports listen on; the --listen address's by default.
    #[arg(
        long,
        value_name = "IP",
        requires = "tcp_ports",
        help_heading = "Public endpoints"
    )]
    pub tcp_bind: Option<IpAddr>,

    /// The host name clients use to reach the relay, as printed in TCP addresses; the
    /// domain, else the TCP ports' address, by default.
    #[arg(
        long,
        value_name = "HOST",
        requires = "tcp_ports",
        help_heading = "Public endpoints"
    )]
    pub public_host: Option<String>,
}

/// `sesame expose`
#[derive(Debug, Args)]
pub(crate) struct ExposeArgs {
    /// The ports to expose: PORT (to localhost:PORT), HOST:PORT, PORT:PORT (exposed:local),
    /// or PORT:HOST:PORT.
    #[arg(required = true, value_name = "PORT")]
    pub ports: Vec<ExposeSpec>,

    /// The remote's name (lowercase letters, digits, hyphens); derived from the host name
    /// unless given.
    #[arg(long)]
    pub name: Option<RemoteName>,

    /// Also serve a port as the HTTP virtual host NAME.DOMAIN of the relay: --http for the
    /// only port given, --http=PORT to pick one.
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "0", help_heading = "Public endpoints")]
    pub http: Option<u16>,

    /// The HTTP service speaks HTTP/2 without TLS (h2c), as gRPC servers do; implies --http.
    #[arg(long, help_heading = "Public endpoints")]
    pub http2: bool,

    /// The Host header the HTTP service receives, instead of the client's.
    #[arg(long, value_name = "HOST", help_heading = "Public endpoints")]
    pub host_header: Option<String>,

    /// Also publish a port on a TCP port of the relay: --tcp for the only port given,
    /// --tcp=PORT to pick one; may be repeated.
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "0", action = clap::ArgAction::Append, help_heading = "Public endpoints")]
    pub tcp: Vec<u16>,

    /// The relay port to ask for (with one --tcp); any free one of the relay's range unless
    /// given.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Public endpoints")]
    pub remote_port: Option<u16>,

    /// Send a PROXY protocol v2 header first on each public TCP connection, so that the local
    /// service sees the client's address.
    #[arg(long, help_heading = "Public endpoints")]
    pub proxy_protocol: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: keep it on loopback or a
    /// private address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `sesame connect`
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The remote to connect to.
    pub name: RemoteName,

    /// The remote's exposed port.
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Listen here and carry each accepted connection to the remote (default 127.0.0.1:0, a
    /// free port).
    #[arg(long, value_name = "ADDR", conflicts_with = "stdio")]
    pub listen: Option<SocketAddr>,

    /// Carry one connection over stdin and stdout, as for `ssh -o ProxyCommand=...`.
    #[arg(long)]
    pub stdio: bool,
}

/// `sesame ls`
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The transport tuning every subcommand uses.
    pub(crate) fn transport(&self) -> TransportSettings {
        TransportSettings::default().with_dead_peer_timeout(self.keepalive)
    }
}

/// A scope, checked here so that a typo fails before the relay is asked.
fn parse_scope(text: &str) -> Result<String, String> {
    text.parse::<sesame_relay::auth::Scope>()
        .map(|scope| scope.to_string())
}

/// A keepalive bound: at least 300ms, so that pings stay sparse.
fn parse_keepalive(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(300) {
        return Err("the keepalive must be at least 300ms".to_owned());
    }
    Ok(duration)
}

/// A port range, `LOW-HIGH` or one port.
fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |text: &str| match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "{text:?} is not a port: ports are numbers from 1 to 65535"
        )),
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(text)?, port(text)?),
    };
    if low > high {
        return Err(format!("the range {text:?} is empty: write LOW-HIGH"));
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("20000-20999").unwrap(), 20000..=20999);
        assert_eq!(parse_port_range("5432").unwrap(), 5432..=5432);
        assert!(parse_port_range("20-10").unwrap_err().contains("empty"));
        assert!(parse_port_range("0-10").unwrap_err().contains("not a port"));
        assert!(parse_port_range("a-b").unwrap_err().contains("not a port"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
