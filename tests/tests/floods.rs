//! Floods by anonymous clients, each against a relay started here and each beside a
//! legitimate client whose transfer must come back byte for byte: silent TLS handshakes on the
//! gRPC and HTTPS listeners, idle connections from one address, a remote's public connection
//! slots taken by the public, idle public connections and stalled request bodies.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sesame_relay::RelayConfig;
use sesame_tests::process::curl;
use sesame_tests::public::{DOMAIN, PublicRelay, echoes_exactly, public_port};
use sesame_tests::{
    HttpBackend, LegitTransfer, SecureRelay, echo_server, name, random_bytes, sha256, within,
};
use sesame_tunnel::{
    Dialer, HttpProtocol, HttpPublish, Publish, Session, Target, TcpPublish, TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: usize = 1 << 20;

/// More silent connections than the relay lets handshake at once.
const FLOOD: usize = 1100;

/// A handshake timeout longer than any test runs: a connection closed during the test was
/// shed, not timed out.
const PATIENT: Duration = Duration::from_secs(3600);

/// Remote `pi` on a relay, publishing one service: kept as long as this is.
struct Published {
    session: Session,
    _forward: sesame_tunnel::Forward,
    _service: Option<HttpBackend>,
}

impl Published {
    /// An HTTP service (the test backend) as `pi`'s virtual host.
    async fn http(relay: &PublicRelay) -> Self {
        let backend = HttpBackend::start().await;
        let target = Target::new("127.0.0.1", backend.addr().port());
        let publish = Publish::none().http(HttpPublish::new(HttpProtocol::Http1));
        Published::start(relay, 80, target, publish, Some(backend)).await
    }

    /// An echo server as `pi`'s port 7, on a public TCP port.
    async fn tcp_echo(relay: &PublicRelay) -> Self {
        let echo = echo_server().await;
        let target = Target::new("127.0.0.1", echo.port());
        let publish = Publish::none().tcp(TcpPublish::any_port());
        Published::start(relay, 7, target, publish, None).await
    }

    async fn start(
        relay: &PublicRelay,
        port: u16,
        target: Target,
        publish: Publish,
        service: Option<HttpBackend>,
    ) -> Self {
        let session = Session::builder(name("pi"))
            .relay(relay.url.clone())
            .connect()
            .await
            .unwrap();
        let forward = session.forward_with(port, target, publish).await.unwrap();
        Published {
            session,
            _forward: forward,
            _service: service,
        }
    }

    /// The relay's TCP address for `pi`'s port 7.
    fn public_address(&self) -> SocketAddr {
        ([127, 0, 0, 1], public_port(&self.session, 7)).into()
    }
}

/// Opens `count` connections to `addr` and sends nothing on them.
async fn silent_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut flood = Vec::with_capacity(count);
    for _ in 0..count {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    flood
}

/// Whether the relay has closed `stream` (or reset it): reads until it ends.
async fn closed_by_relay(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.is_err() || rest.is_empty()
}

/// A connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether `stream` carries a byte to the echo behind it and back: a connection the relay
/// carries does, one it refused is reset.
async fn carried(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"x").await.is_err() {
        return false;
    }
    let mut byte = [0];
    matches!(stream.read(&mut byte).await, Ok(1)) && byte == *b"x"
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_locks_no_agent_out() {
    within(async {
        // Handshakes that never time out within the test: only shedding closes one.
        let mut config = RelayConfig::default();
        config.handshake_timeout = PATIENT;
        let relay = SecureRelay::start_with(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let mut flood = silent_connections(relay.addr, FLOOD).await;
        // A new agent, from the flood's own address, still gets in: its handshake sheds the
        // flood's oldest.
        let token = relay.token(&["expose:late"]);
        let late = relay.session("late", &token).await.unwrap();
        assert!(late.id().is_some());
        legit.more().await;
        assert!(
            closed_by_relay(&mut flood[0]).await,
            "the oldest silent handshake was shed"
        );
        drop(flood);
        legit.finish().await;
    })
    .await;
}

#[tokio::test]
async fn an_address_keeps_a_limited_number_of_connections_to_the_relay() {
    within(async {
        let mut config = RelayConfig::default();
        config.max_connections_per_address = 50;
        let relay = SecureRelay::start_plaintext(config).await;
        let legit = LegitTransfer::start(&relay).await;
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(connect_from("127.0.0.5", relay.addr).await);
        }
        let mut refused = connect_from("127.0.0.5", relay.addr).await;
        assert!(closed_by_relay(&mut refused).await, "the 51st is closed");
        // Other addresses are not held back.
        let token = relay.token(&["expose:elsewhere"]);
        let channel = relay.channel_from("127.0.0.6", Some(token)).await;
        let session = Session::builder(name("elsewhere"))
            .channel(channel)
            .no_reconnect()
            .connect()
            .await
            .unwrap();
        assert!(session.id().is_some());
        legit.finish().await;
        drop(idle);
    })
    .await;
}

#[tokio::test]
async fn an_https_handshake_flood_locks_no_client_out() {
    within(async {
        let mut config = RelayConfig::default();
        config.http.head_timeout = PATIENT;
        let relay = PublicRelay::start(config, 1).await;
        let _pi = Published::http(&relay).await;

        let mut flood = silent_connections(relay.https, FLOOD).await;
        let resolve = relay.resolve("pi");
        let ca = relay.ca.display().to_string();
        let url = format!("{}/download?bytes=1048576&seed=7", relay.https_url("pi"));
        let mut args: Vec<&str> = resolve.iter().map(String::as_str).collect();
        args.extend(["--cacert", &ca, &url]);
        let (body, head) = curl(&args).await;
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert_eq!(
            sha256(&body),
            sesame_tests::expected_download(1 << 20, 7),
            "the download came whole"
        );
        assert!(closed_by_relay(&mut flood[0]).await, "the oldest was shed");
    })
    .await;
}

#[tokio::test]
async fn anonymous_clients_crowd_out_neither_token_holders_nor_other_addresses() {
    within(async {
        let mut config = RelayConfig::default();
        config.public.connections_per_address = 8;
        config.public.connections_per_remote = 12;
        let relay = PublicRelay::start(config, 1).await;
        let pi = Published::tcp_echo(&relay).await;
        let public = pi.public_address();

        // One address gets its eight connections, and no more.
        let mut first = Vec::new();
        for _ in 0..30 {
            let mut stream = connect_from("127.0.0.1", public).await;
            if carried(&mut stream).await {
                first.push(stream);
            }
        }
        assert_eq!(first.len(), 8);
        // Another gets what is left of the remote's public budget.
        let mut second = Vec::new();
        for _ in 0..30 {
            let mut stream = connect_from("127.0.0.3", public).await;
            if carried(&mut stream).await {
                second.push(stream);
            }
        }
        assert_eq!(second.len(), 4, "twelve public connections per remote");

        // A token holder is not held back by the public's crowd.
        let access = sesame_tunnel::RelayAccess::from(relay.url.clone());
        let settings = TransportSettings::default();
        let dialer = Dialer::new(access.connect(&settings).await.unwrap(), settings);
        let conn = dialer.dial(&name("pi"), 7).await.unwrap();
        let data = random_bytes(4 * MIB);
        let (reader, writer) = tokio::io::split(conn);
        let expected = (data.len() as u64, sha256(&data));
        let sending =
            tokio::spawn(async move { sesame_tests::write_then_shutdown(writer, &data).await });
        assert_eq!(sesame_tests::hash_to_end(reader).await.unwrap(), expected);
        sending.await.unwrap().unwrap();

        // Once the second crowd leaves, a client of its address gets through again, byte for
        // byte: its refused attempts kept none of the address's slots.
        drop(second);
        let mut third = None;
        for _ in 0..2_000 {
            let mut stream = connect_from("127.0.0.3", public).await;
            if carried(&mut stream).await {
                third = Some(stream);
                break;
            }
        }
        let third = third.expect("the address never got a connection again");
        let data = random_bytes(MIB);
        let expected = (data.len() as u64, sha256(&data));
        let (reader, writer) = third.into_split();
        let sending =
            tokio::spawn(async move { sesame_tests::write_then_shutdown(writer, &data).await });
        assert_eq!(sesame_tests::hash_to_end(reader).await.unwrap(), expected);
        sending.await.unwrap().unwrap();
        drop(first);
    })
    .await;
}

/// Reads the rest of an answer's head.
async fn skip_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
        assert!(head.len() < 64 << 10, "no end of head");
    }
}

