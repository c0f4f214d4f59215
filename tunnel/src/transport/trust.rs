//! Which relay certificates a client accepts: ones a certificate authority vouches for, or the
//! one whose fingerprint was pinned, as `ssh` pins host keys.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::refusal::CertificateRefusal;

/// The SHA-256 digest of a certificate (DER), the form relays print and clients pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(certificate: &[u8]) -> Self {
        Fingerprint(Sha256::digest(certificate).into())
    }
}

impl fmt::Display for Fingerprint {
    /// Uppercase hex pairs joined by `:`, as `openssl x509 -fingerprint -sha256` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// 64 hex digits, in any case, with or without `:` between pairs and an optional
    /// `sha256:` or `SHA256 Fingerprint=` prefix.
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let hex = ["sha256 fingerprint=", "sha256:", "sha256="]
            .iter()
            .find_map(|prefix| lower.strip_prefix(prefix))
            .unwrap_or(&lower);
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        let invalid = || {
            format!(
                "{trimmed:?} is not a SHA-256 fingerprint: expected 64 hex digits, as the relay \
                 prints them (AB:CD:...)"
            )
        };
        if digits.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = digits
                .get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(invalid)?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Which certificates a client accepts from a relay.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// Those the operating system's certificate authorities vouch for, for the relay's host.
    #[default]
    SystemRoots,
    /// Those these certificate authorities (and no others) vouch for, for the relay's host.
    Authorities(Arc<Vec<CertificateDer<'static>>>),
    /// Exactly the certificate with this fingerprint, whatever its names and issuer: for a
    /// relay with a self-signed certificate.
    Pinned(Fingerprint),
}

impl Trust {
    /// Trusts the certificate authorities in a PEM file.
    pub fn authorities_from_pem(pem: &[u8]) -> Result<Self, String> {
        let certificates = rustls_pemfile_certificates(pem)?;
        if certificates.is_empty() {
            return Err("it holds no PEM certificate".to_owned());
        }
        Ok(Trust::Authorities(Arc::new(certificates)))
    }

    /// A TLS configuration that verifies the relay this way and offers HTTP/2 through ALPN.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        Ok(with_verifier(self.verifier()?))
    }

    /// The verifier that decides as this trust says.
    fn verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, String> {
        let verifier: Arc<dyn ServerCertVerifier> = match self {
            Trust::Pinned(fingerprint) => Arc::new(PinnedVerifier {
                pinned: Some(*fingerprint),
                provider: provider(),
            }),
            Trust::SystemRoots => authority_verifier(system_roots()?)?,
            Trust::Authorities(certificates) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates.iter() {
                    roots
                        .add(certificate.clone())
                        .map_err(|e| format!("a CA certificate is unusable: {e}"))?;
                }
                authority_verifier(Arc::new(roots))?
            }
        };
        Ok(verifier)
    }
}

fn with_verifier(verifier: Arc<dyn ServerCertVerifier>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn authority_verifier(roots: Arc<RootCertStore>) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("cannot verify certificates with these authorities: {e}"))?;
    Ok(Arc::new(AuthorityVerifier(verifier)))
}

/// Verifies certificates as certificate authorities vouch for them, and says why one is
/// refused in words about the relay rather than in the TLS library's names
/// (`UnknownIssuer`).
#[derive(Debug)]
struct AuthorityVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AuthorityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| in_plain_words(error, end_entity))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The common reasons a relay's certificate is refused, in plain words and with its
/// fingerprint ([`CertificateRefusal::Untrusted`]); other errors as they are.
fn in_plain_words(error: rustls::Error, certificate: &CertificateDer<'_>) -> rustls::Error {
    let rustls::Error::InvalidCertificate(reason) = &error else {
        return error;
    };
    let why = match reason {
        CertificateError::UnknownIssuer => "is not signed by an authority trusted here",
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "does not name the relay's address"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet"
        }
        CertificateError::Revoked => "is revoked",
        _ => return error,
    };
    let presented = Fingerprint::of(certificate);
    CertificateRefusal::Untrusted { presented, why }.into_tls_error()
}

