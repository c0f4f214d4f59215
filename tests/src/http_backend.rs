//! A real HTTP service to put behind the relay's virtual hosts: HTTP/1.1 and h2c (prior
//! knowledge) on one port, with routes that move data in both directions, show what the
//! request looked like when it arrived, and take over the connection after an upgrade.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::hex;

/// The body of every response of [`HttpBackend`].
type ResponseBody = BoxBody<Bytes, Infallible>;

/// The pieces of the `/chunked` response, each sent as its own chunk (HTTP/1.1) or DATA frame
/// (HTTP/2).
pub const CHUNKED_PARTS: [&str; 4] = [
    "first chunk\n",
    "second chunk, a little longer than the first\n",
    "third\n",
    "the last chunk\n",
];

/// The whole body of the `/chunked` response.
pub fn chunked_body() -> Vec<u8> {
    CHUNKED_PARTS.concat().into_bytes()
}

/// How many bytes `/download` generates at a time.
const DOWNLOAD_CHUNK: usize = 64 << 10;

/// The deterministic bytes of `/download`: xorshift64* from a state derived from the seed,
/// generated one chunk at a time.
struct PseudoRandom {
    state: u64,
    left: u64,
}

impl PseudoRandom {
    fn new(bytes: u64, seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        PseudoRandom {
            state: (z ^ (z >> 31)) | 1,
            left: bytes,
        }
    }

    /// The next chunk, or `None` at the end. Every chunk but the last is a whole number of
    /// 8-byte words, so the stream does not depend on where chunks are cut.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let len = self.left.min(DOWNLOAD_CHUNK as u64) as usize;
        let mut chunk = Vec::with_capacity(len + 8);
        while chunk.len() < len {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            chunk.extend_from_slice(&word.to_le_bytes());
        }
        chunk.truncate(len);
        self.left -= len as u64;
        Some(Bytes::from(chunk))
    }
}

/// The SHA-256 of what `GET /download?bytes={bytes}&seed={seed}` sends.
pub fn expected_download(bytes: u64, seed: u64) -> [u8; 32] {
    let mut generator = PseudoRandom::new(bytes, seed);
    let mut hasher = Sha256::new();
    while let Some(chunk) = generator.next_chunk() {
        hasher.update(&chunk);
    }
    hasher.finalize().into()
}

/// The body of `/download`: generated as it is sent, with its exact length known up front.
struct DownloadBody(PseudoRandom);

impl Body for DownloadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.next_chunk().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.left)
    }
}

/// An HTTP server on `127.0.0.1:0` speaking HTTP/1.1 and h2c (prior knowledge) on the same
/// port, with HTTP/1.1 upgrades. Its routes:
///
/// - `GET /download?bytes=N&seed=S`: N pseudo-random bytes with a content-length, generated
///   chunk by chunk; [`expected_download`] gives their SHA-256.
/// - `POST /upload`: reads the body (chunked or not) and answers
///   `{"bytes": N, "sha256": "HEX"}`.
/// - any method on `/headers`: answers `{"method", "path", "query", "version", "authority",
///   "headers"}`, the headers as lower-case name to list of values; `version` is `HTTP/1.1`
///   or `HTTP/2.0`, and an HTTP/2 request without a `host` header shows its authority as
///   `host`.
/// - `GET /chunked`: [`CHUNKED_PARTS`] as separate chunks, without a content-length.
/// - `GET /upgrade-echo` with `Connection: upgrade` and `Upgrade: echo`: `101 Switching
///   Protocols`, then echoes the raw bytes of the connection until the client's EOF.
/// - anything else: `404`.
///
/// Stops, with every connection, when dropped.
#[derive(Debug)]
pub struct HttpBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Dropped with the backend, which ends every connection task.
    _stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(());
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let builder = builder.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let for_requests = stopped.clone();
                    let service = service_fn(move |request| {
                        let stopped = for_requests.clone();
                        async move { Ok::<_, Infallible>(route(request, stopped).await) }
                    });
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        HttpBackend {
            addr,
            connections,
            _stop: stop,
            task,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base of every route's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many TCP connections the server has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one request.
async fn route(request: Request<Incoming>, stopped: watch::Receiver<()>) -> Response<ResponseBody> {
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::GET, "/download") => download(&request),
        (Method::POST, "/upload") => upload(request).await,
        (_, "/headers") => headers(&request),
        (Method::GET, "/chunked") => chunked(),
        (Method::GET, "/upgrade-echo") => upgrade_echo(request, stopped),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A response with a plain-text body.
fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body.to_owned())).boxed())
        .unwrap()
}

/// A `200` response with a JSON body.
fn json(value: &serde_json::Value) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec(value).unwrap();
    body.push(b'\n');
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

/// The query's parameters; later ones win.
fn query(request: &Request<Incoming>) -> HashMap<&str, &str> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect()
}

fn download(request: &Request<Incoming>) -> Response<ResponseBody> {
    let params = query(request);
    let Some(Ok(bytes)) = params.get("bytes").map(|n| n.parse::<u64>()) else {
        return text(StatusCode::BAD_REQUEST, "bytes=N is required\n");
    };
    let Ok(seed) = params.get("seed").map_or(Ok(0), |s| s.parse::<u64>()) else {
        return text(StatusCode::BAD_REQUEST, "seed must be a number\n");
    };
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, bytes)
        .body(DownloadBody(PseudoRandom::new(bytes, seed)).boxed())
        .unwrap()
}

async fn upload(request: Request<Incoming>) -> Response<ResponseBody> {
    let mut body = request.into_body();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}\n"),
                );
            }
        }
    }
    json(&serde_json::json!({
        "bytes": total,
        "sha256": hex(&hasher.finalize()),
    }))
}

fn headers(request: &Request<Incoming>) -> Response<ResponseBody> {
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let values = request
            .headers()
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    if request.version() == Version::HTTP_2
        && !request.headers().contains_key(HOST)
        && let Some(authority) = &authority
    {
        headers.insert("host".to_owned(), vec![authority.clone()].into());
    }
    json(&serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "version": format!("{:?}", request.version()),
        "authority": authority,
        "headers": headers,
    }))
}

fn chunked() -> Response<ResponseBody> {
    let frames = CHUNKED_PARTS.map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes()))));
    Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap()
}

/// Whether a header holds `token` among its comma-separated values, in any case.
fn has_token(request: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value
            .to_str()
            .unwrap_or_default()
            .split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    })
}

fn upgrade_echo(
    mut request: Request<Incoming>,
    mut stopped: watch::Receiver<()>,
) -> Response<ResponseBody> {
    if request.version() != Version::HTTP_11
        || !has_token(&request, CONNECTION, "upgrade")
        || !has_token(&request, UPGRADE, "echo")
    {
        return Response::builder()
            .status(StatusCode::UPGRADE_REQUIRED)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "echo")
            .body(Full::new(Bytes::from_static(b"upgrade to echo\n")).boxed())
            .unwrap();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let echo = async {
            let upgraded = TokioIo::new(upgrade.await.map_err(std::io::Error::other)?);
            let (mut reader, mut writer) = tokio::io::split(upgraded);
            tokio::io::copy(&mut reader, &mut writer).await?;
            writer.shutdown().await
        };
        tokio::select! {
            _ = echo => {}
            _ = stopped.changed() => {}
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "echo")
        .body(Empty::new().boxed())
        .unwrap()
}
