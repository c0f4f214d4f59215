//! The services and clients that the virtual-host tests put the relay between, checked
//! against each other directly, without a tunnel, so that a failure there is the tunnel's.

use sesame_tests::http_backend::{CHUNKED_PARTS, chunked_body};
use sesame_tests::process::{curl, header, scratch_dir, text};
use sesame_tests::python::{grpc_echo_client, ws_echo_client};
use sesame_tests::{
    GrpcEcho, HttpBackend, WsEchoServer, expected_download, hash_to_end, hex, random_bytes, sha256,
    within, write_then_shutdown,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

/// The HTTP versions curl speaks to the backend: its flag and how a response's status line
/// starts.
const VERSIONS: [(&str, &str); 2] = [
    ("--http1.1", "HTTP/1.1 "),
    ("--http2-prior-knowledge", "HTTP/2 "),
];

#[tokio::test]
async fn downloads_are_the_seeded_bytes_over_both_versions() {
    within(async {
        let backend = HttpBackend::start().await;
        let len = 8 * MIB;
        for (flag, status) in VERSIONS {
            let url = format!("{}/download?bytes={len}&seed=7", backend.url());
            let (body, head) = curl(&[flag, &url]).await;
            assert!(head.starts_with(&format!("{status}200")), "{head}");
            assert_eq!(header(&head, "content-length"), Some("8388608"), "{head}");
            assert_eq!(body.len(), len, "{flag}");
            assert_eq!(sha256(&body), expected_download(len as u64, 7), "{flag}");
        }
        // Another seed is another stream, and lengths that are not whole words work.
        let (body, _) = curl(&[&format!("{}/download?bytes=100003&seed=8", backend.url())]).await;
        assert_eq!(body.len(), 100_003);
        assert_eq!(sha256(&body), expected_download(100_003, 8));
        assert_ne!(expected_download(100_003, 8), expected_download(100_003, 7));
        let (empty, head) = curl(&[&format!("{}/download?bytes=0", backend.url())]).await;
        assert!(empty.is_empty(), "{head}");
        assert_eq!(header(&head, "content-length"), Some("0"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn chunked_uploads_are_hashed_over_both_versions() {
    within(async {
        let backend = HttpBackend::start().await;
        let data = random_bytes(8 * MIB);
        let dir = scratch_dir();
        let file = dir.path().join("upload.bin");
        std::fs::write(&file, &data).unwrap();
        let upload = format!("@{}", file.display());
        let url = format!("{}/upload", backend.url());
        for (flag, status) in VERSIONS {
            let (body, head) = curl(&[
                flag,
                "-v",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &upload,
                &url,
            ])
            .await;
            if flag == "--http1.1" {
                assert!(
                    head.contains("> Transfer-Encoding: chunked"),
                    "curl did not send a chunked body:\n{head}"
                );
            }
            assert!(head.contains(&format!("< {status}200")), "{head}");
            let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(reply["bytes"], data.len(), "{flag}: {reply}");
            assert_eq!(reply["sha256"], hex(&sha256(&data)), "{flag}: {reply}");
        }
    })
    .await;
}

#[tokio::test]
async fn headers_show_version_host_and_repeated_values() {
    within(async {
        let backend = HttpBackend::start().await;
        let host = backend.addr().to_string();
        for (flag, version) in [
            ("--http1.1", "HTTP/1.1"),
            ("--http2-prior-knowledge", "HTTP/2.0"),
        ] {
            let url = format!("{}/headers?a=1", backend.url());
            let (body, _) = curl(&[flag, "-H", "X-Test: one", "-H", "X-Test: two", &url]).await;
            let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(seen["method"], "GET", "{seen}");
            assert_eq!(seen["path"], "/headers", "{seen}");
            assert_eq!(seen["query"], "a=1", "{seen}");
            assert_eq!(seen["version"], version, "{seen}");
            assert_eq!(seen["headers"]["host"], serde_json::json!([host]), "{seen}");
            assert_eq!(
                seen["headers"]["x-test"],
                serde_json::json!(["one", "two"]),
                "{seen}"
            );
            let authority = if version == "HTTP/2.0" {
                serde_json::json!(host)
            } else {
                serde_json::Value::Null
            };
            assert_eq!(seen["authority"], authority, "{seen}");
        }
        // Other methods are shown as they are; an explicit Host header wins on HTTP/1.1.
        let url = format!("{}/headers", backend.url());
        let (body, _) = curl(&["-X", "DELETE", "-H", "Host: app.example", &url]).await;
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["method"], "DELETE", "{seen}");
        assert_eq!(
            seen["headers"]["host"],
            serde_json::json!(["app.example"]),
            "{seen}"
        );

        // Two requests in one curl run share its kept-alive connection.
        let before = backend.connections();
        let (_, head) = curl(&["--http1.1", &url, &url]).await;
        assert_eq!(head.matches("HTTP/1.1 200").count(), 2, "{head}");
        assert_eq!(
            backend.connections(),
            before + 1,
            "the connection was not reused"
        );

        let (_, head) = curl(&[&format!("{}/nothing-here", backend.url())]).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    })
    .await;
}

/// The chunks of a body in HTTP/1.1 chunked framing, checked to end with the last chunk
/// and nothing after it.
fn dechunk(mut raw: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    for _ in 0..1000 {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk-size line");
        let size_text = text(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.trim(), 16)
            .unwrap_or_else(|_| panic!("a chunk size, not {size_text:?}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n", "no trailers and nothing after the last chunk");
            return chunks;
        }
        chunks.push(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        raw = &raw[size + 2..];
    }
    panic!("more than 1000 chunks");
}

#[tokio::test]
async fn chunked_responses_come_in_chunks_without_a_length() {
    within(async {
        let backend = HttpBackend::start().await;
        let url = format!("{}/chunked", backend.url());
        // Raw, so the chunk framing itself shows: one chunk per part, then the last chunk.
        let (raw, head) = curl(&["--http1.1", "--raw", &url]).await;
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{head}"
        );
        assert_eq!(header(&head, "content-length"), None, "{head}");
        let parts: Vec<&[u8]> = CHUNKED_PARTS.iter().map(|part| part.as_bytes()).collect();
        assert_eq!(dechunk(&raw), parts, "{}", text(&raw));
        for (flag, _) in VERSIONS {
            let (body, head) = curl(&[flag, &url]).await;
            assert_eq!(header(&head, "content-length"), None, "{head}");
            assert_eq!(body, chunked_body(), "{flag}");
        }
    })
    .await;
}

/// Reads a response head byte by byte (so nothing after it is consumed), at most 8 KiB.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8 << 10, "no end to the response head");
        head.push(stream.read_u8().await.expect("the response head"));
    }
    text(&head)
}

#[tokio::test]
async fn upgraded_connections_echo_raw_bytes() {
    within(async {
        let backend = HttpBackend::start().await;
        let mut stream = TcpStream::connect(backend.addr()).await.unwrap();
        stream
            .write_all(
                b"GET /upgrade-echo HTTP/1.1\r\nHost: backend\r\n\
                  Connection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert_eq!(header(&head, "upgrade"), Some("echo"), "{head}");

        let data = random_bytes(4 * MIB);
        let (reader, writer) = stream.split();
        let (written, read) = tokio::join!(write_then_shutdown(writer, &data), hash_to_end(reader));
        written.unwrap();
        let (len, hash) = read.unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(hash, sha256(&data));

        // Without the upgrade headers, the route asks for them.
        let (_, head) = curl(&[&format!("{}/upgrade-echo", backend.url())]).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn websocket_client_and_server_echo_each_other() {
    within(async {
        let server = WsEchoServer::start().await;
        let url = format!("ws://{}/echo/room?x=1", server.addr());
        let report = ws_echo_client(&url, &["--messages", "20", "--size", "100000"]).await;
        assert_eq!(report["messages"], 20, "{report}");
        assert_eq!(report["bytes"], 2_000_000, "{report}");
        assert_eq!(report["whoami"]["path"], "/echo/room?x=1", "{report}");
        assert_eq!(
            report["whoami"]["host"],
            server.addr().to_string(),
            "{report}"
        );

        // --connect keeps the URL's host in the Host header.
        let url = "ws://app.example:8080/named";
        let connect = server.addr().to_string();
        let report = ws_echo_client(url, &["--connect", &connect, "--messages", "1"]).await;
        assert_eq!(report["whoami"]["host"], "app.example:8080", "{report}");
        assert_eq!(report["whoami"]["path"], "/named", "{report}");
    })
    .await;
}

#[tokio::test]
async fn grpc_client_and_echo_server_agree() {
    within(async {
        let server = GrpcEcho::start().await;
        let target = server.addr().to_string();
        let report = grpc_echo_client(&target, &["--messages", "20", "--size", "100000"]).await;
        assert_eq!(report["chat_messages"], 20, "{report}");
        assert_eq!(report["bytes"], 21 * 100_000, "{report}");
        assert_eq!(report["unary_authority"], target, "{report}");

        // Messages above gRPC's customary 4 MiB limit pass both ways, and the authority is
        // the one the client chose.
        let report = grpc_echo_client(
            &target,
            &[
                "--authority",
                "echo.example",
                "--messages",
                "2",
                "--size",
                "5000000",
            ],
        )
        .await;
        assert_eq!(report["unary_authority"], "echo.example", "{report}");
        assert_eq!(report["chat_messages"], 2, "{report}");
    })
    .await;
}
