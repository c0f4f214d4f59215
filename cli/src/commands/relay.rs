//! `sesame relay serve`.

use anyhow::Context;
use sesame_relay::{Relay, RelayConfig};
use sesame_tunnel::TransportSettings;
use tokio::net::TcpListener;
use tracing::warn;

use crate::args::ServeArgs;

pub async fn serve(args: ServeArgs, transport: TransportSettings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("relay listening on {addr}");
    println!("expose a port with: sesame --relay http://{addr} expose 8080");
    if !addr.ip().is_loopback() {
        warn!(
            "{addr} is reachable from other machines and this relay does not authenticate \
             anyone yet: whoever reaches it can register remotes and dial them"
        );
    }
    let mut config = RelayConfig::default();
    config.grace_period = args.grace;
    config.dial_timeout = args.dial_timeout;
    config.transport = transport;
    Relay::builder()
        .config(config)
        .build()
        .serve(listener, super::stop_requested())
        .await
        .context("the relay failed")?;
    println!("relay stopped");
    Ok(())
}
