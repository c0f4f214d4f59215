//! The relay's reloading TLS certificate, against real TLS clients on loopback.
//!
//! Each test makes a throwaway CA and wildcard leaves for `*.example.test` signed by it,
//! writes them as PEM files into its own temporary directory, and checks what a client that
//! trusts only that CA sees.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sesame_relay::tls::{ReloadingCertificate, TlsError};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// How long any one step may take before the test fails rather than hangs.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// The name every client asks for; the leaves are for `*.example.test`.
const SERVER_NAME: &str = "a.example.test";

type Ca = CertifiedIssuer<'static, KeyPair>;

/// A certificate authority that signs the test leaves.
fn make_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Sesame test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate for `*.example.test` and its key, as PEM and DER.
struct Leaf {
    /// The leaf, then the CA: a chain, leaf first.
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Leaf {
    fn signed_by(ca: &Ca) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["*.example.test".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "*.example.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, ca).unwrap();
        Self {
            chain_pem: format!("{}{}", cert.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The fingerprint as `openssl x509 -fingerprint -sha256` prints it.
    fn fingerprint(&self) -> String {
        Sha256::digest(&self.der)
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The certificate and key files of one test, in a directory removed when it ends.
struct Files {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        Self { dir, cert, key }
    }

    /// Puts `leaf` in place, each file replaced at once the way certificate tools do it: written
    /// beside the old one, then renamed over it.
    fn install(&self, leaf: &Leaf) {
        self.replace(&self.cert, &leaf.chain_pem);
        self.replace(&self.key, &leaf.key_pem);
    }

    fn replace(&self, path: &Path, contents: &str) {
        let staged = self.dir.path().join("staged.pem");
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    fn load(&self) -> Arc<ReloadingCertificate> {
        ReloadingCertificate::load(&self.cert, &self.key).unwrap()
    }
}

/// Fails the test if `future` takes longer than [`STEP_LIMIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP_LIMIT:?}"))
}

/// Accepts `connections` connections on a loopback port and echoes what each one sends over
/// TLS until the client closes it.
async fn echo_server(acceptor: TlsAcceptor, connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..connections {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends its handshake; nothing to echo.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return Ok(());
                };
                let (mut reader, mut writer) = tokio::io::split(tls);
                tokio::io::copy(&mut reader, &mut writer).await?;
                writer.shutdown().await
            });
        }
    });
    addr
}

/// A client that trusts only `ca` and offers `alpn`.
fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// Opens a TLS connection to `addr`, asking for `name`.
async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = within("connecting", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    within(
        "the handshake",
        TlsConnector::from(Arc::clone(config)).connect(name, tcp),
    )
    .await
}

/// The certificate chain the server presented.
fn peer_chain(stream: &TlsStream<TcpStream>) -> Vec<CertificateDer<'static>> {
    stream.get_ref().1.peer_certificates().unwrap().to_vec()
}

