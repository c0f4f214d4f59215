//! Public endpoints: how the relay publishes remotes' ports to clients that do not run
//! Sesame. An agent asks for them port by port (`ExposePort.http`, `ExposePort.tcp`); this
//! module decides whether it may have them, and which, and forgets them when the port or the
//! session goes.
//!
//! - HTTP virtual hosts: `NAME.DOMAIN` on the relay's HTTP and HTTPS listeners routes to one
//!   port of remote NAME ([`HttpRoute`]); the proxy itself is in `http`.
//! - TCP ports: a port of the relay's range, listened on by the relay ([`tcp`]).

pub(crate) mod tcp;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sesame_proto::v1::{ExposedPort, HttpEndpoint, HttpProtocol, TcpEndpoint};
use sesame_tunnel::{RemoteName, SessionId};
use tonic::Status;

use crate::auth::Caller;
use crate::lock;
use crate::registry::PublicEndpoints;
use tcp::TcpPorts;

/// Where the relay serves HTTP virtual hosts.
#[derive(Clone, Debug)]
pub(crate) struct HttpSite {
    /// The domain under which remote NAME is `NAME.DOMAIN`, lowercase, without a trailing dot.
    pub(crate) domain: String,
    /// The public listeners' schemes and ports, such as `("https", 443)`: one URL each.
    pub(crate) listeners: Vec<(&'static str, u16)>,
}

impl HttpSite {
    /// The URLs of remote `name`'s virtual host.
    fn urls(&self, name: &RemoteName) -> Vec<String> {
        self.listeners
            .iter()
            .map(|&(scheme, port)| match (scheme, port) {
                ("http", 80) | ("https", 443) => format!("{scheme}://{name}.{}", self.domain),
                _ => format!("{scheme}://{name}.{}:{port}", self.domain),
            })
            .collect()
    }

    /// The remote a request's host (`Host` or `:authority`, perhaps with a port) names:
    /// `None` unless it is a single label under the domain.
    pub(crate) fn remote_of(&self, host: &str) -> Option<RemoteName> {
        let host = match host.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => host,
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label = host.strip_suffix(&self.domain)?.strip_suffix('.')?;
        RemoteName::new(label).ok()
    }
}

/// Where HTTP requests for one remote go.
#[derive(Clone, Debug)]
pub(crate) struct HttpRoute {
    /// The session that published it.
    pub(crate) session: SessionId,
    /// The remote's port that serves HTTP.
    pub(crate) port: u16,
    /// What the service there speaks.
    pub(crate) protocol: HttpProtocol,
    /// The Host header the service receives instead of the client's.
    pub(crate) host_header: Option<String>,
}

/// How many departed virtual hosts the relay remembers, to tell "offline" from "unknown".
const MAX_DEPARTED: usize = 10_000;

/// Whether a virtual host has a route.
pub(crate) enum HostLookup {
    /// Requests go there.
    Route(HttpRoute),
    /// The remote served HTTP here and went away.
    Offline,
    /// No remote serves HTTP under this name.
    Unknown,
}

/// The relay's public endpoints and who holds them.
pub(crate) struct Endpoints {
    pub(crate) site: Option<HttpSite>,
    hosts: Mutex<Hosts>,
    pub(crate) tcp: Option<TcpPorts>,
}

/// The virtual hosts served, and some that were.
#[derive(Default)]
struct Hosts {
    routes: HashMap<RemoteName, HttpRoute>,
    departed: HashSet<RemoteName>,
}

impl Hosts {
    fn remove(&mut self, name: &RemoteName) {
        if self.routes.remove(name).is_some() {
            if self.departed.len() >= MAX_DEPARTED
                && let Some(any) = self.departed.iter().next().cloned()
            {
                self.departed.remove(&any);
            }
            self.departed.insert(name.clone());
        }
    }

    fn insert(&mut self, name: &RemoteName, route: HttpRoute) {
        self.departed.remove(name);
        self.routes.insert(name.clone(), route);
    }
}

impl Endpoints {
    pub(crate) fn new(site: Option<HttpSite>, tcp: Option<TcpPorts>) -> Self {
        Endpoints {
            site,
            hosts: Mutex::default(),
            tcp,
        }
    }

    /// Where requests to `name`'s virtual host go.
    pub(crate) fn http_route(&self, name: &RemoteName) -> HostLookup {
        let hosts = lock(&self.hosts);
        match hosts.routes.get(name) {
            Some(route) => HostLookup::Route(route.clone()),
            None if hosts.departed.contains(name) => HostLookup::Offline,
            None => HostLookup::Unknown,
        }
    }

