//! `sesame relay serve`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

use sesame_relay::tls::{self, ReloadingCertificate};
use sesame_relay::{Relay, RelayConfig, TcpPortRange, TokenStore};
use sesame_tunnel::TransportSettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::ServeArgs;
use crate::diagnostics;

/// How often the certificate files are checked for changes.
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

pub(crate) async fn serve(args: ServeArgs, transport: TransportSettings) -> anyhow::Result<()> {
    if args.domain.is_some() && args.http_listen.is_none() && args.https_listen.is_none() {
        bail!("--domain needs --http-listen or --https-listen: where to serve the virtual hosts");
    }
    if args.insecure_plaintext && !args.listen.ip().is_loopback() {
        bail!(
            "--insecure-plaintext is accepted only on a loopback address (127.0.0.1, ::1): on {} \
             tokens would cross the network in the clear",
            args.listen.ip()
        );
    }
    let stop = super::stop_requested();
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    // The token store last: a new store's admin token is shown only once, so the relay must
    // not make one and then fail to start.
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // Every listener is bound before the token store is made, for the same reason.
    let http_listener = match (&args.domain, args.http_listen) {
        (Some(_), Some(http)) => Some(bind(http).await?),
        _ => None,
    };
    let https_listener = match (&args.domain, args.https_listen) {
        (Some(_), Some(https)) => Some(bind(https).await?),
        _ => None,
    };
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let certificate = if args.insecure_plaintext {
        None
    } else {
        Some(certificate(&args, &data_dir)?)
    };
    let opened = TokenStore::open(&data_dir)?;
    println!("relay listening on {addr}");
    let url = match &certificate {
        Some((certificate, origin)) => {
            println!("  TLS certificate: {origin}");
            println!("  fingerprint: {}", certificate.fingerprint());
            format!("https://{addr}")
        }
        None => {
            warn!("serving gRPC without TLS (--insecure-plaintext): only for this machine");
            format!("http://{addr}")
        }
    };
    println!("  tokens: {}", opened.store.path().display());
    if let Some(admin) = &opened.new_admin_token {
        let pin = certificate
            .as_ref()
            .map(|(certificate, _)| format!(" --fingerprint {}", certificate.fingerprint()))
            .unwrap_or_default();
        let login = format!("sesame login {url}");
        if let Err(error) = hand_over_admin_token(admin, &login, &pin, &data_dir) {
            // Nobody saw the token: without its store, the next start makes a new one.
            let _ = std::fs::remove_file(opened.store.path());
            return Err(error);
        }
        println!("then create tokens for agents and clients:");
        println!("  sesame relay token create --scope expose:laptop --scope connect:laptop");
    }
    let mut config = RelayConfig::default();
    config.grace_period = args.grace;
    config.dial_timeout = args.dial_timeout;
    args.limits.apply(&mut config);
    config.transport = transport;
    config.worker_threads = worker_threads(args.threads);
    let mut relay = Relay::builder().config(config).tokens(opened.store);

    let stop_watching = CancellationToken::new();
    let _stop_watching = stop_watching.clone().drop_guard();
    if let Some(domain) = &args.domain {
        relay = relay.domain(domain.clone());
        let domain = relay_domain(domain);
        if let Some(listener) = http_listener {
            println!("serving http://*.{domain} on {}", listener.local_addr()?);
            relay = relay.http_listener(listener);
        }
        if let (Some(listener), Some((certificate, _))) = (https_listener, &certificate) {
            println!(
                "serving https://*.{domain} on {} (certificate SHA-256 {})",
                listener.local_addr()?,
                certificate.fingerprint()
            );
            relay = relay.https_listener(listener, certificate.server_config());
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
    if let Some(listener) = metrics_listener {
        println!("metrics at http://{}/metrics", listener.local_addr()?);
        relay = relay.metrics_listener(listener);
    }
    let relay = relay.build();
    diagnostics::include_relay_workers(relay.worker_tasks());
    match certificate {
        Some((certificate, _)) => {
            tokio::spawn(
                certificate
                    .clone()
                    .watch(CERTIFICATE_POLL, stop_watching.clone()),
            );
            tokio::spawn(reload_on_hangup(certificate.clone()));
            let tls = certificate.server_config_for(&[b"h2"]);
            relay.serve_tls(listener, tls, stop).await
        }
        None => relay.serve(listener, stop).await,
    }
    println!("relay stopped");
    Ok(())
}

/// The file in the data directory that holds the first admin token when the relay's output is
/// not a terminal.
const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Gives the first admin token, `secret`, to whoever started the relay, with the `login`
/// command (`sesame login URL`, then `pin`) that uses it. On a terminal it is shown, once.
/// Otherwise the output goes to a file or a journal, which others may read and which keeps it
/// for good: the token goes to a file in `data_dir` that only this user can read, and the
/// output names the file instead.
fn hand_over_admin_token(
    secret: &str,
    login: &str,
    pin: &str,
    data_dir: &Path,
) -> anyhow::Result<()> {
    if std::io::stdout().is_terminal() {
        println!("created this relay's first token, with the admin scope; it is shown only now:");
        println!("  admin token: {secret}");
        println!("log in with it, here or elsewhere:");
        println!("  {login} --token {secret}{pin}");
        return Ok(());
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    sesame_relay::write_private_file(&path, format!("{secret}\n").as_bytes()).with_context(
        || {
            format!(
                "cannot write this relay's first admin token to {}",
                path.display()
            )
        },
    )?;
    println!(
        "created this relay's first token, with the admin scope, in a file only this user can read:"
    );
    println!("  admin token file: {}", path.display());
    println!("log in with it, here or elsewhere (then delete the file):");
    let quoted = shell_quoted(&path.display().to_string());
    println!("  {login} --token \"$(cat {quoted})\"{pin}");
    Ok(())
}

/// `text` as one word of a POSIX shell command: as it is if that is safe, else in single
/// quotes.
fn shell_quoted(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The relay's certificate: the one given, or the self-signed one in the data directory
/// (generated on first start); and where it comes from, to tell.
fn certificate(
    args: &ServeArgs,
    data_dir: &Path,
) -> anyhow::Result<(Arc<ReloadingCertificate>, String)> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let certificate = ReloadingCertificate::load(cert, key)?;
        return Ok((certificate, cert.display().to_string()));
    }
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = gethostname::gethostname().into_string() {
        names.push(host);
    }
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    names.extend(args.public_host.iter().cloned());
    names.sort();
    names.dedup();
    let (certificate, generated) = ReloadingCertificate::self_signed(data_dir, &names)?;
    let path = data_dir.join(tls::SELF_SIGNED_CERT);
    let origin = if generated {
        format!("self-signed, generated now in {}", path.display())
    } else {
        format!("self-signed, {}", path.display())
    };
    Ok((certificate, origin))
}

/// Where a relay keeps its data unless told: the user's data directory.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("dev", "sesame", "sesame")
        .map(|dirs| dirs.data_dir().join("relay"))
        .context("cannot tell where to keep the relay's data (no home directory): pass --data-dir")
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

/// The relay's worker threads for `--threads`: one per core unless set, and none for one
/// thread, where the runtime's own thread serves everything.
fn worker_threads(threads: Option<u16>) -> usize {
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    if threads == 1 { 0 } else { threads }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_when_they_need_it() {
        assert_eq!(
            shell_quoted("/var/lib/sesame/admin-token"),
            "/var/lib/sesame/admin-token"
        );
        assert_eq!(
            shell_quoted("/Users/ada/Library/Application Support/relay/admin-token"),
            "'/Users/ada/Library/Application Support/relay/admin-token'"
        );
        assert_eq!(shell_quoted("/tmp/it's"), r"'/tmp/it'\''s'");
        assert_eq!(shell_quoted("/tmp/$(x)"), "'/tmp/$(x)'");
    }
}
