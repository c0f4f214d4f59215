//! A relay's address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use tonic::transport::Uri;

/// The port a relay listens on when its address names none.
pub const DEFAULT_PORT: u16 = 7373;

/// The relay clients use when told nothing else: one on this machine.
pub const DEFAULT_RELAY: &str = "https://127.0.0.1:7373";

/// The address of a relay: `https://HOST[:PORT]`, `http://HOST[:PORT]` for a relay that
/// serves plaintext (on loopback only), or just `HOST[:PORT]`, which means `https://`. The port
/// defaults to [`DEFAULT_PORT`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayUrl {
    uri: String,
}

impl RelayUrl {
    /// The address as a URI.
    pub fn uri(&self) -> Uri {
        self.uri.parse().expect("checked when parsed")
    }

    /// Whether the relay is reached over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.uri.starts_with("https://")
    }

    /// The host, as written (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        let authority = self.authority();
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    }

    /// Whether the host is this machine: `localhost`, an address of 127.0.0.0/8, or `::1`
    /// (also written as the IPv4-mapped `::ffff:127.x.y.z`). Only such a relay may be reached
    /// over plaintext with a token: nothing but this machine sees the connection.
    ///
    /// Other names, even ones that resolve to loopback, do not count: what a name resolves to
    /// can change, and the check must be made before anything is looked up or sent.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        let bare = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(address) => address.to_canonical().is_loopback(),
            Err(_) => bare.eq_ignore_ascii_case("localhost"),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        let authority = self.authority();
        authority
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("checked when parsed")
    }

    fn authority(&self) -> &str {
        self.uri
            .split_once("://")
            .map_or(self.uri.as_str(), |(_, rest)| rest)
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
            format!("https://{text}")
        };
        let uri: Uri = full.parse().map_err(|e| invalid(&format!("{e}")))?;
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => {
                return Err(invalid(
                    "the scheme must be https:// (or http:// for plaintext)",
                ));
            }
        };
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
        let uri = format!("{scheme}://{host}:{port}");
        uri.parse::<Uri>().map_err(|e| invalid(&format!("{e}")))?;
        Ok(RelayUrl { uri })
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
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
            parse("https://relay.example/").unwrap(),
            "https://relay.example:7373"
        );
        assert_eq!(parse("127.0.0.1:9000").unwrap(), "https://127.0.0.1:9000");
        assert_eq!(parse("[::1]:9000").unwrap(), "https://[::1]:9000");
        assert_eq!(parse(DEFAULT_RELAY).unwrap(), DEFAULT_RELAY);
        let url: RelayUrl = "[::1]:9000".parse().unwrap();
        assert_eq!(
            (url.host(), url.port(), url.is_tls()),
            ("[::1]", 9000, true)
        );
        let url: RelayUrl = "http://relay".parse().unwrap();
        assert_eq!(
            (url.host(), url.port(), url.is_tls()),
            ("relay", 7373, false)
        );
    }

    #[test]
    fn only_this_machine_is_loopback() {
        for local in [
            "http://127.0.0.1:1",
            "http://127.1.2.3:1",
            "http://[::1]:1",
            "http://[::ffff:127.0.0.1]:1",
            "http://localhost:1",
            "http://LocalHost:1",
        ] {
            let url: RelayUrl = local.parse().unwrap();
            assert!(url.is_loopback(), "{local}");
        }
        for remote in [
            "http://10.0.0.1:7373",
            "http://128.0.0.1:1",
            "http://0.0.0.0:1",
            "http://[::]:1",
            "http://[::2]:1",
            "http://[::ffff:10.0.0.1]:1",
            "http://relay.example:1",
            "http://localhost.example:1",
            "http://evil.localhost:1",
        ] {
            let url: RelayUrl = remote.parse().unwrap();
            assert!(!url.is_loopback(), "{remote}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (text, why) in [
            ("", "empty"),
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
