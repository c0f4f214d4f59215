//! Public endpoints: what an agent asks the relay to publish a port as (an HTTP virtual host,
//! a TCP port of the relay's), and where the relay published it.

use std::fmt;

use sesame_proto::v1::{ExposedPort, HttpEndpoint, TcpEndpoint};

/// How the relay should publish an exposed port besides dials. The default publishes nothing:
/// only dialers reach the port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publish {
    /// Serve the port as the HTTP virtual host `{remote}.{domain}` of the relay.
    pub http: Option<HttpPublish>,
    /// Publish the port on a TCP port of the relay.
    pub tcp: Option<TcpPublish>,
}

impl Publish {
    /// Publishes nothing: the port is reached by dialing only.
    pub fn none() -> Self {
        Publish::default()
    }

    /// Serves the port as an HTTP virtual host, as [`HttpPublish`] says.
    pub fn http(mut self, http: HttpPublish) -> Self {
        self.http = Some(http);
        self
    }

    /// Publishes the port on a TCP port of the relay, as [`TcpPublish`] says.
    pub fn tcp(mut self, tcp: TcpPublish) -> Self {
        self.tcp = Some(tcp);
        self
    }

    /// The request the agent sends for `port`.
    pub(crate) fn to_proto(&self, port: u16) -> ExposedPort {
        ExposedPort {
            port: u32::from(port),
            http: self.http.as_ref().map(|http| HttpEndpoint {
                protocol: match http.protocol {
                    HttpProtocol::Http1 => sesame_proto::v1::HttpProtocol::Http1,
                    HttpProtocol::H2c => sesame_proto::v1::HttpProtocol::H2c,
                } as i32,
                host_header: http.host_header.clone().unwrap_or_default(),
                urls: Vec::new(),
            }),
            tcp: self.tcp.as_ref().map(|tcp| TcpEndpoint {
                public_port: tcp.port.map_or(0, u32::from),
                proxy_protocol: tcp.proxy_protocol,
                address: String::new(),
            }),
        }
    }
}

/// How an exposed port is served as an HTTP virtual host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpPublish {
    /// The protocol the service behind the port speaks.
    pub protocol: HttpProtocol,
    /// The Host header the service receives instead of the client's.
    pub host_header: Option<String>,
}

impl HttpPublish {
    /// A service that speaks `protocol`, receiving the client's Host header.
    pub fn new(protocol: HttpProtocol) -> Self {
        HttpPublish {
            protocol,
            host_header: None,
        }
    }

    /// The service receives `host` as its Host header (`:authority` in HTTP/2).
    pub fn host_header(mut self, host: impl Into<String>) -> Self {
        self.host_header = Some(host.into());
        self
    }
}

/// The protocol a service behind a virtual host speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpProtocol {
    /// HTTP/1.1; clients may still use HTTP/2 with the relay.
    #[default]
    Http1,
    /// HTTP/2 without TLS, with prior knowledge (h2c), as gRPC servers speak it.
    H2c,
}

/// How an exposed port is published on a TCP port of the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpPublish {
    /// The relay port to use; any free one of the relay's range when `None`.
    pub port: Option<u16>,
    /// Send a PROXY protocol v2 header first on each connection, with the client's address.
    pub proxy_protocol: bool,
}

impl TcpPublish {
    /// Any free port of the relay's range, without a PROXY protocol header.
    pub fn any_port() -> Self {
        TcpPublish::default()
    }

    /// This port of the relay.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Whether to send a PROXY protocol v2 header first.
    pub fn proxy_protocol(mut self, enabled: bool) -> Self {
        self.proxy_protocol = enabled;
        self
    }
}

/// Where the relay published an exposed port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The URLs of its HTTP virtual host, one per public listener of the relay.
    pub http_urls: Vec<String>,
    /// Its public TCP address, `host:port`.
    pub tcp_address: Option<String>,
}

impl Published {
    /// What the relay's confirmation says.
    pub(crate) fn from_proto(port: &ExposedPort) -> Self {
        Published {
            http_urls: port
                .http
                .as_ref()
                .map(|http| http.urls.clone())
                .unwrap_or_default(),
            tcp_address: port
                .tcp
                .as_ref()
                .map(|tcp| tcp.address.clone())
                .filter(|address| !address.is_empty()),
        }
    }

    /// Whether the port is published anywhere.
    pub fn is_empty(&self) -> bool {
        self.http_urls.is_empty() && self.tcp_address.is_none()
    }
}

impl fmt::Display for Published {
    /// The URLs and the address, separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = self
            .http_urls
            .iter()
            .map(String::as_str)
            .chain(self.tcp_address.as_deref());
        if let Some(first) = parts.next() {
            f.write_str(first)?;
        }
        parts.try_for_each(|part| write!(f, " {part}"))
    }
}
