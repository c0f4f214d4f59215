//! [`Relay`]: the four services on one listener, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures_util::Stream;
use sesame_proto::v1::dialer_service_server::DialerServiceServer;
use sesame_proto::v1::remote_service_server::RemoteServiceServer;
use sesame_proto::v1::token_service_server::TokenServiceServer;
use sesame_proto::v1::tunnel_service_server::TunnelServiceServer;
use sesame_tunnel::settings::MAX_MESSAGE_BYTES;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tracing::{info, warn};

use crate::admission::PerAddress;
use crate::auth::{AllowAll, Authorize, Gate};
use crate::config::{RelayConfig, TcpPortRange};
use crate::data_calls::WithDataCall;
use crate::dialer::Dialer;
use crate::endpoints::tcp::{Carrier, PortLimits, TcpPorts};
use crate::endpoints::{Endpoints, HttpSite};
use crate::handshake::handshake;
use crate::http::{Front, PublicListener};
use crate::metrics::Metrics;
use crate::registry::{MemoryRegistry, Registry};
use crate::remotes::{PageTokens, Remotes};
use crate::serving;
use crate::sessions::{LocalSessions, Sessions};
use crate::shutdown::{FLUSH_AFTER_CUT, Shutdown};
use crate::token_service::Tokens;
use crate::tokens::TokenStore;
use crate::tunnel::Tunnel;
use crate::workers::{WorkerTasks, Workers};

