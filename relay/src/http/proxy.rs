//! One request through a virtual host: find the remote, pass the request on, pass the
//! response back.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sesame_proto::v1::HttpProtocol;
use sesame_tunnel::RemoteName;
use tonic::Code;
use tracing::debug;

use super::Body;
use super::Front;
use super::backend::{BackendError, Backends};
use super::headers::{add_forwarding, is_upgrade, remove_hop_by_hop};
use super::pages::page;
use super::timeouts::{TimedBody, copy_until_idle};
use crate::admission::AddressSlot;
use crate::endpoints::HostLookup;

/// Passes a client connection's requests on to the remotes they name.
pub(crate) struct Proxy {
    front: Arc<Front>,
    backends: Backends,
    client: SocketAddr,
    scheme: &'static str,
    /// The client address's slot, held by the connection and by the protocol switches it
    /// makes, which outlive it.
    slot: Option<Arc<AddressSlot>>,
}

impl Proxy {
    pub(crate) fn new(
        front: Arc<Front>,
        backends: Backends,
        client: SocketAddr,
        scheme: &'static str,
        slot: Option<Arc<AddressSlot>>,
    ) -> Self {
        Proxy {
            front,
            backends,
            client,
            scheme,
            slot,
        }
    }

    /// Answers one request: the service's response, or a page saying why there is none.
    pub(crate) async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        // A gRPC stream may rightly be quiet for long (a subscription); the connection's
        // pings tell a dead client from a quiet one.
        let body_timeout = (!grpc).then_some(self.front.config.body_timeout);
        let mut request = request.map(|body| TimedBody::new(body, body_timeout));
        let Some(host) = host_of(&request) else {
            return page(StatusCode::BAD_REQUEST, "the request names no host", grpc);
        };
        let Some(site) = &self.front.endpoints.site else {
            return page(
                StatusCode::NOT_FOUND,
                "this relay serves no virtual hosts",
                grpc,
            );
        };
        let Some(name) = site.remote_of(&host) else {
            let message = format!(
                "no remote is published at {host:?}: remotes are NAME.{}",
                site.domain
            );
            return page(StatusCode::NOT_FOUND, &message, grpc);
        };
        let route = match self.front.endpoints.http_route(&name) {
            HostLookup::Route(route) => route,
            HostLookup::Offline => {
                let message = format!("remote {:?} is offline", name.as_str());
                return page(StatusCode::BAD_GATEWAY, &message, grpc);
            }
            HostLookup::Unknown => {
                let message = format!("no remote serves HTTP at {host:?}");
                return page(StatusCode::NOT_FOUND, &message, grpc);
            }
        };

        let upgrade = request.version() == Version::HTTP_11 && is_upgrade(request.headers());
        if upgrade && route.protocol == HttpProtocol::H2c {
            let message = "this service speaks HTTP/2, which cannot switch protocols";
            return page(StatusCode::BAD_GATEWAY, message, grpc);
        }
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let client_version = request.version();
        if let Err(message) = self.prepare(&mut request, &host, &route, upgrade) {
            return page(StatusCode::BAD_REQUEST, &message, grpc);
        }

        let sent = self
            .backends
            .send(&name, route.port, route.protocol, request, !upgrade)
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return self.failure(&name, route.port, error, grpc),
        };
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(join_upgrades(
                self.front.clone(),
                self.slot.clone(),
                client_upgrade,
                backend_upgrade,
            ));
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, body.boxed());
        }
        remove_hop_by_hop(response.headers_mut(), false);
        *response.version_mut() = client_version;
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.boxed())
    }

    /// Rewrites a client's request for the service: its host, headers and form.
    fn prepare(
        &self,
        request: &mut Request<TimedBody>,
        host: &str,
        route: &crate::endpoints::HttpRoute,
        upgrade: bool,
    ) -> Result<(), String> {
        let headers = request.headers_mut();
        remove_hop_by_hop(headers, upgrade);
        add_forwarding(headers, self.client.ip(), self.scheme, host);
        let service_host = route.host_header.as_deref().unwrap_or(host);
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match route.protocol {
            HttpProtocol::H2c => {
                // HTTP/2 carries the host in the URI, as `:authority`.
                request.headers_mut().remove(header::HOST);
                let authority: Authority = service_host
                    .parse()
                    .map_err(|_| format!("{service_host:?} is not a valid host"))?;
                *request.uri_mut() = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority)
                    .path_and_query(path)
                    .build()
                    .map_err(|error| error.to_string())?;
                *request.version_mut() = Version::HTTP_2;
            }
            _ => {
                let value = HeaderValue::from_str(service_host)
                    .map_err(|_| format!("{service_host:?} is not a valid host"))?;
                request.headers_mut().insert(header::HOST, value);
                *request.uri_mut() = Uri::from(path);
                *request.version_mut() = Version::HTTP_11;
            }
        }
        Ok(())
    }

    /// The page for a request that did not get through.
    ///
    /// Anyone may read it, so a failed dial is told in the relay's own words: the agent's
    /// reason names the address its service listens on behind the agent (`127.0.0.1:8080:
    /// connection refused`), which is the remote owner's to know, not the public's. The
    /// reason goes to the relay's debug log.
    fn failure(
        &self,
        name: &RemoteName,
        port: u16,
        error: BackendError,
        grpc: bool,
    ) -> Response<Body> {
        let quoted = format!("{:?}", name.as_str());
        match error {
            BackendError::Dial(status) => {
                debug!(remote = %name, port, error = status.message(), "dial failed");
                let (code, message) = match status.code() {
                    Code::DeadlineExceeded => (
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("remote {quoted} did not answer in time"),
                    ),
                    Code::NotFound => (
                        StatusCode::BAD_GATEWAY,
                        format!("remote {quoted} is offline"),
                    ),
                    Code::ResourceExhausted => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "remote {quoted} takes no more connections from here for now: try \
                             again later"
                        ),
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        format!("the service behind remote {quoted} is not answering"),
                    ),
                };
                page(code, &message, grpc)
            }
            BackendError::Http(error) => {
                debug!(remote = %name, port, %error, "the service failed");
                let message = format!("the service of remote {quoted} failed: {error}");
                page(StatusCode::BAD_GATEWAY, &message, grpc)
            }
        }
    }
}

/// The host a request is for: the URI's authority (HTTP/2's `:authority`, or an absolute
/// HTTP/1.1 request target, which RFC 9112 says wins over `Host`), else the `Host` header.
fn host_of<B>(request: &Request<B>) -> Option<String> {
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => request
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .to_owned(),
    };
    // Userinfo has no place in a host.
    (!host.is_empty() && !host.contains('@')).then_some(host)
}

/// Carries the bytes of a switched protocol between the client and the service, once both
/// sides have switched, until both close, the relay's cut, or the connection has carried
/// nothing for the idle timeout. The client's address keeps the connection's slot until then.
async fn join_upgrades(
    front: Arc<Front>,
    _slot: Option<Arc<AddressSlot>>,
    client: hyper::upgrade::OnUpgrade,
    service: hyper::upgrade::OnUpgrade,
) {
    let (client, service) = match tokio::try_join!(client, service) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "a protocol switch failed");
            return;
        }
    };
    let (mut client, mut service) = (TokioIo::new(client), TokioIo::new(service));
    tokio::select! {
        result = copy_until_idle(&mut client, &mut service, front.upgrade_idle_timeout) => {
            if let Err(error) = result {
                debug!(%error, "a switched connection failed");
            }
        }
        () = front.shutdown.cut.cancelled() => {}
    }
}