#[tokio::test]
async fn many_requests_and_upgrades_take_no_more_than_the_address_may() {
    within(async {
        let mut config = RelayConfig::default();
        config.public.connections_per_address = 8;
        // A connection let in stays open for the test: one closed at once was refused.
        config.http.head_timeout = PATIENT;
        let relay = PublicRelay::start(config, 1).await;
        let _pi = Published::http(&relay).await;

        // Twenty downloads at once on one HTTP/2 connection: each needs a connection to the
        // service, and the address has eight slots, one of them the client's own.
        let io = TokioIo::new(TcpStream::connect(relay.http).await.unwrap());
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let mut statuses = Vec::new();
        let mut responses = Vec::new();
        let requests = (0..20).map(|seed| {
            let mut sender = sender.clone();
            let url = format!("http://pi.{DOMAIN}/download?bytes=1073741824&seed={seed}");
            let request = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
            async move { sender.send_request(request).await.unwrap() }
        });
        // The bodies are not read: each download holds its connection to the service.
        for response in futures_util::future::join_all(requests).await {
            statuses.push(response.status().as_u16());
            responses.push(response);
        }
        statuses.sort_unstable();
        let served = statuses.iter().filter(|&&s| s == 200).count();
        let refused = statuses.iter().filter(|&&s| s == 503).count();
        assert_eq!((served, refused), (7, 13), "{statuses:?}");
        drop(responses);

        // A protocol switch holds its client's slot after hyper lets go of the connection.
        // (Until the relay has seen the HTTP/2 connection go, its slots are still taken.)
        drop(sender);
        connection.abort();
        let upgrade = format!(
            "GET /upgrade-echo HTTP/1.1\r\nHost: pi.{DOMAIN}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        );
        let mut switched = Vec::new();
        for _ in 0..2_000 {
            if switched.len() == 4 {
                break;
            }
            let Ok(mut stream) = TcpStream::connect(relay.http).await else {
                continue;
            };
            if stream.write_all(upgrade.as_bytes()).await.is_err() {
                continue;
            }
            let mut head = [0; 12];
            if stream.read_exact(&mut head).await.is_ok() && head == *b"HTTP/1.1 101" {
                skip_head(&mut stream).await;
                assert!(carried(&mut stream).await);
                switched.push(stream);
            }
        }
        assert_eq!(switched.len(), 4, "four switches, two slots each");
        let mut refused = TcpStream::connect(relay.http).await.unwrap();
        assert!(closed_by_relay(&mut refused).await, "a ninth slot was given");

        // Another address is served meanwhile, byte for byte.
        let resolve = relay.resolve("pi");
        let url = format!("{}/download?bytes=1048576&seed=7", relay.http_url("pi"));
        let mut args: Vec<&str> = resolve.iter().map(String::as_str).collect();
        args.extend(["--interface", "127.0.0.2", &url]);
        let (body, head) = curl(&args).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(sha256(&body), sesame_tests::expected_download(1 << 20, 7));
    })
    .await;
}

/// A relay that closes idle public connections and stalled bodies after 300 ms.
fn impatient() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.public.tcp_idle_timeout = Duration::from_millis(300);
    config.http.idle_timeout = Duration::from_millis(300);
    config.http.body_timeout = Duration::from_millis(300);
    config
}

