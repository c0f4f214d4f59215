//! A harness for end-to-end tests: a relay on an ephemeral loopback port (or on in-memory
//! pipes), TCP servers to forward to, random data and hashes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use sesame_relay::{Relay, RelayConfig};
use sesame_tunnel::tonic::transport::Endpoint;
use sesame_tunnel::{
    Dialer, RelayAccess, RelayChannel, RelayUrl, RemoteName, Session, TransportSettings,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub mod banner;
pub mod grpc_echo;
pub mod http_backend;
pub mod process;
pub mod public;
pub mod python;
pub mod secure;

pub use banner::RelayBanner;
pub use grpc_echo::GrpcEcho;
pub use http_backend::{HttpBackend, expected_download};
pub use python::{Sample, WsEchoServer, python, require_python_modules, sample, scrape};
pub use secure::{LegitTransfer, SecureRelay};

/// The README's Rust example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;

/// Every test runs under this limit, so that a hang fails instead of blocking the suite.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `future` under [`TEST_TIMEOUT`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("the test did not finish in time")
}

/// A relay running in this process.
#[derive(Debug)]
pub struct TestRelay {
    url: RelayUrl,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// For relays on in-memory pipes: where new client pipes go.
    pipes: Option<(mpsc::UnboundedSender<io::Result<DuplexStream>>, usize)>,
}

impl TestRelay {
    /// Starts a relay with default settings on `127.0.0.1:0`.
    pub async fn start() -> Self {
        TestRelay::start_with(RelayConfig::default()).await
    }

    /// Starts a relay with `config` on `127.0.0.1:0`.
    pub async fn start_with(config: RelayConfig) -> Self {
        TestRelay::start_at("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// Starts a relay with `config` on `addr`: the address of a relay that has stopped, to
    /// stand in for it after a restart.
    pub async fn start_at(addr: SocketAddr, config: RelayConfig) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let relay = Relay::builder().config(config).build();
        let (stop, task) = serve_in_background(relay, listener);
        TestRelay {
            url,
            stop: Some(stop),
            task,
            pipes: None,
        }
    }

    /// Starts a relay whose clients reach it through in-memory pipes that each buffer only
    /// `buffer` bytes, so every frame crosses many partial reads and writes.
    pub fn start_on_pipes(config: RelayConfig, buffer: usize) -> Self {
        let (sender, incoming) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = Relay::builder().config(config).build();
        let task = tokio::spawn(async move {
            relay
                .serve_with_incoming(UnboundedReceiverStream::new(incoming), async {
                    let _ = stopped.await;
                })
                .await;
        });
        TestRelay {
            url: "http://relay.invalid:1".parse().unwrap(),
            stop: Some(stop),
            task,
            pipes: Some((sender, buffer)),
        }
    }

    /// The relay's address.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// A new HTTP/2 connection to the relay.
    pub async fn channel(&self) -> RelayChannel {
        let settings = TransportSettings::default();
        match &self.pipes {
            None => RelayAccess::from(self.url.clone())
                .connect(&settings)
                .await
                .unwrap(),
            Some((sender, buffer)) => {
                let (sender, buffer) = (sender.clone(), *buffer);
                let connector = tower::service_fn(move |_| {
                    let (client, server) = tokio::io::duplex(buffer);
                    let sent = sender
                        .send(Ok(server))
                        .map_err(|_| io::Error::other("relay gone"));
                    async move {
                        sent?;
                        Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(client))
                    }
                });
                let channel = Endpoint::from(self.url.uri())
                    .connect_with_connector(connector)
                    .await
                    .unwrap();
                RelayChannel::new(channel, None)
            }
        }
    }

    /// A dialer on its own HTTP/2 connection.
    pub async fn dialer(&self) -> Dialer {
        Dialer::new(self.channel().await, TransportSettings::default())
    }

    /// An agent session for `name`, on its own HTTP/2 connection.
    pub async fn session(&self, name: &str) -> Session {
        self.try_session(name).await.unwrap()
    }

