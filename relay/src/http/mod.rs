//! The public HTTP listeners: virtual hosts `NAME.DOMAIN` in front of the HTTP services that
//! remotes publish, over HTTP/1.1 and HTTP/2, in plaintext (h2c with prior knowledge) or TLS
//! (h2 through ALPN).
//!
//! The relay is a full reverse proxy here, not a byte pipe: it reads each request, picks the
//! remote by `Host` (`:authority` in HTTP/2), adds forwarding headers, and streams bodies
//! both ways without buffering them. Protocol switches (WebSocket) pass through on HTTP/1.1.
//! - `proxy`: one request; `backend`: connections to the services; `headers`: what a proxy
//!   changes; `pages`: the relay's own answers.

mod backend;
pub(crate) mod headers;
mod pages;
mod proxy;
mod rewind;
mod timeouts;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sesame_tunnel::{TransportSettings, io_reason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::admission::{AddressSlot, Handshake, Handshakes, PerAddress};
use crate::config::HttpConfig;
use crate::endpoints::Endpoints;
use crate::metrics::{HandshakeResult, Listener, Metrics};
use crate::serving::MAX_HANDSHAKES;
use crate::sessions::Sessions;
use crate::shutdown::Shutdown;
use crate::workers::Workers;
use backend::Backends;
use proxy::Proxy;
use rewind::Rewind;
use timeouts::Activity;

/// The body of what the relay answers: the service's, or a page of its own.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the public HTTP listeners need of the relay.
pub(crate) struct Front {
    /// The listeners' limits.
    pub(crate) config: HttpConfig,
    /// The HTTP/2 settings of client connections, and of connections to the services.
    pub(crate) transport: TransportSettings,
    /// The virtual hosts.
    pub(crate) endpoints: Arc<Endpoints>,
    /// Where requests are dialed.
    pub(crate) sessions: Arc<dyn Sessions>,
    /// The relay's shutdown: listeners stop when it begins, connections end at the cut.
    pub(crate) shutdown: Shutdown,
    /// The public connections of each client address, shared with the TCP ports.
    pub(crate) public_connections: Arc<PerAddress>,
    /// The most TLS handshakes one address may have under way on an HTTPS listener.
    pub(crate) handshakes_per_address: usize,
    /// How long a switched protocol (WebSocket) may carry nothing before it is closed.
    pub(crate) upgrade_idle_timeout: std::time::Duration,
    /// What the relay counts.
    pub(crate) metrics: Arc<Metrics>,
}

/// A public HTTP listener, with TLS for HTTPS.
pub(crate) struct PublicListener {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
}

impl PublicListener {
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Serves one public listener until the relay shuts down, each connection on a worker, as
/// many from one address as it may have, and TLS handshakes as `admission` lets in.
pub(crate) async fn serve(front: Arc<Front>, public: PublicListener, workers: Arc<Workers>) {
    let scheme = public.scheme();
    let handshakes = Handshakes::new(MAX_HANDSHAKES, front.handshakes_per_address);
    loop {
        let accepted = tokio::select! {
            () = front.shutdown.begun.cancelled() => return,
            accepted = public.listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, client)) => {
                let Some(slot) = front.public_connections.take(client.ip()) else {
                    debug!(%client, "the address has as many connections as it may: closed");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let span = info_span!("http", %client, scheme);
                let tls = public
                    .tls
                    .clone()
                    .map(|tls| (tls, handshakes.admit(client.ip())));
                let front = front.clone();
                workers.hand_over(tcp, move |tcp, _| {
                    serve_connection(front, tcp, client, tls, Some(slot)).instrument(span)
                });
            }
            // Out of file descriptors and the like: the next accept may succeed.
            Err(error) => warn!(error = %io_reason(&error), "accepting a connection failed"),
        }
    }
}

/// The protocol a client connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
}