/// Why a certificate was refused, as one phrase: a message of this module's own as it is,
/// without rustls's `unexpected error: ` or `invalid peer certificate: ` before it.
fn refusal(error: &rustls::Error) -> String {
    match error {
        rustls::Error::General(message) => message.clone(),
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        other => other.to_string(),
    }
}

/// The operating system's certificate authorities, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "this system has no certificate authorities to verify the relay with: pass \
                     --ca FILE or --fingerprint"
                        .to_owned(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Reads every certificate of a PEM file.
fn rustls_pemfile_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("it is not a PEM certificate file: {e}"))
}

/// Accepts exactly one certificate, by its fingerprint (none at all without one), and checks
/// that the relay holds its key.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        match self.pinned {
            Some(pinned) if pinned == presented => Ok(ServerCertVerified::assertion()),
            Some(pinned) => Err(CertificateRefusal::Changed { pinned, presented }.into_tls_error()),
            None => Err(rustls::Error::General(
                "this system has no certificate authorities".to_owned(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a relay presented when probed: see [`probe`](crate::RelayAccess::probe).
#[derive(Clone, Debug)]
pub struct Presented {
    /// The fingerprint of the relay's certificate.
    pub fingerprint: Fingerprint,
    /// Whether the trust asked for vouches for it: `Err` says why not.
    pub verdict: Result<(), String>,
}

/// Records what the relay presents and what `judge` thinks of it, and lets the handshake go on
/// either way, so that a user can be shown the fingerprint and asked. Nothing is sent over a
/// connection made with it.
#[derive(Debug)]
pub(crate) struct Recorder {
    judge: Arc<dyn ServerCertVerifier>,
    pub(crate) seen: Mutex<Option<Presented>>,
}

impl Recorder {
    pub(crate) fn new(trust: &Trust) -> Result<Arc<Self>, String> {
        let judge = match (trust, trust.verifier()) {
            // Without system authorities, nothing vouches: the fingerprint decides.
            (Trust::SystemRoots, Err(_)) => Arc::new(PinnedVerifier {
                pinned: None,
                provider: provider(),
            }),
            (_, verifier) => verifier?,
        };
        Ok(Arc::new(Recorder {
            judge,
            seen: Mutex::new(None),
        }))
    }

    pub(crate) fn client_config(self: &Arc<Self>) -> Arc<ClientConfig> {
        with_verifier(self.clone())
    }

    pub(crate) fn presented(&self) -> Option<Presented> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .judge
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|e| refusal(&e));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Presented {
            fingerprint: Fingerprint::of(end_entity),
            verdict,
        });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.judge.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.judge.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.judge.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let fingerprint = Fingerprint::of(b"certificate");
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        for form in [
            shown.clone(),
            shown.to_ascii_lowercase(),
            shown.replace(':', ""),
            format!("sha256:{shown}"),
            format!("SHA256 Fingerprint={shown}"),
        ] {
            assert_eq!(form.parse::<Fingerprint>().unwrap(), fingerprint, "{form}");
        }
        for bad in ["", "AB:CD", &shown[3..], &"zz".repeat(32)] {
            assert!(
                bad.parse::<Fingerprint>().unwrap_err().contains("64 hex"),
                "{bad}"
            );
        }
    }

    #[test]
    fn refused_certificates_are_explained_in_plain_words() {
        let certificate = CertificateDer::from(b"a certificate".to_vec());
        let presented = Fingerprint::of(&certificate);
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let refused = in_plain_words(unknown, &certificate);
        assert_eq!(
            refusal(&refused),
            format!(
                "the relay's certificate is not signed by an authority trusted here (its \
                 SHA-256 fingerprint is {presented})"
            )
        );
        let other = rustls::Error::InvalidCertificate(CertificateError::BadSignature);
        let kept = in_plain_words(other.clone(), &certificate);
        assert_eq!(refusal(&kept), other.to_string());
    }

    #[test]
    fn a_pem_file_without_certificates_is_refused() {
        assert!(Trust::authorities_from_pem(b"nothing here").is_err());
    }
}
