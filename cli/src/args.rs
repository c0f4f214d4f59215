//! The command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sesame_tunnel::{DEFAULT_RELAY, RelayUrl, RemoteName, TransportSettings};

use crate::spec::ExposeSpec;

/// Reverse tunnels over gRPC: expose ports from behind NAT, reach them through your own relay.
#[derive(Debug, Parser)]
#[command(
    name = "sesame",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The relay to use (`http://HOST:PORT`).
    #[arg(long, global = true, env = "SESAME_RELAY", default_value = DEFAULT_RELAY, value_name = "URL")]
    pub relay: RelayUrl,

    /// How soon a dead peer (the relay, or an agent, or a dialer) is noticed: pings go out
    /// after two thirds of it without news.
    #[arg(long, global = true, env = "SESAME_KEEPALIVE", default_value = "15s", value_parser = parse_keepalive, value_name = "DURATION")]
    pub keepalive: Duration,

    /// Log more: -v for info, -vv for debug, -vvv for trace. RUST_LOG, if set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run or manage a relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Expose local ports through the relay, until Ctrl-C.
    Expose(ExposeArgs),
    /// Connect to a port of a remote: listen locally, or carry one connection on stdin/stdout.
    Connect(ConnectArgs),
    /// List the remotes connected to the relay.
    Ls(LsArgs),
}

/// `sesame relay ...`
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Serve the relay: agents register with it, dialers connect through it.
    Serve(ServeArgs),
}

/// `sesame relay serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7373", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// How long open connections may run after SIGINT or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// How long a dial waits for the remote's agent to answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub dial_timeout: Duration,
}

/// `sesame expose`
#[derive(Debug, Args)]
pub struct ExposeArgs {
    /// The ports to expose: PORT (to localhost:PORT), HOST:PORT, PORT:PORT (exposed:local),
    /// or PORT:HOST:PORT.
    #[arg(required = true, value_name = "PORT")]
    pub ports: Vec<ExposeSpec>,

    /// The remote's name (lowercase letters, digits, hyphens); derived from the host name
    /// unless given.
    #[arg(long)]
    pub name: Option<RemoteName>,
}

/// `sesame connect`
#[derive(Debug, Args)]
pub struct ConnectArgs {
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
pub struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The transport tuning every subcommand uses.
    pub fn transport(&self) -> TransportSettings {
        TransportSettings::default().with_dead_peer_timeout(self.keepalive)
    }
}

/// A keepalive bound: at least 300ms, so that pings stay sparse.
fn parse_keepalive(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(300) {
        return Err("the keepalive must be at least 300ms".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