/// Serves one client connection (a TCP stream, or an in-memory one when fuzzing): TLS first
/// for HTTPS (given up if the handshake is shed for a newer one), then HTTP/1.1 or HTTP/2.
/// The client address's `slot` is held until the connection, and every protocol switch it
/// made, have ended.
pub(crate) async fn serve_connection<IO>(
    front: Arc<Front>,
    tcp: IO,
    client: SocketAddr,
    tls: Option<(TlsAcceptor, Handshake)>,
    slot: Option<AddressSlot>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head_timeout = front.config.head_timeout;
    match tls {
        Some((acceptor, handshake)) => {
            let accepting = tokio::time::timeout(head_timeout, acceptor.accept(tcp));
            let counted = |result| front.metrics.handshake(Listener::Https, result);
            let accepted = tokio::select! {
                accepted = accepting => accepted,
                () = handshake.shed().cancelled() => {
                    debug!("a TLS handshake was shed for a newer one");
                    counted(HandshakeResult::Shed);
                    return;
                }
            };
            drop(handshake);
            let Ok(accepted) = accepted else {
                debug!("no TLS handshake in time");
                counted(HandshakeResult::TimedOut);
                return;
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(error = %io_reason(&error), "TLS handshake failed");
                    counted(HandshakeResult::Failed);
                    return;
                }
            };
            counted(HandshakeResult::Ok);
            let version = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Version::Http2,
                _ => Version::Http1,
            };
            serve_http(front, stream, client, "https", version, slot).await;
        }
        None => {
            let mut tcp = tcp;
            let Ok(read) = tokio::time::timeout(head_timeout, sniff(&mut tcp)).await else {
                debug!("no request in time");
                return;
            };
            match read {
                Ok((version, prefix)) => {
                    let stream = Rewind::new(prefix, tcp);
                    serve_http(front, stream, client, "http", version, slot).await;
                }
                Err(error) => debug!(error = %io_reason(&error), "reading the request failed"),
            }
        }
    }
}

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 by the connection's first bytes; returns
/// them, to be read again.
async fn sniff(tcp: &mut (impl AsyncRead + Unpin)) -> io::Result<(Version, Bytes)> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    // Each read adds at least a byte, so this takes at most as many rounds as the preface has
    // bytes.
    while buf.len() < H2_PREFACE.len() {
        let read = tcp.read_buf(&mut buf).await?;
        let common = buf.len().min(H2_PREFACE.len());
        if read == 0 || buf[..common] != H2_PREFACE[..common] {
            return Ok((Version::Http1, buf.freeze()));
        }
    }
    Ok((Version::Http2, buf.freeze()))
}

/// Serves HTTP on a connection until the client closes it, the relay's grace period ends,
/// or (after a graceful shutdown) its open requests finish.
async fn serve_http<IO>(
    front: Arc<Front>,
    io: IO,
    client: SocketAddr,
    scheme: &'static str,
    version: Version,
    slot: Option<AddressSlot>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let backends = Backends::new(front.clone(), client);
    let slot = slot.map(Arc::new);
    let proxy = Arc::new(Proxy::new(front.clone(), backends, client, scheme, slot));
    // HTTP/2 connections are closed once idle; HTTP/1.1 ones by hyper's head timeout.
    let activity = (version == Version::Http2).then(Activity::new);
    let tracked = activity.clone();
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let under_way = tracked.as_ref().map(Activity::begin);
        async move {
            let response = proxy.handle(request).await;
            let Some(under_way) = under_way else {
                return Ok::<_, std::convert::Infallible>(response);
            };
            // The request is under way until its response's body is done with.
            let response = response.map(|body| {
                body.map_frame(move |frame| {
                    let _ = &under_way;
                    frame
                })
                .boxed()
            });
            Ok(response)
        }
    });
    let config = &front.config;
    let idle_timeout = config.idle_timeout;
    let idle = async move {
        match activity {
            Some(activity) => activity.idle_for(idle_timeout).await,
            None => std::future::pending().await,
        }
    };
    let io = TokioIo::new(io);
    let result = match version {
        Version::Http1 => {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.head_timeout)
                .max_header_size(config.max_head_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            front
                .shutdown
                .drive(connection, |c| c.as_mut().graceful_shutdown(), idle)
                .await
        }
        Version::Http2 => {
            let transport = &front.transport;
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(config.max_head_bytes as u32)
                .max_concurrent_streams(config.max_streams)
                .initial_stream_window_size(transport.stream_window)
                .initial_connection_window_size(transport.connection_window)
                .max_frame_size(transport.max_frame_size)
                .keep_alive_interval(transport.keepalive_interval)
                .keep_alive_timeout(transport.keepalive_timeout)
                .serve_connection(io, service);
            front
                .shutdown
                .drive(connection, |c| c.as_mut().graceful_shutdown(), idle)
                .await
        }
    };
    if let Err(error) = result {
        debug!(%error, "the connection ended with an error");
    }
}
