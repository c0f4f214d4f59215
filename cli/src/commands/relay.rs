//! `sesame relay serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sesame_relay::tls::ReloadingCertificate;
use sesame_relay::{Relay, RelayConfig, TcpPortRange};
use sesame_tunnel::TransportSettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::ServeArgs;

/// How often the certificate files are checked for changes.
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

pub async fn serve(args: ServeArgs, transport: TransportSettings) -> anyhow::Result<()> {
    if args.domain.is_some() && args.http_listen.is_none() && args.https_listen.is_none() {
        bail!("--domain needs --http-listen or --https-listen: where to serve the virtual hosts");
    }
    let listener = bind(args.listen).await?;
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
    let mut relay = Relay::builder().config(config);

    let stop_watching = CancellationToken::new();
    let _stop_watching = stop_watching.clone().drop_guard();
    if let Some(domain) = &args.domain {
        relay = relay.domain(domain.clone());
        let domain = relay_domain(domain);
        if let Some(http) = args.http_listen {
            let listener = bind(http).await?;
            println!("serving http://*.{domain} on {}", listener.local_addr()?);
            relay = relay.http_listener(listener);
        }
        if let (Some(https), Some(cert), Some(key)) =
            (args.https_listen, &args.tls_cert, &args.tls_key)
        {
            let certificate = ReloadingCertificate::load(cert, key)?;
            let listener = bind(https).await?;
            println!(
                "serving https://*.{domain} on {} (certificate SHA-256 {})",
                listener.local_addr()?,
                certificate.fingerprint()
            );
            relay = relay.https_listener(listener, certificate.server_config());
            tokio::spawn(
                certificate
                    .clone()
                    .watch(CERTIFICATE_POLL, stop_watching.clone()),
            );
            tokio::spawn(reload_on_hangup(certificate));
        }
    }
    if let Some(ports) = args.tcp_ports {
        let bind = args.tcp_bind.unwrap_or(addr.ip());
        let public_host = args
            .public_host
            .clone()
            .or_else(|| args.domain.as_deref().map(relay_domain))
            .unwrap_or_else(|| bind.to_string());
        println!(
            "publishing TCP ports {}-{} on {bind}",
            ports.start(),
            ports.end()
        );
        relay = relay.tcp_ports(TcpPortRange {
            bind,
            ports,
            public_host,
        });
    }
    relay
        .build()
        .serve(listener, super::stop_requested())
        .await
        .context("the relay failed")?;
    println!("relay stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The domain as the relay uses it: lowercase, without a trailing dot.
fn relay_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Reloads the certificate on each SIGHUP, keeping the old one if the files are bad.
async fn reload_on_hangup(certificate: Arc<ReloadingCertificate>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match certificate.reload() {
                Ok(true) => info!(fingerprint = %certificate.fingerprint(), "certificate reloaded"),
                Ok(false) => info!("SIGHUP: the certificate is unchanged"),
                Err(error) => warn!(%error, "SIGHUP: keeping the old certificate"),
            }
        }
    }
}
