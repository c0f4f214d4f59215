//! Public endpoints with real clients: curl, Python's `websockets` and `grpcio` through the
//! relay's virtual hosts (HTTP/1.1, h2c, HTTPS with h2), raw TCP through its public ports,
//! and every kind of bad input the virtual hosts must answer clearly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sesame_relay::RelayConfig;
use sesame_relay::proxy_protocol::SIGNATURE;
use sesame_tests::process::{curl, scratch_dir};
use sesame_tests::public::{DOMAIN, PublicRelay, echoes_exactly, public_port};
use sesame_tests::python::{grpc_echo_client, ws_echo_client};
use sesame_tests::{
    GrpcEcho, HttpBackend, WsEchoServer, closed_port, echo_server, expected_download, hash_to_end,
    hex, name, random_bytes, serve_tcp, sha256, within, write_then_shutdown,
};
use sesame_tunnel::{Forward, HttpProtocol, HttpPublish, Publish, Session, Target, TcpPublish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

async fn agent(relay: &PublicRelay, remote: &str) -> Session {
    Session::builder(name(remote))
        .relay(relay.url.clone())
        .connect()
        .await
        .unwrap()
}

fn http(protocol: HttpProtocol) -> Publish {
    Publish::none().http(HttpPublish::new(protocol))
}

/// Publishes `target` (a local address) as remote `remote`'s HTTP service on port 80.
async fn publish_http(session: &Session, target: SocketAddr, publish: Publish) -> Forward {
    let target = Target::new("127.0.0.1", target.port());
    session.forward_with(80, target, publish).await.unwrap()
}

/// curl with the virtual hosts of `remote` resolved to the relay, and `args`.
async fn curl_at(relay: &PublicRelay, remote: &str, args: &[&str]) -> (Vec<u8>, String) {
    let resolve = relay.resolve(remote);
    let ca = relay.ca.display().to_string();
    let mut all: Vec<&str> = resolve.iter().map(String::as_str).collect();
    all.extend(["--cacert", &ca]);
    all.extend_from_slice(args);
    curl(&all).await
}

/// The SHA-256 of a file, read in pieces.
fn hash_file(path: &Path) -> (u64, [u8; 32]) {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return (total, hasher.finalize().into());
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn http1_streams_256_mib_each_way_and_keeps_connections_alive() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let backend = HttpBackend::start().await;
        let session = agent(&relay, "pi").await;
        let _forward = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;
        let url = relay.http_url("pi");
        let dir = scratch_dir();

        let len = 256 * MIB;
        let down = dir.path().join("down.bin");
        let download = format!("{url}/download?bytes={len}&seed=3");
        let down_arg = down.display().to_string();
        let (_, head) = curl_at(&relay, "pi", &["--http1.1", "-o", &down_arg, &download]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            hash_file(&down),
            (len as u64, expected_download(len as u64, 3))
        );
        std::fs::remove_file(&down).unwrap();

        let up = dir.path().join("up.bin");
        let data = random_bytes(len);
        std::fs::write(&up, &data).unwrap();
        let expected = hex(&sha256(&data));
        drop(data);
        let up_arg = up.display().to_string();
        let upload = format!("{url}/upload");
        let (body, head) = curl_at(
            &relay,
            "pi",
            &[
                "--http1.1",
                "-X",
                "POST",
                "-H",
                "Transfer-Encoding: chunked",
                "-T",
                &up_arg,
                &upload,
            ],
        )
        .await;
        std::fs::remove_file(&up).unwrap();
        assert!(head.contains("HTTP/1.1 200"), "{head}");
        let reply = json(&body);
        assert_eq!(reply["bytes"], len, "{reply}");
        assert_eq!(reply["sha256"], expected, "{reply}");

        // Three requests on one client connection reuse one connection to the service.
        let before = backend.connections();
        let headers = format!("{url}/headers");
        let chunked = format!("{url}/chunked");
        let (body, head) =
            curl_at(&relay, "pi", &["--http1.1", &headers, &chunked, &headers]).await;
        assert_eq!(head.matches("HTTP/1.1 200").count(), 3, "{head}");
        assert_eq!(backend.connections() - before, 1, "{head}");
        let expected_chunked = sesame_tests::http_backend::chunked_body();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(std::str::from_utf8(&expected_chunked).unwrap()),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_service_sees_the_host_and_who_the_client_is() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let backend = HttpBackend::start().await;
        let session = agent(&relay, "pi").await;
        let _plain = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;
        let host = format!("pi.{DOMAIN}:{}", relay.http.port());
        let headers = format!("{}/headers?x=1", relay.http_url("pi"));

        for flag in ["--http1.1", "--http2-prior-knowledge"] {
            let (body, head) = curl_at(
                &relay,
                "pi",
                &[flag, "-H", "X-Forwarded-For: 203.0.113.9", &headers],
            )
            .await;
            let status = if flag == "--http1.1" {
                "HTTP/1.1 200"
            } else {
                "HTTP/2 200"
            };
            assert!(head.starts_with(status), "{flag}: {head}");
            let seen = json(&body);
            // An HTTP/1.1 service gets HTTP/1.1 whatever the client spoke.
            assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
            assert_eq!(seen["path"], "/headers", "{seen}");
            assert_eq!(seen["query"], "x=1", "{seen}");
            let h = &seen["headers"];
            assert_eq!(h["host"][0], host, "{seen}");
            assert_eq!(h["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1", "{seen}");
            assert_eq!(h["x-forwarded-proto"][0], "http", "{seen}");
            assert_eq!(h["x-forwarded-host"][0], host, "{seen}");
            assert_eq!(
                h["forwarded"][0],
                format!("for=127.0.0.1;host=\"{host}\";proto=http"),
                "{seen}"
            );
        }

        // Over HTTPS, h2 through ALPN, and the proto says so.
        let https_host = format!("pi.{DOMAIN}:{}", relay.https.port());
        let secure = format!("{}/headers", relay.https_url("pi"));
        for (flag, status) in [("--http1.1", "HTTP/1.1 200"), ("--http2", "HTTP/2 200")] {
            let (body, head) = curl_at(&relay, "pi", &[flag, &secure]).await;
            assert!(head.starts_with(status), "{flag}: {head}");
            let seen = json(&body);
            assert_eq!(seen["headers"]["host"][0], https_host, "{seen}");
            assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https", "{seen}");
        }

        // With a rewrite, the service gets the Host it asked for; the original stays known.
        drop(_plain);
        let rewritten =
            Publish::none().http(HttpPublish::new(HttpProtocol::Http1).host_header("internal.lan"));
        let _rewritten = publish_http(&session, backend.addr(), rewritten).await;
        let (body, _) = curl_at(&relay, "pi", &[&headers]).await;
        let seen = json(&body);
        assert_eq!(seen["headers"]["host"][0], "internal.lan", "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-host"][0], host, "{seen}");
    })
    .await;
}

