//! Serving the gRPC listener's connections: each one HTTP/2 with the relay's transport
//! settings, on a worker thread when there are workers, its streams' tasks on the relay's
//! [`Executor`], until the relay shuts down.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sesame_tunnel::io_reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::Service;
use tracing::debug;

use crate::executor::Executor;
use crate::handshake::handshake;
use crate::state::State;
use crate::workers::Workers;

/// The most TLS handshakes under way at once; connections beyond it are closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// Serves each connection accepted on `listener` with `routes` on a worker, after a TLS
/// handshake when `tls` is given, until the relay's shutdown begins; then waits for the
/// connections as [`serve`] does. A slow or silent TLS client delays nobody: handshakes run
/// on the workers, bounded in time and number.
pub(crate) async fn serve_listener(
    state: Arc<State>,
    routes: Routes,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    workers: &Workers,
) {
    let connections = TaskTracker::new();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, remote) = tokio::select! {
            () = state.shutdown.cancelled() => break,
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
        let tracked = connections.token();
        let (state, routes) = (state.clone(), routes.clone());
        match &tls {
            None => workers.hand_over(tcp, move |tcp| async move {
                serve_connection(state, routes, tcp).await;
                drop(tracked);
            }),
            Some(acceptor) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%remote, "too many TLS handshakes under way: closing a new connection");
                    continue;
                };
                let acceptor = acceptor.clone();
                workers.hand_over(tcp, move |tcp| async move {
                    let timeout = state.config.handshake_timeout;
                    let handshaken = handshake(&acceptor, tcp, timeout).await;
                    drop(permit);
                    if let Some(tls) = handshaken {
                        serve_connection(state, routes, tls).await;
                    }
                    drop(tracked);
                });
            }
        }
    }
    // The listener closes as soon as accepting stops.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves each connection of `incoming` with `routes` until the relay's shutdown begins or
/// `incoming` ends, then waits for the connections to finish: each is shut down gracefully
/// once the shutdown begins, and cut once the grace period ends.
pub(crate) async fn serve<I, IO, IE>(state: Arc<State>, routes: Routes, incoming: I)
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = TaskTracker::new();
    {
        // Dropped at the end of this scope: the listener closes as soon as accepting stops.
        let mut incoming = pin!(incoming.take_until(state.shutdown.clone().cancelled_owned()));
        while let Some(accepted) = incoming.next().await {
            match accepted {
                Ok(io) => {
                    connections.spawn(serve_connection(state.clone(), routes.clone(), io));
                }
                Err(error) => debug!(error = %error.into(), "accepting a connection failed"),
            }
        }
    }
    // An incoming stream that ended shuts the relay down as a signal would.
    state.shutdown.cancel();
    connections.close();
    connections.wait().await;
}

/// Serves one connection until it ends; the calls see its address as their remote address.
async fn serve_connection<IO>(state: Arc<State>, routes: Routes, io: IO)
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let info = io.connect_info();
    let service = service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        routes.clone().call(request.map(tonic::body::Body::new))
    });
    let transport = &state.config.transport;
    let connection = hyper::server::conn::http2::Builder::new(Executor)
        .timer(TokioTimer::new())
        .initial_stream_window_size(transport.stream_window)
        .initial_connection_window_size(transport.connection_window)
        .max_frame_size(transport.max_frame_size)
        .max_concurrent_streams(state.config.max_concurrent_streams)
        .adaptive_window(false)
        .keep_alive_interval(transport.keepalive_interval)
        .keep_alive_timeout(transport.keepalive_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = drive(&state, connection, |c| c.as_mut().graceful_shutdown()).await {
        debug!(%error, "a connection ended with an error");
    }
}

/// How long a connection still runs once the grace period has ended, to send the statuses of
/// the calls that the cut ended: small frames, delayed only by a peer that does not read.
pub(crate) const FLUSH_AFTER_CUT: Duration = Duration::from_secs(1);

/// Runs a connection; when the relay shuts down, lets it finish its open requests, and cuts
/// it when the grace period ends, once its calls' final statuses are sent (at most
/// [`FLUSH_AFTER_CUT`] later).
pub(crate) async fn drive<C>(
    state: &State,
    connection: C,
    graceful_shutdown: impl FnOnce(&mut Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = pin!(connection);
    tokio::select! {
        result = &mut connection => return result,
        () = state.shutdown.cancelled() => graceful_shutdown(&mut connection),
    }
    tokio::select! {
        result = &mut connection => return result,
        () = state.cut.cancelled() => {}
    }
    // The cut ends every call with an error status; the connection, already going away,
    // ends by itself once they are sent.
    tokio::time::timeout(FLUSH_AFTER_CUT, connection)
        .await
        .unwrap_or(Ok(()))
}
