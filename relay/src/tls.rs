//! TLS for the relay's public side: a certificate that is swapped when its files change.
//!
//! [`ReloadingCertificate`] reads a PEM certificate chain (for example a wildcard certificate
//! for `*.DOMAIN`) and its private key, and hands the pair to every TLS handshake. Calling
//! [`reload`](ReloadingCertificate::reload) (on `SIGHUP`, say) or running
//! [`watch`](ReloadingCertificate::watch) swaps in the files' new contents; a reload that fails
//! keeps the certificate being served. Either way, connections already open are left alone:
//! a certificate only matters during a handshake. (A client that resumes a TLS session from
//! before a reload is not sent a certificate at all: the session keeps the one it was made
//! with.)
//!
//! Only the `ring` crypto provider is used, and it is passed explicitly, so the process needs
//! no default provider.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The application protocols offered through ALPN, most preferred first.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The self-signed certificate's file in the data directory.
pub const SELF_SIGNED_CERT: &str = "relay-cert.pem";

/// The self-signed certificate's key in the data directory.
pub const SELF_SIGNED_KEY: &str = "relay-key.pem";

/// Why a certificate and its key could not be loaded.
///
/// Every message names the file at fault; the underlying cause, where there is one, is the
/// error's [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A self-signed certificate could not be made.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// A generated certificate or key could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A file holds a PEM section that cannot be decoded.
    #[error("{} is not valid PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[error("no private key in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind the crypto provider cannot sign with.
    #[error("the private key in {} cannot be used", path.display())]
    UnusableKey {
        /// The file.
        path: PathBuf,
        /// Why the provider refused it.
        #[source]
        source: rustls::Error,
    },
    /// The first certificate of the chain cannot be parsed.
    #[error("the certificate in {} is not valid", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// Why it could not be parsed.
        #[source]
        source: rustls::Error,
    },
    /// The private key is not the one the leaf certificate was issued for.
    #[error(
        "the key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// A certificate and key read from two PEM files, served to every TLS handshake and swapped
/// when the files are reloaded.
///
/// The certificate file holds the chain, leaf first; the key file holds the leaf's private key
/// as PKCS#8, PKCS#1 (RSA) or SEC1 (EC). They may be one and the same file.
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as they were just before the last attempt to read them. Holding this lock
    /// while reading makes reloads take turns.
    last_read: Mutex<Stamps>,
    changes: watch::Sender<u64>,
}

impl ReloadingCertificate {
    /// Reads the certificate chain at `cert_path` and the private key at `key_path`, and checks
    /// that the key belongs to the chain's first certificate.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = Stamps::of(&cert_path, &key_path);
        let certified = read_certified_key(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            provider,
            current: RwLock::new(Arc::new(certified)),
            last_read: Mutex::new(stamps),
            changes: watch::Sender::new(0),
        }))
    }

    /// Reads both files again and serves what they hold from the next handshake on.
    ///
    /// Returns whether the certificate chain changed. On error the certificate being served
    /// stays, and nothing is logged: that is the caller's to do.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut last_read = crate::lock(&self.last_read);
        *last_read = Stamps::of(&self.cert_path, &self.key_path);
        self.read_and_swap()
    }

    /// Reloads the files whenever their modification time, length or identity (inode) changes,
    /// checking every `interval`, until `stop` is cancelled.
    ///
    /// A reload that changes the certificate is logged with the new fingerprint; one that fails
    /// is logged as a warning, and the old certificate stays until the files change again.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let this = Arc::clone(&self);
            let outcome = match tokio::task::spawn_blocking(move || this.reload_if_touched()).await
            {
                Ok(outcome) => outcome,
                Err(error) => {
                    warn!(%error, "could not check the TLS certificate files");
                    continue;
                }
            };
            let cert = self.cert_path.display();
            match outcome {
                None => {}
                Some(Ok(true)) => {
                    info!(%cert, fingerprint = %self.fingerprint(), "reloaded the TLS certificate");
                }
                Some(Ok(false)) => debug!(%cert, "TLS certificate files touched, same certificate"),
                Some(Err(error)) => warn!(
                    error = %sesame_tunnel::one_line(&error),
                    fingerprint = %self.fingerprint(),
                    "could not reload the TLS certificate; still serving the old one"
                ),
            }
        }
    }

    /// Counts the times the certificate served has changed: a receiver sees the count go up
    /// after each reload that swapped it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The SHA-256 fingerprint of the leaf certificate served now, as uppercase hex pairs
    /// joined by `:` (the form `openssl x509 -fingerprint -sha256` prints).
    pub fn fingerprint(&self) -> String {
        let current = self.certified_key();
        current
            .cert
            .first()
            .map_or_else(String::new, |leaf| sha256_fingerprint(leaf))
    }

    /// The certificate chain and key served now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A server configuration that serves this certificate and offers `h2`, then `http/1.1`,
    /// through ALPN. It asks clients for no certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        self.server_config_for(&ALPN_PROTOCOLS)
    }

    /// A server configuration that serves this certificate and offers `alpn` (in order of
    /// preference; `[b"h2"]` for gRPC).
    pub fn server_config_for(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// An acceptor for TLS connections with [`server_config`](Self::server_config).
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }

    /// Loads `relay-cert.pem` and `relay-key.pem` from `data_dir`, first generating them (a
    /// self-signed ECDSA P-256 certificate for `names`, the key readable by the owner alone, in
    /// a directory made so too) if the directory holds none. Returns whether they were
    /// generated.
    pub fn self_signed(data_dir: &Path, names: &[String]) -> Result<(Arc<Self>, bool), TlsError> {
        let cert_path = data_dir.join(SELF_SIGNED_CERT);
        let key_path = data_dir.join(SELF_SIGNED_KEY);
        let generated = !cert_path.exists() || !key_path.exists();
        if generated {
            let write_error = |path: &Path| {
                let path = path.to_owned();
                move |source| TlsError::Write { path, source }
            };
            let mut directory = fs::DirBuilder::new();
            directory.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut directory, 0o700);
            directory.create(data_dir).map_err(write_error(data_dir))?;
            let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(names.to_vec())
                .map_err(|e| TlsError::Generate(e.to_string()))?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "sesame relay");
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2125, 1, 1);
            let certificate = params
                .self_signed(&key)
                .map_err(|e| TlsError::Generate(e.to_string()))?;
            crate::private_file::write(&key_path, key.serialize_pem().as_bytes())
                .map_err(write_error(&key_path))?;
            crate::private_file::write(&cert_path, certificate.pem().as_bytes())
                .map_err(write_error(&cert_path))?;
        }
        Ok((Self::load(cert_path, key_path)?, generated))
    }

    /// Reloads if the files differ from when they were last read; `None` if they do not.
    fn reload_if_touched(&self) -> Option<Result<bool, TlsError>> {
        let mut last_read = crate::lock(&self.last_read);
        let now = Stamps::of(&self.cert_path, &self.key_path);
        if now == *last_read {
            return None;
        }
        *last_read = now;
        Some(self.read_and_swap())
    }

    /// Reads the files and serves them if their chain differs from the one served now.
    fn read_and_swap(&self) -> Result<bool, TlsError> {
        let fresh = read_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.cert == fresh.cert {
            return Ok(false);
        }
        *current = Arc::new(fresh);
        drop(current);
        self.changes.send_modify(|count| *count += 1);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a certificate's DER, as uppercase hex pairs joined by `:`.
fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let pairs: Vec<String> = digest.iter().map(|byte| format!("{byte:02X}")).collect();
    pairs.join(":")
}

