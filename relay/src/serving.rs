//! Serving the gRPC listener's connections with tonic's `Server`, one per runtime that serves
//! connections (each worker thread, or the relay's own runtime without workers), with the
//! relay's transport settings, until the relay shuts down.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use sesame_tunnel::io_reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::admission::{Admitted, Handshakes, PerAddress};
use crate::config::RelayConfig;
use crate::metrics::{HandshakeResult, Listener, Metrics};
use crate::shutdown::{CutAfterFlush, Shutdown};
use crate::workers::Workers;

/// The most TLS handshakes under way at once on a listener; a new one beyond it sheds the
/// oldest.
pub(crate) const MAX_HANDSHAKES: usize = 1024;

/// The most streams of one HTTP/2 connection the relay may reset for the peer's errors
/// before it closes the connection (hyper's default, which tonic's server would otherwise
/// lift): a peer that provokes resets cannot keep the relay busy with them.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves each connection accepted on `listener` with `routes` on a worker, once `prepare`
/// (a TLS handshake, say) has made it ready, until the shutdown begins; then waits for
/// the connections as [`serve`] does. A slow or silent TLS client delays nobody: `prepare`
/// runs on the workers, at most [`MAX_HANDSHAKES`] at once and a few per client address, a
/// new one shedding the oldest; and an address may keep only so many connections.
pub(crate) async fn serve_listener<P, PF, IO>(
    config: &RelayConfig,
    shutdown: &Shutdown,
    routes: Routes,
    listener: TcpListener,
    workers: &Workers,
    prepare: P,
    metrics: &Arc<Metrics>,
) where
    P: Fn(TcpStream) -> PF + Clone + Send + 'static,
    PF: Future<Output = Option<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    // A tonic server on each runtime, fed the connections handed to that runtime.
    let mut servers = Vec::new();
    let mut inboxes = Vec::new();
    for runtime in workers.runtimes() {
        let (inbox, incoming) = mpsc::unbounded_channel::<Admitted<IO>>();
        let incoming = UnboundedReceiverStream::new(incoming).map(Ok::<_, Infallible>);
        let (config, shutdown, routes) = (config.clone(), shutdown.clone(), routes.clone());
        let serving = async move { serve(&config, shutdown, routes, incoming).await };
        servers.push(runtime.spawn(serving));
        inboxes.push(inbox);
    }
    let inboxes: Arc<[_]> = inboxes.into();
    let handshakes = Handshakes::new(MAX_HANDSHAKES, config.max_handshakes_per_address);
    let connections = PerAddress::new(config.max_connections_per_address);
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.begun.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: the next accept may succeed.
                Err(error) => {
                    debug!(error = %io_reason(&error), "accepting a connection failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Some(slot) = connections.take(remote.ip()) else {
            debug!(%remote, "the address has as many connections as it may: closing a new one");
            continue;
        };
        let handshake = handshakes.admit(remote.ip());
        let (prepare, inboxes, metrics) = (prepare.clone(), inboxes.clone(), metrics.clone());
        workers.hand_over(tcp, move |tcp, index| async move {
            let ready = tokio::select! {
                ready = prepare(tcp) => ready,
                () = handshake.shed().cancelled() => {
                    debug!(%remote, "a handshake was shed for a newer one");
                    metrics.handshake(Listener::Grpc, HandshakeResult::Shed);
                    None
                }
            };
            drop(handshake);
            if let Some(io) = ready {
                // Refused only once that runtime's server has stopped accepting.
                let _ = inboxes[index].send(Admitted::new(io, Some(slot)));
            }
        });
    }
    // The listener closes as soon as accepting stops.
    drop(listener);
    for server in servers {
        let _ = server.await;
    }
}

/// Serves each connection of `incoming` with `routes` until the shutdown begins or `incoming`
/// ends (which begins it), then waits for the connections to finish: each is shut down
/// gracefully (its open calls run on), and ends once its calls have, or once the cut has come
/// and its calls' statuses had their time to go out.
pub(crate) async fn serve<I, IO, IE>(
    config: &RelayConfig,
    shutdown: Shutdown,
    routes: Routes,
    incoming: I,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let transport = &config.transport;
    let cut = shutdown.cut.clone();
    let incoming = incoming.map_ok(move |io| CutAfterFlush::new(io, cut.clone()));
    // An incoming stream that ended shuts the relay down as a signal would, at once: tonic's
    // server then waits for the connections, and agents' sessions end only once it has begun.
    let ended = shutdown.begun.clone();
    let incoming =
        incoming.chain(stream::once(async move { ended.cancel() }).filter_map(|()| async { None }));
    let served = Server::builder()
        .initial_stream_window_size(transport.stream_window)
        .initial_connection_window_size(transport.connection_window)
        .max_frame_size(transport.max_frame_size)
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_adaptive_window(Some(false))
        .http2_keepalive_interval(Some(transport.keepalive_interval))
        .http2_keepalive_timeout(Some(transport.keepalive_timeout))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.begun.cancelled_owned())
        .await;
    if let Err(error) = served {
        debug!(%error, "serving connections failed");
    }
}
