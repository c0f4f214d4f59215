//! Entry points for the fuzz targets in `tests/fuzz` (feature `fuzzing`): the public HTTP
//! listener's connection handling, fed an in-memory stream instead of an accepted TCP
//! connection, and the pure helpers behind it. Not a stable API.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use sesame_proto::v1::{ExposedPort, HttpEndpoint, HttpProtocol};
use sesame_tunnel::{RemoteName, SessionId};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::RelayConfig;
use crate::endpoints::{Endpoints, HttpSite};
use crate::http::Front;
use crate::http::headers::{add_forwarding, is_upgrade, remove_hop_by_hop};
use crate::registry::MemoryRegistry;
use crate::sessions::LocalSessions;
use crate::shutdown::Shutdown;

/// The domain of the virtual hosts [`HttpFront`] serves.
pub const DOMAIN: &str = "relay.test";

/// The address every fuzzed client connection comes from.
const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    40000,
);

/// A relay's plaintext HTTP side, without listeners and without agents: `h1.relay.test`
/// routes to an HTTP/1.1 service and `h2.relay.test` to an h2c one with its own Host header
/// (both answer 502, as no agent holds them), `gone.relay.test` went offline, and any other
/// name is unknown.
pub struct HttpFront {
    front: Arc<Front>,
}

impl std::fmt::Debug for HttpFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFront").finish_non_exhaustive()
    }
}

impl Default for HttpFront {
    fn default() -> Self {
        let site = HttpSite {
            domain: DOMAIN.to_owned(),
            listeners: vec![("http", 80)],
        };
        let config = RelayConfig::default();
        let registry = Arc::new(MemoryRegistry::default());
        let limits = (&config).into();
        let endpoints = Arc::new(Endpoints::new(Some(site), None));
        let session = SessionId::from_wire("fuzzing".to_owned());
        let routes = [
            ("h1", HttpProtocol::Http1, ""),
            ("h2", HttpProtocol::H2c, "service.internal:8080"),
            ("gone", HttpProtocol::Http1, ""),
        ];
        for (name, protocol, host_header) in routes {
            let name = RemoteName::new(name).expect("a valid name");
            let request = ExposedPort {
                port: 80,
                http: Some(HttpEndpoint {
                    protocol: protocol as i32,
                    host_header: host_header.to_owned(),
                    urls: Vec::new(),
                }),
                tcp: None,
            };
            endpoints
                .publish(
                    &crate::auth::Caller::anyone(),
                    &name,
                    &session,
                    80,
                    &request,
                )
                .expect("a virtual host of a relay with a domain");
        }
        let gone = RemoteName::new("gone").expect("a valid name");
        endpoints.withdraw(&gone, &session, 80);
        let front = Front {
            config: config.http,
            transport: config.transport,
            endpoints,
            sessions: Arc::new(LocalSessions::new(registry, limits, Arc::default())),
            shutdown: Shutdown::default(),
            public_connections: crate::admission::PerAddress::new(usize::MAX),
            handshakes_per_address: 1,
            upgrade_idle_timeout: config.public.tcp_idle_timeout,
            metrics: Arc::default(),
        };
        HttpFront {
            front: Arc::new(front),
        }
    }
}

impl HttpFront {
    /// Serves one client connection as the plaintext HTTP listener does an accepted one:
    /// HTTP/2 with prior knowledge or HTTP/1.1, until the client or the relay closes it.
    pub async fn serve_connection<IO>(&self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        crate::http::serve_connection(self.front.clone(), io, CLIENT, None, None).await;
    }

    /// The remote a request's host names, as the proxy looks it up.
    pub fn remote_of(&self, host: &str) -> Option<RemoteName> {
        self.front.endpoints.site.as_ref()?.remote_of(host)
    }
}

/// Rewrites a request's headers as the proxy does before passing it on: hop-by-hop headers
/// go (but a protocol switch's stay), forwarding headers for `host` come. Returns whether the
/// headers asked for a protocol switch.
pub fn rewrite_request_headers(headers: &mut HeaderMap, host: &str, https: bool) -> bool {
    let upgrade = is_upgrade(headers);
    remove_hop_by_hop(headers, upgrade);
    add_forwarding(
        headers,
        CLIENT.ip(),
        if https { "https" } else { "http" },
        host,
    );
    upgrade
}

/// Removes a response's hop-by-hop headers, as the proxy does before passing it back.
pub fn rewrite_response_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers, false);
}