    /// Publishes `port` of `name` (held by `session` of `caller`) as the agent asks in
    /// `request`; returns where, as the confirmation shows it and as the registry keeps it. On
    /// an error nothing changes; what the port had before stays.
    pub(crate) fn publish(
        &self,
        caller: &Caller,
        name: &RemoteName,
        session: &SessionId,
        port: u16,
        request: &ExposedPort,
    ) -> Result<(ExposedPort, PublicEndpoints), Status> {
        let http = match &request.http {
            None => None,
            Some(http) => Some(self.check_http(name, session, port, http)?),
        };
        let tcp = match &request.tcp {
            None => None,
            Some(tcp) => {
                let ports = self.tcp.as_ref().ok_or_else(|| {
                    Status::failed_precondition(
                        "this relay publishes no TCP ports (it runs without --tcp-ports)",
                    )
                })?;
                Some(ports.open(caller, name, session, port, tcp)?)
            }
        };
        let mut hosts = lock(&self.hosts);
        // An HTTP route this port no longer asks for goes; so does a TCP port.
        if http.is_none() && hosts.routes.get(name).is_some_and(|r| r.port == port) {
            hosts.remove(name);
        }
        if tcp.is_none()
            && let Some(ports) = &self.tcp
        {
            ports.close_port(session, port);
        }
        let mut public = PublicEndpoints::default();
        let mut confirmed = ExposedPort {
            port: u32::from(port),
            ..ExposedPort::default()
        };
        if let Some((route, urls)) = http {
            confirmed.http = Some(HttpEndpoint {
                protocol: route.protocol as i32,
                host_header: route.host_header.clone().unwrap_or_default(),
                urls: urls.clone(),
            });
            public.http_urls = urls;
            hosts.insert(name, route);
        }
        if let Some(opened) = tcp {
            confirmed.tcp = Some(TcpEndpoint {
                public_port: u32::from(opened.port),
                proxy_protocol: opened.proxy_protocol,
                address: opened.address.clone(),
            });
            public.tcp_address = Some(opened.address);
        }
        Ok((confirmed, public))
    }

    /// Checks that `port` of `name` may have the virtual host, and makes its route.
    fn check_http(
        &self,
        name: &RemoteName,
        session: &SessionId,
        port: u16,
        http: &HttpEndpoint,
    ) -> Result<(HttpRoute, Vec<String>), Status> {
        let site = self.site.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this relay serves no HTTP virtual hosts (it runs without --domain)",
            )
        })?;
        if let Some(route) = lock(&self.hosts).routes.get(name)
            && route.session == *session
            && route.port != port
        {
            return Err(Status::already_exists(format!(
                "remote {name} already serves HTTP from port {}: one port per remote",
                route.port
            )));
        }
        let protocol = match HttpProtocol::try_from(http.protocol) {
            Ok(HttpProtocol::H2c) => HttpProtocol::H2c,
            Ok(HttpProtocol::Http1 | HttpProtocol::Unspecified) => HttpProtocol::Http1,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown HTTP protocol {}",
                    http.protocol
                )));
            }
        };
        let host_header = match http.host_header.as_str() {
            "" => None,
            host if http::HeaderValue::from_str(host).is_ok() && !host.contains(' ') => {
                Some(host.to_owned())
            }
            host => {
                return Err(Status::invalid_argument(format!(
                    "{host:?} is not a valid Host header"
                )));
            }
        };
        let route = HttpRoute {
            session: session.clone(),
            port,
            protocol,
            host_header,
        };
        Ok((route, site.urls(name)))
    }

    /// Forgets the endpoints of `port` of `name`, if `session` holds them.
    pub(crate) fn withdraw(&self, name: &RemoteName, session: &SessionId, port: u16) {
        let mut hosts = lock(&self.hosts);
        if hosts
            .routes
            .get(name)
            .is_some_and(|route| route.session == *session && route.port == port)
        {
            hosts.remove(name);
        }
        if let Some(ports) = &self.tcp {
            ports.close_port(session, port);
        }
    }

    /// Forgets every endpoint `session` holds.
    pub(crate) fn withdraw_session(&self, name: &RemoteName, session: &SessionId) {
        let mut hosts = lock(&self.hosts);
        if hosts
            .routes
            .get(name)
            .is_some_and(|route| route.session == *session)
        {
            hosts.remove(name);
        }
        if let Some(ports) = &self.tcp {
            ports.close_session(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> HttpSite {
        HttpSite {
            domain: "tunnel.example.com".to_owned(),
            listeners: vec![("http", 80), ("https", 8443)],
        }
    }

    #[test]
    fn hosts_name_remotes_by_their_first_label() {
        let site = site();
        let pi = RemoteName::new("pi").unwrap();
        for host in [
            "pi.tunnel.example.com",
            "PI.Tunnel.Example.com",
            "pi.tunnel.example.com:8080",
            "pi.tunnel.example.com.",
        ] {
            assert_eq!(site.remote_of(host), Some(pi.clone()), "{host}");
        }
        for host in [
            "tunnel.example.com",
            "a.pi.tunnel.example.com",
            "pi.tunnel.example.org",
            "pitunnel.example.com",
            "-x.tunnel.example.com",
            "127.0.0.1:80",
            "",
        ] {
            assert_eq!(site.remote_of(host), None, "{host}");
        }
    }

    #[test]
    fn urls_leave_out_default_ports() {
        let urls = site().urls(&RemoteName::new("pi").unwrap());
        assert_eq!(
            urls,
            [
                "http://pi.tunnel.example.com",
                "https://pi.tunnel.example.com:8443"
            ]
        );
    }
}
