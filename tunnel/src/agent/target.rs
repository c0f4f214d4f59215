//! [`Target`]: a TCP address an agent forwards a port's connections to, and how the agent
//! reaches it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// A TCP address an agent forwards a port's connections to. The agent connects to nothing
/// else: it is never an open proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// A target at `host` (a name or an IP address) and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or(host);
        Target { host, port }
    }

    /// A target on this machine: `localhost:PORT`. `localhost` means loopback (RFC 6761):
    /// the agent tries 127.0.0.1, then ::1, without asking the resolver, so a busy port costs
    /// no lookup per connection.
    pub fn local(port: u16) -> Self {
        Target::new("localhost", port)
    }

    /// Connects to the target.
    pub(super) async fn connect(&self) -> std::io::Result<TcpStream> {
        if self.host.eq_ignore_ascii_case("localhost") {
            let loopback = [
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, self.port)),
            ];
            return TcpStream::connect(&loopback[..]).await;
        }
        TcpStream::connect((self.host.as_str(), self.port)).await
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_means_loopback_on_either_family() {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let conn = Target::local(port).connect().await.unwrap();
        assert!(conn.peer_addr().unwrap().ip().is_loopback());
        // Only on ::1: the IPv4 attempt is refused, then IPv6 answers.
        if let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await {
            let port = v6.local_addr().unwrap().port();
            let conn = Target::new("LOCALHOST", port).connect().await.unwrap();
            assert_eq!(conn.peer_addr().unwrap().ip(), Ipv6Addr::LOCALHOST);
        }
    }

    #[test]
    fn targets_print_like_addresses() {
        assert_eq!(Target::local(8080).to_string(), "localhost:8080");
        assert_eq!(Target::new("[::1]", 22).to_string(), "[::1]:22");
        assert_eq!(Target::new("::1", 22).host(), "::1");
        assert_eq!(Target::new("10.0.0.2", 5432).to_string(), "10.0.0.2:5432");
    }
}
