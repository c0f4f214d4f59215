//! Reaching a relay: its address, and the HTTP/2 channel every client shares.

use std::fmt;
use std::str::FromStr;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Error, TransportSettings};

/// The port a relay listens on when its address names none.
pub const DEFAULT_PORT: u16 = 7373;

/// The relay clients use when told nothing else: one on this machine.
pub const DEFAULT_RELAY: &str = "http://127.0.0.1:7373";

/// The address of a relay: `http://HOST[:PORT]`, or just `HOST[:PORT]`. The port defaults to
/// [`DEFAULT_PORT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    uri: Uri,
}

impl RelayUrl {
    /// The address as a URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The gRPC endpoint for this relay, tuned by `settings`.
    pub fn endpoint(&self, settings: &TransportSettings) -> Endpoint {
        Endpoint::from(self.uri.clone())
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .http2_adaptive_window(false)
            .http2_keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .keep_alive_while_idle(true)
    }

    /// Opens the HTTP/2 connection to the relay, failing at once when it cannot be reached.
    pub async fn connect(&self, settings: &TransportSettings) -> Result<Channel, Error> {
        self.endpoint(settings)
            .connect()
            .await
            .map_err(|source| Error::RelayUnreachable {
                relay: self.to_string(),
                source,
            })
    }
}

impl FromStr for RelayUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = |reason: &str| format!("invalid relay address {text:?}: {reason}");
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        let full = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = full.parse().map_err(|e| invalid(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "TLS to the relay is not supported yet, use http://",
                ));
            }
            _ => return Err(invalid("the scheme must be http://")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("it names no host"))?;
        if authority.host().is_empty() {
            return Err(invalid("it names no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a relay address has no path"));
        }
        let host = authority.host();
        let port = match authority.as_str().strip_prefix(host) {
            Some("") => DEFAULT_PORT,
            Some(port) => match port.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
                Some(port) if port != 0 => port,
                _ => return Err(invalid("the port must be a number from 1 to 65535")),
            },
            None => return Err(invalid("it names no host")),
        };
        let uri = format!("http://{host}:{port}")
            .parse()
            .map_err(|e| invalid(&format!("{e}")))?;
        Ok(RelayUrl { uri })
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = self.uri.authority().expect("checked when parsed");
        write!(f, "http://{authority}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<String, String> {
        text.parse::<RelayUrl>().map(|url| url.to_string())
    }

    #[test]
    fn accepts_urls_and_bare_addresses() {
        assert_eq!(
            parse("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            parse("http://relay.example/").unwrap(),
            "http://relay.example:7373"
        );
        assert_eq!(parse("127.0.0.1:9000").unwrap(), "http://127.0.0.1:9000");
        assert_eq!(parse("[::1]:9000").unwrap(), "http://[::1]:9000");
        assert_eq!(parse(DEFAULT_RELAY).unwrap(), DEFAULT_RELAY);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (text, why) in [
            ("", "empty"),
            ("https://relay", "TLS"),
            ("ftp://relay", "scheme"),
            ("http://relay/x", "path"),
            ("http://:80", "host"),
            ("http://relay:99999", "port"),
            ("relay:0", "port"),
            ("user@relay:1", "host"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