#[tokio::test]
async fn downloads_over_h2_and_https_are_byte_exact_and_concurrent() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let backend = HttpBackend::start().await;
        let session = agent(&relay, "pi").await;
        let _forward = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;
        let dir = scratch_dir();
        let len = 16 * MIB;
        // Over HTTPS, four downloads at once on one HTTP/2 connection, each on a connection
        // of its own to the HTTP/1.1 service.
        let base = relay.https_url("pi");
        let mut args: Vec<String> = vec!["--http2".into(), "-Z".into()];
        for seed in 0..4 {
            args.push("-o".to_owned());
            args.push(dir.path().join(format!("d{seed}")).display().to_string());
            args.push(format!("{base}/download?bytes={len}&seed={seed}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, head) = curl_at(&relay, "pi", &args).await;
        assert_eq!(head.matches("HTTP/2 200").count(), 4, "{head}");
        for seed in 0..4 {
            let expected = expected_download(len as u64, seed);
            assert_eq!(
                hash_file(&dir.path().join(format!("d{seed}"))),
                (len as u64, expected)
            );
        }

        // With prior knowledge, one transfer per curl: curl 7.88 fails any second transfer
        // on an h2c connection (it does so against the service directly too).
        let file = dir.path().join("h2c");
        let out = file.display().to_string();
        let url = format!("{}/download?bytes={len}&seed=9", relay.http_url("pi"));
        let (_, head) = curl_at(&relay, "pi", &["--http2-prior-knowledge", "-o", &out, &url]).await;
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert_eq!(
            hash_file(&file),
            (len as u64, expected_download(len as u64, 9))
        );
    })
    .await;
}