/// Sends `message` and checks that the same bytes come back.
async fn echo(stream: &mut TlsStream<TcpStream>, message: &[u8]) {
    within("writing", stream.write_all(message)).await.unwrap();
    within("flushing", stream.flush()).await.unwrap();
    let mut echoed = vec![0; message.len()];
    within("reading the echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, message);
}

#[tokio::test]
async fn a_client_trusting_the_ca_verifies_the_wildcard_and_gets_h2() {
    let ca = make_ca();
    let leaf = Leaf::signed_by(&ca);
    let files = Files::new();
    files.install(&leaf);
    let certificate = files.load();
    assert_eq!(certificate.fingerprint(), leaf.fingerprint());
    let addr = echo_server(certificate.acceptor(), 4).await;

    let mut h2 = connect(
        addr,
        &client_config(&ca, &[b"h2", b"http/1.1"]),
        SERVER_NAME,
    )
    .await
    .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_chain(&h2), [leaf.der.clone(), ca.der().clone()]);
    echo(&mut h2, b"hello over TLS").await;

    let http1 = connect(addr, &client_config(&ca, &[b"http/1.1"]), SERVER_NAME)
        .await
        .unwrap();
    assert_eq!(http1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let no_alpn = connect(addr, &client_config(&ca, &[]), SERVER_NAME)
        .await
        .unwrap();
    assert_eq!(no_alpn.get_ref().1.alpn_protocol(), None);

    // The verification is real: a wildcard covers one label only.
    let error = connect(addr, &client_config(&ca, &[b"h2"]), "a.b.example.test")
        .await
        .unwrap_err();
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert!(
        matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_reload_reaches_new_handshakes_and_open_connections_carry_on() {
    let ca = make_ca();
    let (old, new) = (Leaf::signed_by(&ca), Leaf::signed_by(&ca));
    let files = Files::new();
    files.install(&old);
    let certificate = files.load();
    let changes = certificate.changes();
    let addr = echo_server(certificate.acceptor(), 2).await;
    let mut before = connect(addr, &client_config(&ca, &[b"h2"]), SERVER_NAME)
        .await
        .unwrap();
    assert_eq!(peer_chain(&before)[0], old.der);
    echo(&mut before, b"before the reload").await;

    files.install(&new);
    assert!(certificate.reload().unwrap(), "the certificate changed");
    assert_eq!(certificate.fingerprint(), new.fingerprint());
    assert_eq!(*changes.borrow(), 1);

    // A new client: one that resumed the earlier session would not be sent a certificate.
    let fresh_config = client_config(&ca, &[b"h2"]);
    let after = connect(addr, &fresh_config, SERVER_NAME).await.unwrap();
    assert_eq!(peer_chain(&after)[0], new.der);

    echo(&mut before, b"after the reload, on the old connection").await;
    assert_eq!(peer_chain(&before)[0], old.der);

    assert!(
        !certificate.reload().unwrap(),
        "same files, same certificate"
    );
    assert_eq!(*changes.borrow(), 1);
}

#[tokio::test]
async fn watch_picks_up_new_files_and_stops_when_told() {
    let ca = make_ca();
    let (old, new) = (Leaf::signed_by(&ca), Leaf::signed_by(&ca));
    let files = Files::new();
    files.install(&old);
    let certificate = files.load();
    let mut changes = certificate.changes();
    let stop = CancellationToken::new();
    let watching =
        tokio::spawn(Arc::clone(&certificate).watch(Duration::from_millis(50), stop.clone()));

    files.install(&new);
    within("the watcher's reload", changes.changed())
        .await
        .unwrap();
    assert_eq!(certificate.fingerprint(), new.fingerprint());
    assert_eq!(*changes.borrow_and_update(), 1);

    stop.cancel();
    within("the watcher's stop", watching).await.unwrap();
}

/// Checks `error`'s message, and that `certificate` still serves `leaf`.
fn assert_refused(
    error: &TlsError,
    message: &str,
    certificate: &ReloadingCertificate,
    leaf: &Leaf,
) {
    assert_eq!(error.to_string(), message);
    assert_eq!(certificate.fingerprint(), leaf.fingerprint());
    assert_eq!(certificate.certified_key().cert[0], leaf.der);
    assert_eq!(*certificate.changes().borrow(), 0);
}

#[test]
fn bad_files_are_named_in_the_error_and_the_old_certificate_stays() {
    let ca = make_ca();
    let (good, other) = (Leaf::signed_by(&ca), Leaf::signed_by(&ca));
    let files = Files::new();
    files.install(&good);
    let certificate = files.load();
    let (cert, key) = (files.cert.display(), files.key.display());

    // A missing file: the error names it, and its source is the operating system's.
    std::fs::remove_file(&files.cert).unwrap();
    let error = certificate.reload().unwrap_err();
    let TlsError::Read { source, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    assert_refused(&error, &format!("cannot read {cert}"), &certificate, &good);
    let error = ReloadingCertificate::load(&files.cert, &files.key).unwrap_err();
    assert_eq!(error.to_string(), format!("cannot read {cert}"));

    // A certificate file with no certificate in it (here, a key).
    files.replace(&files.cert, &good.key_pem);
    let error = certificate.reload().unwrap_err();
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    assert_refused(
        &error,
        &format!("no certificate in {cert}"),
        &certificate,
        &good,
    );

    // A key file with no key in it (here, the chain).
    files.replace(&files.cert, &good.chain_pem);
    files.replace(&files.key, &good.chain_pem);
    let error = certificate.reload().unwrap_err();
    assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
    assert_refused(
        &error,
        &format!("no private key in {key}"),
        &certificate,
        &good,
    );

    // Another leaf's key.
    files.replace(&files.key, &other.key_pem);
    let error = certificate.reload().unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    assert_refused(
        &error,
        &format!("the key in {key} does not match the certificate in {cert}"),
        &certificate,
        &good,
    );
    let error = ReloadingCertificate::load(&files.cert, &files.key).unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");

    // A certificate cut off halfway.
    let cut = &good.chain_pem[..good.chain_pem.len() / 4];
    files.replace(&files.cert, cut);
    files.replace(&files.key, &good.key_pem);
    let error = certificate.reload().unwrap_err();
    assert!(matches!(error, TlsError::Pem { .. }), "{error:?}");
    assert_refused(
        &error,
        &format!("{cert} is not valid PEM"),
        &certificate,
        &good,
    );

    // Fixed again: the same certificate, so nothing changes.
    files.replace(&files.cert, &good.chain_pem);
    assert!(!certificate.reload().unwrap());
    assert_eq!(certificate.fingerprint(), good.fingerprint());
}

#[test]
fn cert_and_key_may_share_one_file() {
    let ca = make_ca();
    let leaf = Leaf::signed_by(&ca);
    let files = Files::new();
    files.replace(&files.cert, &format!("{}{}", leaf.chain_pem, leaf.key_pem));
    let certificate = ReloadingCertificate::load(&files.cert, &files.cert).unwrap();
    assert_eq!(certificate.fingerprint(), leaf.fingerprint());
    assert_eq!(certificate.certified_key().cert.len(), 2);
}
