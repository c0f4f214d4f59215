//! Reaching a relay: its address, which certificate to trust, the token to present, and the
//! HTTP/2 channel every client shares.

mod access;
mod refusal;
mod token;
mod trust;
mod url;

pub use access::{RelayAccess, RelayChannel};
pub use refusal::{CertificateRefusal, certificate_refusal};
pub use token::Token;
pub use trust::{Fingerprint, Presented, Trust};
pub use url::{DEFAULT_PORT, DEFAULT_RELAY, RelayUrl};