#[tokio::test]
async fn idle_public_tcp_connections_are_closed_and_busy_ones_are_not() {
    within(async {
        let relay = PublicRelay::start(impatient(), 1).await;
        let pi = Published::tcp_echo(&relay).await;
        let public = pi.public_address();

        let mut idle = TcpStream::connect(public).await.unwrap();
        assert!(carried(&mut idle).await);
        // A connection that carries a byte every 100 ms outlives several idle periods.
        let mut busy = TcpStream::connect(public).await.unwrap();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..12 {
            ticks.tick().await;
            assert!(carried(&mut busy).await, "a busy connection was closed");
        }
        assert!(closed_by_relay(&mut idle).await, "the idle one was closed");
        echoes_exactly(public.port(), random_bytes(MIB)).await;
    })
    .await;
}

#[tokio::test]
async fn stalled_request_bodies_and_idle_http2_connections_are_closed() {
    within(async {
        let relay = PublicRelay::start(impatient(), 1).await;
        let _pi = Published::http(&relay).await;

        // A body that promises 1,000 bytes and sends 10 is given up on.
        let mut stalled = TcpStream::connect(relay.http).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: pi.{DOMAIN}\r\nContent-Length: 1000\r\n\r\n0123456789"
        );
        stalled.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = stalled.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");

        // An HTTP/2 connection is served, then closed once it has been idle.
        let io = TokioIo::new(TcpStream::connect(relay.http).await.unwrap());
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(format!("http://pi.{DOMAIN}/headers"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        connection
            .await
            .unwrap()
            .expect("the relay closed the idle connection cleanly");

        // Meanwhile, and after, an upload passes whole.
        let data = random_bytes(MIB);
        let url = format!("{}/upload", relay.http_url("pi"));
        let resolve = relay.resolve("pi");
        let path = sesame_tests::process::scratch_dir();
        let file = path.path().join("upload");
        std::fs::write(&file, &data).unwrap();
        let upload = format!("@{}", file.display());
        let mut args: Vec<&str> = resolve.iter().map(String::as_str).collect();
        args.extend(["--data-binary", &upload, &url]);
        let (body, head) = curl(&args).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(&sesame_tests::hex(&sha256(&data))), "{body}");
    })
    .await;
}
