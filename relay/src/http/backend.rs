//! Connections from the relay to the HTTP services on remotes, one small pool per client
//! connection.
//!
//! Each client connection keeps its own backend connections, so that one client's requests
//! never wait behind another's and a client that goes away takes its backend connections
//! with it. An HTTP/1.1 backend connection carries one request at a time and is reused for
//! the client's next request; an HTTP/2 (h2c) backend connection carries all of a client
//! connection's requests at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sesame_proto::v1::HttpProtocol;
use sesame_tunnel::RemoteName;
use tonic::Status;
use tracing::debug;

use super::Front;
use super::timeouts::TimedBody;
use crate::admission::Admitted;
use crate::lock;
use crate::sessions::{Entrance, dial_local};

/// The most idle HTTP/1.1 connections a client connection keeps to one remote.
const MAX_IDLE_PER_REMOTE: usize = 8;

/// Why a request did not reach the service, or got no answer.
pub(crate) enum BackendError {
    /// The dial failed: the remote is offline, or its service refused the connection.
    Dial(Status),
    /// The service's connection failed.
    Http(hyper::Error),
}

/// Which service a backend connection reaches.
type Key = (RemoteName, u16);

/// A client connection's backend connections.
pub(crate) struct Backends {
    front: Arc<Front>,
    /// Who dials: for the agent's logs, and the address whose public connections count the
    /// backend connections made for it.
    client: SocketAddr,
    h1: Mutex<HashMap<Key, Vec<http1::SendRequest<TimedBody>>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<TimedBody>>>,
}

impl Backends {
    pub(crate) fn new(front: Arc<Front>, client: SocketAddr) -> Self {
        Backends {
            front,
            client,
            h1: Mutex::default(),
            h2: Mutex::default(),
        }
    }

    /// Sends `request` to `port` of `name`, which speaks `protocol`, and returns the
    /// response head. `reusable` is false for a protocol switch: its connection then
    /// belongs to the upgrade.
    pub(crate) async fn send(
        &self,
        name: &RemoteName,
        port: u16,
        protocol: HttpProtocol,
        request: Request<TimedBody>,
        reusable: bool,
    ) -> Result<Response<Incoming>, BackendError> {
        let key = (name.clone(), port);
        match protocol {
            HttpProtocol::H2c => self.send_h2(key, request).await,
            _ => self.send_h1(key, request, reusable).await,
        }
    }

    async fn send_h1(
        &self,
        key: Key,
        request: Request<TimedBody>,
        reusable: bool,
    ) -> Result<Response<Incoming>, BackendError> {
        let mut request = request;
        // A pooled connection may have closed meanwhile (the remote reconnected, the service
        // timed it out); if the request was not sent on it, it goes on a new one.
        if let Some(mut sender) = self.idle_h1(&key) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep_h1(key, sender, reusable);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(BackendError::Http(failed.into_error())),
                },
            }
        }
        let io = self.dial(&key).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(BackendError::Http)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "a backend connection failed");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(BackendError::Http)?;
        self.keep_h1(key, sender, reusable);
        Ok(response)
    }

    /// A pooled HTTP/1.1 connection that is ready for a request, taken out of the pool.
    fn idle_h1(&self, key: &Key) -> Option<http1::SendRequest<TimedBody>> {
        let mut pool = lock(&self.h1);
        let senders = pool.get_mut(key)?;
        senders.retain(|sender| !sender.is_closed());
        let ready = senders.iter().position(http1::SendRequest::is_ready)?;
        Some(senders.swap_remove(ready))
    }

    /// Returns a connection to the pool once its request is sent: it is ready again when the
    /// response has been read.
    fn keep_h1(&self, key: Key, sender: http1::SendRequest<TimedBody>, reusable: bool) {
        if !reusable {
            return;
        }
        let mut pool = lock(&self.h1);
        let senders = pool.entry(key).or_default();
        senders.retain(|sender| !sender.is_closed());
        if senders.len() < MAX_IDLE_PER_REMOTE {
            senders.push(sender);
        }
    }

    async fn send_h2(
        &self,
        key: Key,
        request: Request<TimedBody>,
    ) -> Result<Response<Incoming>, BackendError> {
        let cached = lock(&self.h2)
            .get(&key)
            .filter(|sender| !sender.is_closed())
            .cloned();
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let io = self.dial(&key).await?;
                let mut builder = http2::Builder::new(TokioExecutor::new());
                let transport = &self.front.transport;
                builder
                    .initial_stream_window_size(transport.stream_window)
                    .initial_connection_window_size(transport.connection_window)
                    .max_frame_size(transport.max_frame_size);
                let (sender, connection) =
                    builder.handshake(io).await.map_err(BackendError::Http)?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%error, "a backend connection failed");
                    }
                });
                lock(&self.h2).insert(key, sender.clone());
                sender
            }
        };
        sender.ready().await.map_err(BackendError::Http)?;
        sender
            .send_request(request)
            .await
            .map_err(BackendError::Http)
    }

    /// A new connection to `port` of `name`, counted among the client address's public
    /// connections for as long as it lives: a client connection that sends many requests at
    /// once must not take more of a remote than its address may.
    async fn dial(
        &self,
        (name, port): &Key,
    ) -> Result<TokioIo<Admitted<sesame_tunnel::Connection>>, BackendError> {
        let slot = self
            .front
            .public_connections
            .take(self.client.ip())
            .ok_or_else(|| {
                BackendError::Dial(Status::resource_exhausted(
                    "this client address has as many connections through the relay as it may",
                ))
            })?;
        let (sessions, transport) = (&*self.front.sessions, &self.front.transport);
        let peer = self.client.to_string();
        let conn = dial_local(sessions, transport, (name, *port), peer, Entrance::Http)
            .await
            .map_err(BackendError::Dial)?;
        Ok(TokioIo::new(Admitted::new(conn, Some(slot))))
    }
}
