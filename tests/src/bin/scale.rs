//! The scale bench: one relay process, many light agents from the library in this process.
//!
//! `scale RELAY_BIN AGENTS CONNECTIONS` starts `RELAY_BIN relay serve` on `127.0.0.1:0`, then
//! measures, and prints as a markdown table:
//! - the relay's RSS at idle and with AGENTS agents registered, and so per agent;
//! - registrations per second (256 agents connecting at a time);
//! - the time until every agent is registered again after the relay restarts on the same
//!   address;
//! - the relay's RSS with CONNECTIONS tunneled connections open at once (each one echoed once,
//!   so it is established end to end), and so per connection.
//!
//! `scripts/bench/scale.sh` builds it and runs it for 1,000 and 10,000 agents.

use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sesame_tests::{RelayBanner, echo_listener};
use sesame_tunnel::{
    Dialer, Event, Reconnect, RelayAccess, RemoteName, Session, Token, TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// How many agents connect, or connections open, at a time.
const AT_ONCE: usize = 256;

/// How many agents carry the tunneled connections.
const SERVING_AGENTS: usize = 100;

/// How many HTTP/2 connections the dialers spread their connections over: the relay allows
/// 4,096 streams on each.
const DIALER_CHANNELS: usize = 8;

/// The longest any phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The relay under test, as a process of its own, with TLS and tokens as by default.
struct RelayProcess {
    child: Child,
    addr: String,
    access: RelayAccess,
}

impl RelayProcess {
    /// Starts the relay on `listen` with its data in `data_dir`; `token` is the admin token of
    /// an earlier start on the same directory.
    fn start(
        bin: &str,
        listen: &str,
        data_dir: &std::path::Path,
        token: Option<Token>,
    ) -> Result<Self, Failure> {
        let mut child = Command::new(bin)
            .args(["relay", "serve", "--listen", listen, "--grace", "1s"])
            .args(["--max-remotes-per-token", "1000000"])
            // Every agent here comes from 127.0.0.1, as a fleet behind one NAT would.
            .args(["--max-connections-per-address", "1000000"])
            .args(["--max-handshakes-per-address", "1024"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout);
        let banner = RelayBanner::read(&mut lines, token.is_none())?;
        // Keep reading, so the relay never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        let token = token.or(banner.admin_token.clone());
        Ok(RelayProcess {
            child,
            addr: banner.addr.to_string(),
            access: banner.access(token),
        })
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> Result<u64, Failure> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .ok_or("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).ok_or("no figure")?.parse()?)
    }

    /// Stops the relay with SIGTERM (a drain) and waits for it to exit.
    fn stop(mut self) -> Result<(), Failure> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err("kill failed".into());
        }
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the relay's RSS until it stops moving: three equal readings 200 ms apart, at most
/// 25 readings. Nothing signals "settled", so this samples.
async fn settled_rss(relay: &RelayProcess) -> Result<u64, Failure> {
    let every = Duration::from_millis(200);
    let mut samples = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last = (relay.rss_kib()?, 0);
    for _ in 0..25 {
        samples.tick().await;
        let now = relay.rss_kib()?;
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        if last.1 >= 2 {
            break;
        }
    }
    Ok(last.0)
}

async fn register(url: &RelayAccess, count: usize) -> Result<Vec<Session>, Failure> {
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut pending: FuturesUnordered<_> = (0..count)
        .map(|n| {
            let (gate, url) = (gate.clone(), url.clone());
            async move {
                let _turn = gate.acquire().await?;
                let session = Session::builder(RemoteName::new(format!("agent-{n}"))?)
                    .relay(url)
                    .transport(TransportSettings::default())
                    .reconnect(Reconnect::new(
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                    ))
                    .connect()
                    .await?;
                Ok::<_, Failure>(session)
            }
        })
        .collect();
    let mut sessions = Vec::with_capacity(count);
    while let Some(session) = pending.next().await {
        sessions.push(session?);
    }
    Ok(sessions)
}

/// Waits until every session has reported `Reconnected` once.
async fn all_reconnected(events: Vec<tokio::sync::broadcast::Receiver<Event>>) {
    let mut pending: FuturesUnordered<_> = events
        .into_iter()
        .map(|mut events| async move {
            loop {
                match events.recv().await {
                    Ok(Event::Reconnected) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .collect();
    while pending.next().await.is_some() {}
}

/// Opens `count` tunneled connections spread over the serving agents, echoes one byte on each,
/// and returns them, all open.
async fn open_connections(
    url: &RelayAccess,
    agents: usize,
    count: usize,
) -> Result<Vec<sesame_tunnel::Connection>, Failure> {
    let mut dialers = Vec::new();
    for _ in 0..DIALER_CHANNELS {
        let settings = TransportSettings::default();
        dialers.push(Dialer::new(url.connect(&settings).await?, settings));
    }
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut pending: FuturesUnordered<_> = (0..count)
        .map(|n| {
            let gate = gate.clone();
            let dialer = dialers[n % DIALER_CHANNELS].clone();
            async move {
                let _turn = gate.acquire().await?;
                let name = RemoteName::new(format!("agent-{}", n % SERVING_AGENTS.min(agents)))?;
                let mut conn = dialer.dial(&name, 1).await?;
                conn.write_all(b"x").await?;
                let mut echo = [0; 1];
                conn.read_exact(&mut echo).await?;
                Ok::<_, Failure>(conn)
            }
        })
        .collect();
    let mut open = Vec::with_capacity(count);
    while let Some(conn) = pending.next().await {
        open.push(conn?);
    }
    Ok(open)
}

async fn within<T>(what: &str, phase: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(PHASE_LIMIT, phase)
        .await
        .map_err(|_| format!("{what} took more than {PHASE_LIMIT:?}").into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let [_, relay_bin, agents, connections] = &args[..] else {
        return Err("usage: scale RELAY_BIN AGENTS CONNECTIONS".into());
    };
    let (agents, connections): (usize, usize) = (agents.parse()?, connections.parse()?);

    let data_dir = tempfile::tempdir()?;
    let relay = RelayProcess::start(relay_bin, "127.0.0.1:0", data_dir.path(), None)?;
    let url = relay.access.clone();
    let idle = settled_rss(&relay).await?;

    let started = Instant::now();
    let sessions = within("registering", register(&url, agents)).await??;
    let registering = started.elapsed();
    let registered = settled_rss(&relay).await?;

    let events: Vec<_> = sessions.iter().map(Session::events).collect();
    let addr = relay.addr.clone();
    relay.stop()?;
    let restarted = Instant::now();
    let relay = RelayProcess::start(relay_bin, &addr, data_dir.path(), url.token.clone())?;
    within("registering again", all_reconnected(events)).await?;
    let back = restarted.elapsed();
    let registered_again = settled_rss(&relay).await?;

    let serving = (0..SERVING_AGENTS.min(agents))
        .map(|n| format!("agent-{n}"))
        .collect::<std::collections::HashSet<_>>();
    for session in &sessions {
        if serving.contains(&session.name().to_string()) {
            echo_listener(session, 1).await;
        }
    }
    let before = settled_rss(&relay).await?;
    let open = within(
        "opening connections",
        open_connections(&url, agents, connections),
    )
    .await??;
    let with_connections = settled_rss(&relay).await?;

    let per_agent = (registered.saturating_sub(idle)) as f64 / agents as f64;
    let per_connection = (with_connections.saturating_sub(before)) as f64 / connections as f64;
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| agents | {agents} |");
    println!("| relay RSS, idle | {:.1} MiB |", mib(idle));
    println!(
        "| relay RSS, agents registered | {:.1} MiB |",
        mib(registered)
    );
    println!("| relay RSS per agent | {per_agent:.1} KiB |");
    println!(
        "| registrations per second | {:.0} |",
        agents as f64 / registering.as_secs_f64()
    );
    println!(
        "| all registered again after a relay restart | {:.2} s |",
        back.as_secs_f64()
    );
    println!(
        "| relay RSS, registered again | {:.1} MiB |",
        mib(registered_again)
    );
    println!("| tunneled connections open | {} |", open.len());
    println!("| relay RSS with them | {:.1} MiB |", mib(with_connections));
    println!("| relay RSS per connection | {per_connection:.1} KiB |");
    drop(open);
    drop(sessions);
    Ok(())
}