#[tokio::test]
async fn websockets_and_other_upgrades_pass_through() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let server = WsEchoServer::start().await;
        let session = agent(&relay, "pi").await;
        let _forward = publish_http(&session, server.addr(), http(HttpProtocol::Http1)).await;
        let connect = relay.http.to_string();
        let ws = format!("ws://pi.{DOMAIN}:{}/chat?room=1", relay.http.port());
        let args = ["--connect", &connect, "--messages", "50", "--size", "100000"];
        let report = ws_echo_client(&ws, &args).await;
        assert_eq!(report["messages"], 50, "{report}");
        assert_eq!(report["whoami"]["path"], "/chat?room=1", "{report}");
        assert_eq!(
            report["whoami"]["host"],
            format!("pi.{DOMAIN}:{}", relay.http.port()),
            "{report}"
        );

        let connect = relay.https.to_string();
        let ca = relay.ca.display().to_string();
        let wss = format!("wss://pi.{DOMAIN}:{}/secure", relay.https.port());
        let args = ["--connect", &connect, "--cafile", &ca, "--messages", "20"];
        let report = ws_echo_client(&wss, &args).await;
        assert_eq!(report["whoami"]["path"], "/secure", "{report}");

        // A protocol switch that is not a WebSocket: raw bytes both ways once switched.
        let backend = HttpBackend::start().await;
        let session = agent(&relay, "raw").await;
        let _raw = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;
        let mut client = TcpStream::connect(relay.http).await.unwrap();
        let request = format!(
            "GET /upgrade-echo HTTP/1.1\r\nHost: raw.{DOMAIN}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let data = random_bytes(4 * MIB);
        let (reader, writer) = client.into_split();
        let sending = tokio::spawn({
            let data = data.clone();
            async move { write_then_shutdown(writer, &data).await }
        });
        let (count, hash) = hash_to_end(reader).await.unwrap();
        sending.await.unwrap().unwrap();
        assert_eq!((count, hash), (data.len() as u64, sha256(&data)));
    })
    .await;
}

/// Reads a response head, up to its blank line, byte by byte.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.unwrap();
        head.push(byte);
        assert!(head.len() < 64 << 10, "no end of head");
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn grpc_through_the_virtual_host_unary_and_bidi_streaming() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let grpc = GrpcEcho::start().await;
        let session = agent(&relay, "api").await;
        let _forward = publish_http(&session, grpc.addr(), http(HttpProtocol::H2c)).await;

        let authority = format!("api.{DOMAIN}:{}", relay.http.port());
        let target = relay.http.to_string();
        let args = [
            "--authority",
            &authority,
            "--messages",
            "200",
            "--size",
            "20000",
        ];
        let report = grpc_echo_client(&target, &args).await;
        assert_eq!(report["unary_authority"], authority, "{report}");
        assert_eq!(report["chat_messages"], 200, "{report}");

        let authority = format!("api.{DOMAIN}:{}", relay.https.port());
        let target = relay.https.to_string();
        let ca = relay.ca.display().to_string();
        let server_name = format!("api.{DOMAIN}");
        let args = [
            "--tls-ca",
            &ca,
            "--tls-server-name",
            &server_name,
            "--authority",
            &authority,
            "--messages",
            "100",
        ];
        let report = grpc_echo_client(&target, &args).await;
        assert_eq!(report["chat_messages"], 100, "{report}");
        assert_eq!(report["unary_authority"], authority, "{report}");
    })
    .await;
}

#[tokio::test]
async fn a_failed_dial_does_not_tell_the_public_where_the_service_listens() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let session = agent(&relay, "hidden").await;
        // The agent's target: an address on its side that nothing listens on, which the
        // agent's refusal names.
        let port = closed_port().await;
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let _forward = publish_http(&session, target, http(HttpProtocol::Http1)).await;
        let url = format!("http://{}", relay.http);
        let host = format!("Host: hidden.{DOMAIN}");

        let (body, head) = curl(&["-H", &host, &url]).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains(r#"the service behind remote "hidden" is not answering"#),
            "{body}"
        );
        // A gRPC client gets the message as `grpc-message`: it must not tell more.
        let (_, grpc_head) =
            curl(&["-H", &host, "-H", "Content-Type: application/grpc", &url]).await;
        assert!(grpc_head.contains("not answering"), "{grpc_head}");
        for answer in [body.as_ref(), grpc_head.as_str()] {
            for secret in [
                port.to_string(),
                "127.0.0.1".to_owned(),
                "refused".to_owned(),
            ] {
                assert!(!answer.contains(&secret), "it tells {secret:?}: {answer}");
            }
        }

        // Another remote's service on the same relay answers, byte for byte.
        let backend = HttpBackend::start().await;
        let other = agent(&relay, "pi").await;
        let _other = publish_http(&other, backend.addr(), http(HttpProtocol::Http1)).await;
        let host = format!("Host: pi.{DOMAIN}");
        let download = format!("{url}/download?bytes=1048576&seed=3");
        let (body, head) = curl(&["-H", &host, &download]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(sha256(&body), expected_download(1 << 20, 3));
    })
    .await;
}

