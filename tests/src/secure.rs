//! A relay as `relay serve` runs it by default: TLS with a self-signed certificate, and a token
//! store in a fresh data directory. And a legitimate transfer to run while it is attacked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sesame_relay::auth::Scope;
use sesame_relay::metrics::Metrics;
use sesame_relay::tls::ReloadingCertificate;
use sesame_relay::{Relay, RelayConfig, TokenStore};
use sesame_tunnel::tonic::transport::Endpoint;
use sesame_tunnel::{
    Connection, Dialer, Fingerprint, RelayAccess, RelayChannel, RemoteName, Session, Target, Token,
    TransportSettings, Trust,
};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{echo_server, hash_to_end, random_bytes, sha256};

/// A relay with TLS and tokens, in this process.
pub struct SecureRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint; `None` when it serves plaintext.
    pub fingerprint: Option<Fingerprint>,
    /// Its tokens.
    pub store: Arc<TokenStore>,
    /// Its admin token.
    pub admin: Token,
    /// What it counts.
    pub metrics: Arc<Metrics>,
    _data_dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SecureRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token store has no `Debug`: it holds secrets.
        f.debug_struct("SecureRelay")
            .field("addr", &self.addr)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SecureRelay {
    /// Starts one with default settings.
    pub async fn start() -> Self {
        SecureRelay::start_with(RelayConfig::default()).await
    }

    /// Starts one with `config`.
    pub async fn start_with(config: RelayConfig) -> Self {
        SecureRelay::start_serving(config, true).await
    }

    /// Starts one with `config` that checks tokens but serves plaintext, so that clients can
    /// pick their source address.
    pub async fn start_plaintext(config: RelayConfig) -> Self {
        SecureRelay::start_serving(config, false).await
    }

    async fn start_serving(config: RelayConfig, tls: bool) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let opened = TokenStore::open(data_dir.path()).unwrap();
        let admin = opened.new_admin_token.unwrap().parse().unwrap();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (certificate, _) = ReloadingCertificate::self_signed(data_dir.path(), &names).unwrap();
        let fingerprint = tls.then(|| certificate.fingerprint().parse().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Relay::builder()
            .config(config)
            .tokens(opened.store.clone())
            .build();
        let metrics = relay.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = certificate.server_config_for(&[b"h2"]);
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if tls {
                relay.serve_tls(listener, config, stopped).await;
            } else {
                relay.serve(listener, stopped).await;
            }
        });
        SecureRelay {
            addr,
            fingerprint,
            store: opened.store,
            admin,
            metrics,
            _data_dir: data_dir,
            _stop: stop,
            task,
        }
    }

    /// A new token with these scopes.
    pub fn token(&self, scopes: &[&str]) -> Token {
        self.token_for(scopes, None)
    }

    /// A new token with these scopes, valid for `ttl`.
    pub fn token_for(&self, scopes: &[&str], ttl: Option<Duration>) -> Token {
        let scopes: Vec<Scope> = scopes.iter().map(|s| s.parse().unwrap()).collect();
        let (_, secret) = self.store.create(scopes, "test".into(), ttl).unwrap();
        secret.parse().unwrap()
    }

    /// The id of a token this relay made.
    pub fn id_of(token: &Token) -> String {
        token.secret()["sesame_".len().."sesame_".len() + 8].to_owned()
    }

    /// How a client reaches it, pinning its certificate, with `token`.
    pub fn access(&self, token: Option<&Token>) -> RelayAccess {
        let (scheme, trust) = match self.fingerprint {
            Some(fingerprint) => ("https", Trust::Pinned(fingerprint)),
            None => ("http", Trust::SystemRoots),
        };
        let url = format!("{scheme}://{}", self.addr).parse().unwrap();
        RelayAccess::new(url, trust, token.cloned())
    }

    /// A new plaintext connection from the loopback address `source`, presenting `token`.
    pub async fn channel_from(&self, source: &str, token: Option<Token>) -> RelayChannel {
        assert!(self.fingerprint.is_none(), "a plaintext relay");
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .local_address(Some(source.parse().unwrap()))
            .connect()
            .await
            .unwrap();
        RelayChannel::new(channel, token.as_ref())
    }

    /// A new connection presenting `token`.
    pub async fn channel(&self, token: Option<&Token>) -> RelayChannel {
        self.access(token)
            .connect(&TransportSettings::default())
            .await
            .unwrap()
    }

    /// A session for `name` with `token`.
    pub async fn session(
        &self,
        name: &str,
        token: &Token,
    ) -> Result<Session, sesame_tunnel::Error> {
        Session::builder(RemoteName::new(name).unwrap())
            .relay(self.access(Some(token)))
            .no_reconnect()
            .connect()
            .await
    }

    /// A dialer with `token`.
    pub async fn dialer(&self, token: &Token) -> Dialer {
        Dialer::new(
            self.channel(Some(token)).await,
            TransportSettings::default(),
        )
    }
}

impl Drop for SecureRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How much the legitimate transfer carries.
const LEGIT_BYTES: usize = 32 << 20;

/// A legitimate transfer through the relay, with tokens of its own: an agent `legit` echoing
/// through its port 7, and a dialer sending 32 MiB in parts, so that it is under way while a
/// test attacks the relay, and checked byte for byte at the end.
pub struct LegitTransfer {
    _session: Session,
    writer: WriteHalf<Connection>,
    echoed: JoinHandle<std::io::Result<(u64, [u8; 32])>>,
    data: Vec<u8>,
    sent: usize,
}

impl std::fmt::Debug for LegitTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Progress rather than 32 MiB of data.
        f.debug_struct("LegitTransfer")
            .field("sent", &self.sent)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl LegitTransfer {
    /// Registers the agent, opens the connection, and sends the first part.
    pub async fn start(relay: &SecureRelay) -> Self {
        let agent = relay.token(&["expose:legit"]);
        let client = relay.token(&["connect:legit"]);
        let session = relay.session("legit", &agent).await.unwrap();
        let echo = echo_server().await;
        std::mem::forget(
            session
                .forward(7, Target::new("127.0.0.1", echo.port()))
                .await
                .unwrap(),
        );
        let conn = relay
            .dialer(&client)
            .await
            .dial(&RemoteName::new("legit").unwrap(), 7)
            .await
            .unwrap();
        let (reader, writer) = tokio::io::split(conn);
        let mut transfer = LegitTransfer {
            _session: session,
            writer,
            echoed: tokio::spawn(hash_to_end(reader)),
            data: random_bytes(LEGIT_BYTES),
            sent: 0,
        };
        transfer.send(LEGIT_BYTES / 4).await;
        transfer
    }

    async fn send(&mut self, len: usize) {
        let end = (self.sent + len).min(self.data.len());
        self.writer
            .write_all(&self.data[self.sent..end])
            .await
            .expect("the legitimate transfer was cut");
        self.sent = end;
    }

    /// Sends another part.
    pub async fn more(&mut self) {
        self.send(LEGIT_BYTES / 8).await;
    }

    /// Sends the rest, and checks that every byte came back in order.
    pub async fn finish(mut self) {
        self.send(LEGIT_BYTES).await;
        self.writer.shutdown().await.unwrap();
        let echoed = self.echoed.await.unwrap().unwrap();
        assert_eq!(
            echoed,
            (LEGIT_BYTES as u64, sha256(&self.data)),
            "the legitimate transfer came back whole"
        );
    }
}
