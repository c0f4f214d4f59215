//! A relay with public endpoints for tests: plain HTTP and HTTPS virtual hosts under
//! `tunnel.test`, with a certificate from a throwaway CA, and a few TCP ports.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use sesame_relay::tls::ReloadingCertificate;
use sesame_relay::{Relay, RelayConfig, TcpPortRange, TokenStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::process::scratch_dir;
use sesame_tunnel::{RelayUrl, Session};

/// The domain the test relay serves virtual hosts under.
pub const DOMAIN: &str = "tunnel.test";

/// A relay with HTTP and HTTPS virtual hosts and TCP ports, stopped when dropped.
#[derive(Debug)]
pub struct PublicRelay {
    /// Where agents and dialers reach it.
    pub url: RelayUrl,
    /// The plain HTTP listener.
    pub http: SocketAddr,
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// The CA that signed the relay's wildcard certificate, PEM.
    pub ca: PathBuf,
    /// The certificate files, to rewrite for a reload.
    pub cert_files: (PathBuf, PathBuf),
    /// The certificate the HTTPS listener serves.
    pub certificate: std::sync::Arc<ReloadingCertificate>,
    /// The TCP ports it publishes on.
    pub tcp_ports: RangeInclusive<u16>,
    /// Where it serves `/metrics`.
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Holds the certificate files.
    _dir: tempfile::TempDir,
}

/// A CA, and a certificate for `*.tunnel.test` it signed: written as PEM files into `dir`.
/// Returns the paths of the CA certificate, the leaf chain and the leaf key.
pub fn wildcard_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sesame test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec![format!("*.{DOMAIN}")]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// A range of `count` TCP ports that were free a moment ago, below the kernel's ephemeral
/// range: a client connection of another test never takes one of them as its own port.
pub async fn free_port_range(count: u16) -> RangeInclusive<u16> {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let starts = ephemeral
        .saturating_sub(count)
        .saturating_sub(LOWEST)
        .max(1);
    for _ in 0..1_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let first = LOWEST + (random % u64::from(starts)) as u16;
        let range = first..=first + count - 1;
        if range
            .clone()
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return range;
        }
    }
    panic!("no {count} consecutive free ports between {LOWEST} and {ephemeral}");
}

impl PublicRelay {
    /// Starts a relay with `config` on loopback, with `tcp_ports` TCP ports.
    pub async fn start(config: RelayConfig, tcp_ports: u16) -> Self {
        let range = free_port_range(tcp_ports).await;
        PublicRelay::start_on(config, range, None).await
    }

    /// Starts a relay with `config` on loopback that checks tokens against `store` and
    /// publishes on the TCP ports `range` (the range of a relay that ran before, say).
    pub async fn start_with_tokens(
        config: RelayConfig,
        range: RangeInclusive<u16>,
        store: Arc<TokenStore>,
    ) -> Self {
        PublicRelay::start_on(config, range, Some(store)).await
    }

    async fn start_on(
        config: RelayConfig,
        range: RangeInclusive<u16>,
        store: Option<Arc<TokenStore>>,
    ) -> Self {
        let dir = scratch_dir();
        let (ca, cert, key) = wildcard_certificate(dir.path());
        let certificate = ReloadingCertificate::load(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let mut relay = Relay::builder().config(config).metrics_listener(metrics);
        if let Some(store) = store {
            relay = relay.tokens(store);
        }
        let relay = relay
            .domain(DOMAIN)
            .http_listener(http)
            .https_listener(https, certificate.server_config())
            .tcp_ports(TcpPortRange {
                bind: [127, 0, 0, 1].into(),
                ports: range.clone(),
                public_host: "127.0.0.1".to_owned(),
            })
            .build();
        let (stop, task) = crate::serve_in_background(relay, listener);
        PublicRelay {
            url,
            http: http_addr,
            https: https_addr,
            ca,
            cert_files: (cert, key),
            certificate,
            tcp_ports: range,
            metrics: metrics_addr,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// The virtual host of remote `name` on the HTTP listener, `http://NAME.tunnel.test:PORT`.
    pub fn http_url(&self, name: &str) -> String {
        format!("http://{name}.{DOMAIN}:{}", self.http.port())
    }

    /// The virtual host of remote `name` on the HTTPS listener.
    pub fn https_url(&self, name: &str) -> String {
        format!("https://{name}.{DOMAIN}:{}", self.https.port())
    }

    /// curl's `--resolve` entries that send `name`'s virtual hosts to the listeners.
    pub fn resolve(&self, name: &str) -> [String; 4] {
        [
            "--resolve".to_owned(),
            format!("{name}.{DOMAIN}:{}:127.0.0.1", self.http.port()),
            "--resolve".to_owned(),
            format!("{name}.{DOMAIN}:{}:127.0.0.1", self.https.port()),
        ]
    }
}

impl PublicRelay {
    /// Shuts the relay down gracefully and waits until it has stopped: its listeners are
    /// closed, and its token store saved.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the relay ran to its end");
    }
}

impl Drop for PublicRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Sends `data` to the echo target behind the relay's TCP port `port`, half-closes, and
/// checks that the same bytes come back.
pub async fn echoes_exactly(port: u16, data: Vec<u8>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (reader, writer) = stream.into_split();
    let expected = (data.len() as u64, crate::sha256(&data));
    let sending = tokio::spawn(async move { crate::write_then_shutdown(writer, &data).await });
    assert_eq!(crate::hash_to_end(reader).await.unwrap(), expected);
    sending.await.unwrap().unwrap();
}

/// The relay port of `remote port` on `session`.
pub fn public_port(session: &Session, port: u16) -> u16 {
    let address = session.published(port).tcp_address.expect("a TCP address");
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}