/// Sends raw bytes to the HTTP listener and returns what comes back before it closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The relay may answer and close before reading everything: that is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_requests_get_clear_answers_and_harm_nobody_else() {
    within(async {
        let mut config = RelayConfig::default();
        config.http.head_timeout = Duration::from_millis(800);
        let relay = PublicRelay::start(config, 1).await;
        let backend = HttpBackend::start().await;
        let session = agent(&relay, "pi").await;
        let _forward = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;
        let url = format!("http://{}", relay.http);

        // Unknown hosts: 404, naming the host.
        for host in [format!("nobody.{DOMAIN}"), "example.org".to_owned()] {
            let (body, head) = curl(&["-H", &format!("Host: {host}"), &url]).await;
            assert!(head.starts_with("HTTP/1.1 404"), "{head}");
            assert!(String::from_utf8_lossy(&body).contains(&host), "{host}");
        }

        // A target that refuses: 502, saying so.
        let refusing = agent(&relay, "refusing").await;
        let closed = SocketAddr::from(([127, 0, 0, 1], closed_port().await));
        let _refused = publish_http(&refusing, closed, http(HttpProtocol::Http1)).await;
        let (body, head) = curl(&["-H", &format!("Host: refusing.{DOMAIN}"), &url]).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("is not answering"), "{body}");

        // A remote that went away: 502, offline.
        let leaving = agent(&relay, "leaving").await;
        let forward = publish_http(&leaving, backend.addr(), http(HttpProtocol::Http1)).await;
        let host = format!("Host: leaving.{DOMAIN}");
        let (_, head) = curl(&["-H", &host, &format!("{url}/headers")]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        drop(forward);
        leaving.close();
        let mut answer = String::new();
        for _ in 0..500 {
            let (body, head) = curl(&["-H", &host, &url]).await;
            if head.starts_with("HTTP/1.1 502") {
                answer = String::from_utf8_lossy(&body).into_owned();
                break;
            }
        }
        assert!(answer.contains("\"leaving\" is offline"), "{answer:?}");

        // Malformed and oversized heads.
        let malformed = raw_exchange(relay.http, b"GET / HTTP/1.1\r\nHost pi\r\n\r\n").await;
        assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
        let big = format!(
            "GET / HTTP/1.1\r\nHost: pi.{DOMAIN}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 << 10)
        );
        let oversized = raw_exchange(relay.http, big.as_bytes()).await;
        assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized}");

        // Slow clients are cut after the head timeout; meanwhile others are served.
        let mut silent = TcpStream::connect(relay.http).await.unwrap();
        let mut slow = TcpStream::connect(relay.http).await.unwrap();
        slow.write_all(format!("GET / HTTP/1.1\r\nHost: pi.{DOMAIN}\r\n").as_bytes())
            .await
            .unwrap();
        let headers = format!("Host: pi.{DOMAIN}");
        let (_, head) = curl(&["-H", &headers, &format!("{url}/headers")]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        for stream in [&mut silent, &mut slow] {
            let mut rest = Vec::new();
            let cut = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
            let read = cut.await.expect("a slow client was not cut");
            // Cut: the connection ends, with at most a 408 and no request served.
            assert!(read.is_err() || !String::from_utf8_lossy(&rest).contains("200"));
        }
    })
    .await;
}

#[tokio::test]
async fn a_public_tcp_port_carries_bytes_exactly_and_proxy_headers_on_request() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 4).await;
        let session = agent(&relay, "db").await;
        let echo = echo_server().await;
        let target = Target::new("127.0.0.1", echo.port());
        let tcp = Publish::none().tcp(TcpPublish::any_port());
        let _forward = session.forward_with(5432, target, tcp).await.unwrap();
        let address = session.published(5432).tcp_address.expect("a TCP address");
        let port: u16 = address.rsplit_once(':').unwrap().1.parse().unwrap();
        assert!(relay.tcp_ports.contains(&port), "{address}");

        echoes_exactly(port, random_bytes(32 * MIB)).await;

        // With the PROXY protocol, the target learns the client's address first.
        let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let proxied = serve_tcp(move |mut stream| {
            let seen = seen.clone();
            async move {
                let mut head = [0u8; 28];
                stream.read_exact(&mut head).await?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await?;
                let _ = seen.send((head, rest));
                Ok(())
            }
        })
        .await;
        let target = Target::new("127.0.0.1", proxied.port());
        let tcp = Publish::none().tcp(TcpPublish::any_port().proxy_protocol(true));
        let _proxied = session.forward_with(6000, target, tcp).await.unwrap();
        let address = session.published(6000).tcp_address.unwrap();
        let mut client = TcpStream::connect(address.as_str()).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let public_addr = client.peer_addr().unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let (head, rest) = heard.recv().await.unwrap();
        assert_eq!(head[..12], SIGNATURE);
        assert_eq!(head[12..16], [0x21, 0x11, 0, 12]);
        let SocketAddr::V4(client_v4) = client_addr else {
            unreachable!()
        };
        let SocketAddr::V4(public_v4) = public_addr else {
            unreachable!()
        };
        assert_eq!(head[16..20], client_v4.ip().octets());
        assert_eq!(head[20..24], public_v4.ip().octets());
        assert_eq!(head[24..26], client_v4.port().to_be_bytes());
        assert_eq!(head[26..28], public_v4.port().to_be_bytes());
        assert_eq!(rest, b"hello");
    })
    .await;
}