    /// Like [`session`](Self::session), returning the error.
    pub async fn try_session(&self, name: &str) -> Result<Session, sesame_tunnel::Error> {
        Session::builder(RemoteName::new(name).unwrap())
            .channel(self.channel().await)
            .connect()
            .await
    }

    /// The relay's socket address (of a relay on TCP).
    pub fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.url.host(), self.url.port())
            .parse()
            .expect("a TCP relay's address")
    }

    /// Tells the relay to shut down: it drains its agents and lets open connections run for
    /// its grace period.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Tells the relay to shut down and waits until it has.
    pub async fn stop(mut self) {
        self.begin_stop();
        (&mut self.task).await.unwrap();
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `relay` on `listener` in a task until the sender is used or dropped.
pub fn serve_in_background(
    relay: Relay,
    listener: TcpListener,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

/// The name as a remote name.
pub fn name(name: &str) -> RemoteName {
    RemoteName::new(name).unwrap()
}

/// `len` bytes from a generator seeded by the operating system.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut state = u64::from_le_bytes(seed) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*: plenty random for payloads, fast enough for hundreds of MiB.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lower-case hex of `bytes`, as `sha256sum` and the fixtures' JSON reports write hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `reader` to its end, returning the byte count and the SHA-256 of what was read.
pub async fn hash_to_end(mut reader: impl AsyncRead + Unpin) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Writes all of `data` in pieces of uneven sizes, then shuts down the write side.
pub async fn write_then_shutdown(
    mut writer: impl AsyncWrite + Unpin,
    data: &[u8],
) -> io::Result<()> {
    let mut rest = data;
    let mut step = 1;
    while !rest.is_empty() {
        let n = rest.len().min(step);
        writer.write_all(&rest[..n]).await?;
        rest = &rest[n..];
        step = (step * 7 + 13) % (256 << 10) + 1;
    }
    writer.shutdown().await
}

/// A TCP server on `127.0.0.1:0` that echoes each connection until the client's EOF, then
/// closes its side. Returns its address.
pub async fn echo_server() -> SocketAddr {
    serve_tcp(|mut stream| async move {
        let (mut reader, mut writer) = stream.split();
        tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await
    })
    .await
}

/// A TCP server on `127.0.0.1:0` that runs `handler` for each connection.
pub async fn serve_tcp<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = handler(stream).await;
            });
        }
    });
    addr
}

/// A port on loopback that nothing listens on: bound, then released.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves every connection of `session`'s listener on `port` by echoing it.
pub async fn echo_listener(session: &Session, port: u16) {
    let mut listener = session.listen(port).await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(mut conn)) = listener.next().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(&mut conn);
                tokio::io::copy(&mut reader, &mut writer).await?;
                writer.shutdown().await
            });
        }
    });
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream` whose connections can be frozen:
/// their sockets stay open but no byte moves any more, as when a link dies silently (a
/// sleeping laptop, a NAT that forgot the mapping). Connections made after a freeze flow.
#[derive(Debug)]
pub struct FreezingProxy {
    addr: SocketAddr,
    freeze: std::sync::Arc<std::sync::Mutex<watch::Sender<bool>>>,
    task: JoinHandle<()>,
}

impl FreezingProxy {
    /// Starts the proxy.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freeze = std::sync::Arc::new(std::sync::Mutex::new(watch::channel(false).0));
        let generation = freeze.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut frozen = generation.lock().unwrap().subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let frozen = async move {
                        let _ = frozen.wait_for(|frozen| *frozen).await;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = frozen => {
                            // Hold both sockets open, silent, until the test ends.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        FreezingProxy { addr, freeze, task }
    }

    /// The proxy's address, as a relay URL.
    pub fn url(&self) -> RelayUrl {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Freezes every connection open now; later ones are not affected.
    pub fn freeze(&self) {
        let mut current = self.freeze.lock().unwrap();
        current.send_replace(true);
        *current = watch::channel(false).0;
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
