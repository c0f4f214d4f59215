//! A real gRPC service to put behind the relay's virtual hosts: `sesame.test.Echo`, written
//! by hand on tonic's server machinery so that it needs no generated code. Its messages are
//! `google.protobuf.BytesValue` (what prost encodes `Vec<u8>` as), so clients need none
//! either.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HOST;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The service's full name.
pub const SERVICE: &str = "sesame.test.Echo";

/// The path of the unary method, which answers with the request's bytes.
pub const SAY: &str = "/sesame.test.Echo/Say";

/// The path of the bidirectional streaming method, which echoes each message as it comes.
pub const CHAT: &str = "/sesame.test.Echo/Chat";

/// The response metadata key holding the request's authority as the server saw it.
pub const AUTHORITY_KEY: &str = "x-authority";

/// The largest message either way: above gRPC's customary 4 MiB, so tests can move big ones.
const MAX_MESSAGE: usize = 64 << 20;

/// A gRPC server (h2c) on `127.0.0.1:0` serving `sesame.test.Echo`:
///
/// - `Say` (unary, `BytesValue` to `BytesValue`) answers with the same bytes;
/// - `Chat` (bidirectional streaming) echoes each message as it arrives and ends when the
///   client ends its side, so a client can interleave sends and reads.
///
/// Both set the response metadata `x-authority` to the request's URI authority (its `host`
/// header when it has none) as the server saw it. Stops when dropped.
#[derive(Debug)]
pub struct GrpcEcho {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl GrpcEcho {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(EchoService)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("the gRPC echo server failed");
        });
        GrpcEcho {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// The `tower` service that routes a request to its method.
#[derive(Clone)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl<B> tower::Service<http::Request<B>> for EchoService
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let authority = request
            .uri()
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| {
                let host = request.headers().get(HOST)?;
                Some(String::from_utf8_lossy(host.as_bytes()).into_owned())
            });
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<Vec<u8>, Vec<u8>>::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(match path.as_str() {
                SAY => grpc.unary(Say { authority }, request).await,
                CHAT => grpc.streaming(Chat { authority }, request).await,
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            })
        })
    }
}

/// Sets [`AUTHORITY_KEY`] on `response` when the request had an authority.
fn tag<T>(mut response: Response<T>, authority: &Option<String>) -> Response<T> {
    if let Some(value) = authority
        .as_deref()
        .and_then(|authority| MetadataValue::try_from(authority).ok())
    {
        response.metadata_mut().insert(AUTHORITY_KEY, value);
    }
    response
}

/// `Say`: the request's bytes back.
struct Say {
    authority: Option<String>,
}

impl UnaryService<Vec<u8>> for Say {
    type Response = Vec<u8>;
    type Future = Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        ready(Ok(tag(
            Response::new(request.into_inner()),
            &self.authority,
        )))
    }
}

/// `Chat`: the request stream is the response stream, each message sent back as it is read.
struct Chat {
    authority: Option<String>,
}

impl StreamingService<Vec<u8>> for Chat {
    type Response = Vec<u8>;
    type ResponseStream = Streaming<Vec<u8>>;
    type Future = Ready<Result<Response<Streaming<Vec<u8>>>, Status>>;

    fn call(&mut self, request: Request<Streaming<Vec<u8>>>) -> Self::Future {
        ready(Ok(tag(
            Response::new(request.into_inner()),
            &self.authority,
        )))
    }
}