/// A relay: serves `TunnelService`, `DialerService`, `RemoteService` and `TokenService` on
/// one listener, and the public endpoints it is given listeners for.
pub struct Relay {
    config: Arc<RelayConfig>,
    /// The four services.
    routes: Routes,
    /// The public HTTP listeners, and what serves them.
    public: Vec<PublicListener>,
    front: Arc<Front>,
    shutdown: Shutdown,
    workers: Arc<Workers>,
    /// The token store, saved once the relay has stopped.
    tokens: Option<Arc<TokenStore>>,
    metrics: Arc<Metrics>,
    /// Where `/metrics` is served, if anywhere.
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("public_listeners", &self.public.len())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Relay`].
#[must_use]
pub struct RelayBuilder {
    config: RelayConfig,
    registry: Arc<dyn Registry>,
    auth: Arc<dyn Authorize>,
    tokens: Option<Arc<TokenStore>>,
    domain: Option<String>,
    public: Vec<PublicListener>,
    tcp_ports: Option<TcpPortRange>,
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("config", &self.config)
            .field("domain", &self.domain)
            .field("public_listeners", &self.public.len())
            .field("tcp_ports", &self.tcp_ports)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// The relay's settings.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Where remotes are registered; a [`MemoryRegistry`] unless set.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = registry;
        self
    }

    /// Who may do what; [`AllowAll`] unless set (or [`tokens`](Self::tokens) is).
    pub fn authorizer(mut self, auth: Arc<dyn Authorize>) -> Self {
        self.auth = auth;
        self.tokens = None;
        self
    }

    /// Checks every call's bearer token against `store`, and serves `TokenService` to manage
    /// it.
    pub fn tokens(mut self, store: Arc<TokenStore>) -> Self {
        self.auth = store.clone();
        self.tokens = Some(store);
        self
    }

    /// Serves HTTP virtual hosts: remote NAME's published HTTP port is `NAME.{domain}` on
    /// every listener given with [`http_listener`](Self::http_listener) and
    /// [`https_listener`](Self::https_listener).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        let domain = domain.into().trim_end_matches('.').to_ascii_lowercase();
        self.domain = Some(domain);
        self
    }

    /// A public listener for plaintext HTTP: HTTP/1.1, and HTTP/2 with prior knowledge.
    pub fn http_listener(mut self, listener: TcpListener) -> Self {
        self.public.push(PublicListener {
            listener,
            tls: None,
        });
        self
    }

    /// A public listener for HTTPS with `tls` (whose ALPN should offer `h2` and `http/1.1`).
    pub fn https_listener(mut self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        self.public.push(PublicListener {
            listener,
            tls: Some(TlsAcceptor::from(tls)),
        });
        self
    }

    /// Publishes remotes' ports on TCP ports of this range, when they ask.
    pub fn tcp_ports(mut self, range: TcpPortRange) -> Self {
        self.tcp_ports = Some(range);
        self
    }

    /// Serves the relay's [`Metrics`] on `listener` (plain HTTP, `GET /metrics`), for
    /// Prometheus to scrape.
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// The relay.
    pub fn build(self) -> Relay {
        let site = self.domain.map(|domain| HttpSite {
            domain,
            listeners: self
                .public
                .iter()
                .filter_map(|public| {
                    let port = public.listener.local_addr().ok()?.port();
                    Some((public.scheme(), port))
                })
                .collect(),
        });
        let config = Arc::new(self.config);
        let shutdown = Shutdown::default();
        let limits = config.as_ref().into();
        let metrics = Arc::new(Metrics::new());
        let sessions: Arc<dyn Sessions> = Arc::new(LocalSessions::new(
            self.registry.clone(),
            limits,
            metrics.clone(),
        ));
        let public_connections = PerAddress::new(config.public.connections_per_address);
        let carrier = Carrier {
            sessions: sessions.clone(),
            transport: config.transport.clone(),
            shutdown: shutdown.clone(),
            public_connections: public_connections.clone(),
            idle_timeout: config.public.tcp_idle_timeout,
        };
        let port_limits = PortLimits {
            hold: config.tcp_port_hold,
            per_token: config.max_tcp_ports_per_token,
        };
        let tcp_ports = self
            .tcp_ports
            .map(|range| TcpPorts::new(range, carrier.clone(), self.auth.clone(), port_limits));
        let endpoints = Arc::new(Endpoints::new(site, tcp_ports));
        let gate = Arc::new(Gate::new(self.auth, config.failed_auth, metrics.clone()));
        let tunnel = Tunnel {
            config: config.clone(),
            gate: gate.clone(),
            registry: self.registry.clone(),
            sessions: sessions.clone(),
            endpoints: endpoints.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        };
        let dialer = Dialer {
            gate: gate.clone(),
            sessions: sessions.clone(),
            handshake_timeout: config.handshake_timeout,
        };
        let remotes = Remotes {
            gate: gate.clone(),
            registry: self.registry,
            pages: PageTokens::new(),
        };
        let tokens = Tokens {
            gate,
            store: self.tokens.clone(),
            sessions: sessions.clone(),
        };
        let front = Arc::new(Front {
            config: config.http.clone(),
            transport: config.transport.clone(),
            endpoints,
            sessions,
            shutdown: shutdown.clone(),
            public_connections,
            handshakes_per_address: config.max_handshakes_per_address,
            upgrade_idle_timeout: config.public.tcp_idle_timeout,
            metrics: metrics.clone(),
        });
        let workers = Workers::start(config.worker_threads).unwrap_or_else(|error| {
            warn!(%error, "no worker threads: serving every connection on the relay's runtime");
            Workers::none()
        });
        Relay {
            routes: routes(tunnel, dialer, remotes, tokens),
            config,
            public: self.public,
            front,
            shutdown,
            workers: Arc::new(workers),
            tokens: self.tokens,
            metrics,
            metrics_listener: self.metrics_listener,
        }
    }
}

/// The relay's four services, the two calls that carry connections answered with the
/// relay's own framing.
fn routes(tunnel: Tunnel, dialer: Dialer, remotes: Remotes, tokens: Tokens) -> Routes {
    let tunnel_service =
        TunnelServiceServer::new(tunnel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let dialer = Arc::new(dialer);
    let dialer_service =
        DialerServiceServer::from_arc(dialer.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    Routes::new(WithDataCall::new(tunnel_service, Arc::new(tunnel)))
        .add_service(WithDataCall::new(dialer_service, dialer))
        .add_service(RemoteServiceServer::new(remotes).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(TokenServiceServer::new(tokens).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .prepare()
}

impl Relay {
    /// Starts configuring a relay.
    pub fn builder() -> RelayBuilder {
        RelayBuilder {
            config: RelayConfig::default(),
            registry: Arc::new(MemoryRegistry::default()),
            auth: Arc::new(AllowAll),
            tokens: None,
            domain: None,
            public: Vec::new(),
            tcp_ports: None,
            metrics_listener: None,
        }
    }

    /// What the relay counts: the same figures its metrics listener serves.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then shuts down gracefully as
    /// [`serve_with_incoming`](Self::serve_with_incoming) describes. Each connection is served
    /// on one of the [worker threads](RelayConfig::worker_threads), if there are any.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let accept = |serving: Serving| serving.listen(listener, |tcp| async { Some(tcp) });
        self.run(accept, shutdown).await
    }

    /// Serves gRPC over TLS with `tls` (whose ALPN should offer `h2`) on `listener` until
    /// `shutdown` completes. Handshakes must finish within the handshake timeout.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) {
        let acceptor = TlsAcceptor::from(tls);
        let timeout = self.config.handshake_timeout;
        let metrics = self.metrics.clone();
        let prepare = move |tcp| {
            let (acceptor, metrics) = (acceptor.clone(), metrics.clone());
            async move { handshake(&acceptor, tcp, timeout, &metrics).await }
        };
        let accept = |serving: Serving| serving.listen(listener, prepare);
        self.run(accept, shutdown).await
    }

    /// Serves the connections `incoming` yields (TCP, or in-memory streams in tests) until
    /// `shutdown` completes or `incoming` ends, on the runtime that runs this future (not on
    /// worker threads: only the public HTTP listeners use those).
    ///
    /// Shutting down: the relay stops accepting connections and new calls, tells each agent
    /// to drain and ends its session (so the remotes disappear), lets open connections run
    /// for the configured grace period, then returns, cutting what is still open.
    pub async fn serve_with_incoming<I, IO, IE>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()>,
    ) where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let accept = |serving: Serving| async move {
            let Serving {
                config,
                shutdown,
                routes,
                ..
            } = serving;
            serving::serve(&config, shutdown, routes, incoming).await;
        };
        self.run(accept, shutdown).await
    }

    /// What counts the async tasks alive on this relay's worker threads.
    pub fn worker_tasks(&self) -> WorkerTasks {
        self.workers.tasks()
    }

    /// Serves the gRPC connections with `accept` and the public HTTP listeners until
    /// `shutdown` completes, then shuts down gracefully; stops the workers at the end.
    async fn run<A, F>(self, accept: A, shutdown: impl Future<Output = ()>)
    where
        A: FnOnce(Serving) -> F,
        F: Future<Output = ()>,
    {
        let Relay {
            config,
            routes,
            public,
            front,
            shutdown: stages,
            workers,
            tokens,
            metrics,
            metrics_listener,
        } = self;
        for public in public {
            tokio::spawn(crate::http::serve(front.clone(), public, workers.clone()));
        }
        if let Some(listener) = metrics_listener {
            let metrics = metrics.clone();
            let render = move || metrics.encode();
            tokio::spawn(crate::metrics::serve_metrics(
                render,
                listener,
                stages.cut.clone(),
            ));
        }
        let draining = stages.begun.clone();
        let signal = async move {
            shutdown.await;
            info!("shutting down: draining agents");
            draining.cancel();
            std::future::pending::<Infallible>().await
        };
        let serving = Serving {
            config: config.clone(),
            shutdown: stages.clone(),
            routes,
            workers: workers.clone(),
            metrics,
        };
        let server = async {
            tokio::select! {
                () = accept(serving) => {}
                never = signal => match never {},
            }
        };
        let grace = config.grace_period;
        let deadline = async {
            stages.begun.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let mut server = pin!(server);
        tokio::select! {
            () = &mut server => {}
            () = deadline => {
                // Each connection's calls run in tasks of their own: end them explicitly, then
                // give the connections a moment to send the calls' statuses and close.
                stages.cut.cancel();
                warn!("connections still open after the grace period were cut");
                let _ = tokio::time::timeout(FLUSH_AFTER_CUT, server).await;
            }
        }
        workers.stop();
        // Name claims and port holds are written a moment after they change: write the last
        // of them now, so that the next start knows them.
        if let Some(tokens) = tokens
            && let Err(error) = tokens.save()
        {
            warn!(error = %sesame_tunnel::one_line(&error), "could not save the token store");
        }
    }
}

/// What serving the gRPC listener takes.
struct Serving {
    config: Arc<RelayConfig>,
    shutdown: Shutdown,
    routes: Routes,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
}

impl Serving {
    /// Serves the connections of `listener`, each once `prepare` has made it ready.
    async fn listen<P, PF, IO>(self, listener: TcpListener, prepare: P)
    where
        P: Fn(TcpStream) -> PF + Clone + Send + 'static,
        PF: Future<Output = Option<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    {
        let Serving {
            config,
            shutdown,
            routes,
            workers,
            metrics,
        } = self;
        serving::serve_listener(
            &config, &shutdown, routes, listener, &workers, prepare, &metrics,
        )
        .await;
    }
}