#[tokio::test]
async fn a_relay_on_worker_threads_carries_public_tcp_and_https_byte_exact() {
    within(async {
        let mut config = RelayConfig::default();
        config.worker_threads = 2;
        let relay = PublicRelay::start(config, 1).await;
        let session = agent(&relay, "busy").await;
        let echo = echo_server().await;
        let target = Target::new("127.0.0.1", echo.port());
        let tcp = Publish::none().tcp(TcpPublish::any_port());
        let _tcp = session.forward_with(7, target, tcp).await.unwrap();
        let backend = HttpBackend::start().await;
        let _http = publish_http(&session, backend.addr(), http(HttpProtocol::Http1)).await;

        // The public port's connections run on the agent's worker.
        let data = random_bytes(8 * MIB);
        let port = public_port(&session, 7);
        for _ in 0..2 {
            echoes_exactly(port, data.clone()).await;
        }

        // HTTPS clients, handed to the workers in turn, reach the agent's worker.
        let dir = scratch_dir();
        let len = 4 * MIB as u64;
        for seed in 0..3 {
            let file = dir.path().join(format!("d{seed}"));
            let out = file.display().to_string();
            let url = format!(
                "{}/download?bytes={len}&seed={seed}",
                relay.https_url("busy")
            );
            let (_, head) = curl_at(&relay, "busy", &["-o", &out, &url]).await;
            assert!(head.contains(" 200"), "{head}");
            assert_eq!(hash_file(&file), (len, expected_download(len, seed)));
        }
    })
    .await;
}

#[tokio::test]
async fn tcp_ports_come_back_to_their_remote_and_refusals_are_clear() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 4).await;
        let echo = echo_server().await;
        let target = || Target::new("127.0.0.1", echo.port());
        let any = || Publish::none().tcp(TcpPublish::any_port());

        let first = agent(&relay, "first").await;
        let forward = first.forward_with(22, target(), any()).await.unwrap();
        let held = public_port(&first, 22);
        let second = agent(&relay, "second").await;
        let _second = second.forward_with(22, target(), any()).await.unwrap();
        let other = public_port(&second, 22);
        assert_ne!(held, other);

        // Asking for a taken port, or one outside the range, is refused with a reason, and
        // the session carries on.
        let taken = Publish::none().tcp(TcpPublish::any_port().port(held));
        let error = second.forward_with(23, target(), taken).await.unwrap_err();
        assert!(
            error.to_string().contains(&format!("{held} is taken")),
            "{error}"
        );
        let outside = relay.tcp_ports.end().checked_add(1).unwrap_or(1);
        let outside = Publish::none().tcp(TcpPublish::any_port().port(outside));
        let error = second
            .forward_with(23, target(), outside)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("outside"), "{error}");
        second.forward(23, target()).await.unwrap();

        // The first remote leaves; a newcomer gets a port nobody held, not the first's.
        drop(forward);
        first.close();
        let third = agent(&relay, "third").await;
        let _third = third.forward_with(22, target(), any()).await.unwrap();
        let fresh = public_port(&third, 22);
        assert!(fresh != held && fresh != other);

        // The first remote comes back (once the relay has seen it leave) to its own port.
        let mut back = None;
        for _ in 0..500 {
            let Ok(first) = Session::builder(name("first"))
                .relay(relay.url.clone())
                .connect()
                .await
            else {
                continue;
            };
            let forward = first.forward_with(22, target(), any()).await.unwrap();
            back = Some((first, forward));
            break;
        }
        let (first, _forward) = back.expect("the first remote's name never came free");
        assert_eq!(public_port(&first, 22), held);

        // One port is left; then the range is exhausted, and the next remote is told so.
        let fourth = agent(&relay, "fourth").await;
        let _fourth = fourth.forward_with(22, target(), any()).await.unwrap();
        let fifth = agent(&relay, "fifth").await;
        let error = fifth.forward_with(22, target(), any()).await.unwrap_err();
        assert!(error.to_string().contains("every TCP port"), "{error}");
    })
    .await;
}
