//! [`CertificateRefusal`]: why a relay's certificate was not trusted, with the fingerprints a
//! user needs to decide what to do, carried through the TLS library's error to whoever
//! reports it ([`certificate_refusal`]).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use rustls::{CertificateError, OtherError};

use super::Fingerprint;

/// Why the relay's certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateRefusal {
    /// Nothing trusted here vouches for it: no authority signed it (a self-signed relay met
    /// without a pin), or it is expired, or for another name.
    Untrusted {
        /// The certificate's fingerprint, to check with the relay's operator and pin.
        presented: Fingerprint,
        /// Why, as a phrase (`is not signed by an authority trusted here`).
        why: &'static str,
    },
    /// It is not the certificate pinned for this relay.
    Changed {
        /// The fingerprint trusted.
        pinned: Fingerprint,
        /// The fingerprint presented.
        presented: Fingerprint,
    },
}

impl fmt::Display for CertificateRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One phrase without `: `, so that an error's last part says it whole.
        match self {
            CertificateRefusal::Untrusted { presented, why } => write!(
                f,
                "the relay's certificate {why} (its SHA-256 fingerprint is {presented})"
            ),
            CertificateRefusal::Changed { pinned, presented } => write!(
                f,
                "the relay's certificate has fingerprint {presented}, not the trusted {pinned} \
                 (it changed, or this is not your relay)"
            ),
        }
    }
}

impl StdError for CertificateRefusal {}

impl CertificateRefusal {
    /// As the TLS library carries it.
    pub(crate) fn into_tls_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The certificate refusal somewhere in `error`'s chain of causes, if a connection failed over
/// the relay's certificate.
pub fn certificate_refusal<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a CertificateRefusal> {
    let mut cause = Some(error);
    // Each step goes one cause deeper, so this ends with the chain.
    while let Some(error) = cause {
        // An I/O error shows its inner error's causes, not the inner error itself.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn StdError + 'static));
        for candidate in [Some(error), inner].into_iter().flatten() {
            if let Some(refusal) = refusal_in(candidate) {
                return Some(refusal);
            }
        }
        cause = error.source();
    }
    None
}

fn refusal_in<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a CertificateRefusal> {
    if let Some(refusal) = error.downcast_ref::<CertificateRefusal>() {
        return Some(refusal);
    }
    match error.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<CertificateRefusal>()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_found_through_io_errors_and_reads_as_one_phrase() {
        let changed = CertificateRefusal::Changed {
            pinned: Fingerprint::of(b"pinned"),
            presented: Fingerprint::of(b"presented"),
        };
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            changed.clone().into_tls_error(),
        );
        let wrapped = crate::Error::RelayIo {
            relay: "https://relay".to_owned(),
            source: io,
        };
        assert_eq!(certificate_refusal(&wrapped), Some(&changed));
        assert!(!changed.to_string().contains(": "), "{changed}");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(certificate_refusal(&plain), None);
    }
}