/// Reads a chain and its key, and checks that they belong together.
fn read_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot name its public key cannot be checked; rustls accepts it too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(source) => Err(TlsError::InvalidCertificate {
            path: cert_path.to_owned(),
            source,
        }),
    }
}

/// Every certificate in a PEM file, in order; at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// A whole file, or an error naming it.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What the two files looked like at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamps {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

impl Stamps {
    /// The files' stamps now.
    fn of(cert_path: &Path, key_path: &Path) -> Self {
        Self {
            cert: FileStamp::of(cert_path),
            key: FileStamp::of(key_path),
        }
    }
}

/// Enough about a file to tell that it was rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The file's stamp now; `None` if its metadata cannot be read (it is missing, say).
    fn of(path: &Path) -> Option<Self> {
        let metadata = fs::metadata(path).ok()?;
        Some(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: inode(&metadata),
        })
    }
}

/// The file's inode: a file replaced by renaming another over it has a new one, even when its
/// modification time and length look the same.
#[cfg(unix)]
fn inode(metadata: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

/// Without inodes, a replaced file is told by its modification time and length alone.
#[cfg(not(unix))]
fn inode(_metadata: &fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `relay.test` and its key, as PEM.
    fn pair() -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["relay.test".to_owned()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    /// Replaces `path` by renaming a new file over it, as certificate tools do.
    fn replace(path: &Path, contents: &str) {
        let staged = path.with_extension("staged");
        fs::write(&staged, contents).unwrap();
        fs::rename(&staged, path).unwrap();
    }

    #[test]
    fn fingerprints_are_uppercase_hex_pairs() {
        assert_eq!(
            sha256_fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn the_watcher_reads_each_change_once_and_keeps_the_old_pair_when_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (old_cert, old_key) = pair();
        let (new_cert, new_key) = pair();
        replace(&cert_path, &old_cert);
        replace(&key_path, &old_key);
        let certificate = ReloadingCertificate::load(&cert_path, &key_path).unwrap();
        let old = certificate.fingerprint();
        assert!(certificate.reload_if_touched().is_none(), "nothing changed");

        // Half-way through an update: the new key beside the old certificate.
        replace(&key_path, &new_key);
        let outcome = certificate.reload_if_touched();
        assert!(
            matches!(outcome, Some(Err(TlsError::KeyMismatch { .. }))),
            "{outcome:?}"
        );
        assert_eq!(certificate.fingerprint(), old);
        assert!(
            certificate.reload_if_touched().is_none(),
            "the same broken files are not read again"
        );

        replace(&cert_path, &new_cert);
        assert!(matches!(certificate.reload_if_touched(), Some(Ok(true))));
        assert_ne!(certificate.fingerprint(), old);
        assert_eq!(*certificate.changes().borrow(), 1);
        assert!(certificate.reload_if_touched().is_none(), "nothing changed");
    }
}
