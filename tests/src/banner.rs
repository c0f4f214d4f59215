//! What `sesame relay serve` prints as it starts: its address, its certificate's fingerprint
//! and, on its first start, the file that holds its admin token.

use std::io::{self, BufRead};
use std::net::SocketAddr;

use sesame_tunnel::{Fingerprint, RelayAccess, RelayUrl, Token, Trust};

/// The relay's start-up lines, read.
#[derive(Clone, Debug)]
pub struct RelayBanner {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint; `None` for a plaintext relay.
    pub fingerprint: Option<Fingerprint>,
    /// The admin token made on the first start.
    pub admin_token: Option<Token>,
}

impl RelayBanner {
    /// Reads the banner from the relay's stdout, a pipe: up to its `tokens:` line, and on a
    /// first start (a new data directory) on to the admin token's file, which it reads.
    pub fn read(lines: &mut impl BufRead, first_start: bool) -> io::Result<Self> {
        let unexpected = |what: &str| io::Error::other(format!("the relay's banner: {what}"));
        let mut addr = None;
        let mut fingerprint = None;
        let mut admin_token = None;
        let mut seen_tokens_line = false;
        for _ in 0..64 {
            let mut line = String::new();
            if lines.read_line(&mut line)? == 0 {
                return Err(unexpected("the relay exited"));
            }
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("relay listening on ") {
                addr = Some(rest.parse().map_err(|_| unexpected(line))?);
            } else if let Some(rest) = line.strip_prefix("fingerprint: ") {
                fingerprint = Some(rest.parse().map_err(|_| unexpected(line))?);
            } else if let Some(path) = line.strip_prefix("admin token file: ") {
                // On a pipe, the relay leaves the token in a file only its user can read.
                let text = std::fs::read_to_string(path)?;
                admin_token = Some(text.parse().map_err(|_| unexpected(line))?);
            } else if line.starts_with("tokens: ") {
                seen_tokens_line = true;
            }
            if seen_tokens_line && (!first_start || admin_token.is_some()) {
                let addr = addr.ok_or_else(|| unexpected("no address"))?;
                return Ok(RelayBanner {
                    addr,
                    fingerprint,
                    admin_token,
                });
            }
        }
        Err(unexpected("too long"))
    }

    /// The relay's URL: `https://` unless it serves plaintext.
    pub fn url(&self) -> RelayUrl {
        let scheme = if self.fingerprint.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr).parse().expect("valid")
    }

    /// How a client reaches it with `token`, pinning its certificate.
    pub fn access(&self, token: Option<Token>) -> RelayAccess {
        let trust = self.fingerprint.map_or(Trust::SystemRoots, Trust::Pinned);
        RelayAccess::new(self.url(), trust, token)
    }
}
