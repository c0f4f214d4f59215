//! The two calls that carry connections, `TunnelService.AcceptConnection` and
//! `DialerService.Dial`, served with [`sesame_tunnel::wire`]'s framing: a chunk crosses the
//! relay as the very bytes HTTP/2 received, never copied into a codec's buffers. Every other
//! call goes to the service tonic generated.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use sesame_proto::v1::{
    AcceptConnectionRequest, AcceptConnectionResponse, DialRequest, DialResponse,
};
use sesame_tunnel::splice::{ToAgent, ToDialer};
use sesame_tunnel::wire::{
    ACCEPT_CONNECTION_PATH, ChunkMessage, DIAL_PATH, DecodeStream, EncodeBody, GRPC_CONTENT_TYPE,
};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::Service;

use crate::dialer::Dialer;
use crate::tunnel::Tunnel;

/// A call that carries a connection, and who answers it.
pub(crate) trait DataCall: Send + Sync + 'static {
    /// The messages the caller sends.
    type Request: ChunkMessage;
    /// The messages the relay sends back.
    type Response: ChunkMessage;
    /// The stream of messages the relay sends back.
    type Responses: Stream<Item = Result<Self::Response, Status>> + Send + Unpin + 'static;
    /// The call's path, `/package.Service/Method`.
    const PATH: &'static str;

    /// Answers the call.
    fn answer(
        self: Arc<Self>,
        request: Request<DecodeStream<Self::Request>>,
    ) -> impl Future<Output = Result<Response<Self::Responses>, Status>> + Send;
}

impl DataCall for Tunnel {
    type Request = AcceptConnectionRequest;
    type Response = AcceptConnectionResponse;
    type Responses = ToAgent;
    const PATH: &'static str = ACCEPT_CONNECTION_PATH;

    async fn answer(
        self: Arc<Self>,
        request: Request<DecodeStream<AcceptConnectionRequest>>,
    ) -> Result<Response<ToAgent>, Status> {
        self.accept(request).await
    }
}

impl DataCall for Dialer {
    type Request = DialRequest;
    type Response = DialResponse;
    type Responses = ToDialer;
    const PATH: &'static str = DIAL_PATH;

    async fn answer(
        self: Arc<Self>,
        request: Request<DecodeStream<DialRequest>>,
    ) -> Result<Response<ToDialer>, Status> {
        self.answer_dial(request).await
    }
}

/// A generated service, with one of its calls answered by `C` instead.
pub(crate) struct WithDataCall<S, C> {
    service: S,
    call: Arc<C>,
}

impl<S, C> WithDataCall<S, C> {
    /// `service`, with its call `C::PATH` answered by `call`.
    pub(crate) fn new(service: S, call: Arc<C>) -> Self {
        WithDataCall { service, call }
    }
}

impl<S: Clone, C> Clone for WithDataCall<S, C> {
    fn clone(&self) -> Self {
        WithDataCall {
            service: self.service.clone(),
            call: self.call.clone(),
        }
    }
}

impl<S: NamedService, C> NamedService for WithDataCall<S, C> {
    const NAME: &'static str = S::NAME;
}

impl<S, C> Service<http::Request<Body>> for WithDataCall<S, C>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    C: DataCall,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != C::PATH {
            return Box::pin(self.service.call(request));
        }
        let call = self.call.clone();
        Box::pin(async move { Ok(answer(call, request).await) })
    }
}

/// Answers one call: its body decoded into messages, and the answer encoded as the
/// response's body, or a status-only response when the call fails at once.
async fn answer<C: DataCall>(call: Arc<C>, request: http::Request<Body>) -> http::Response<Body> {
    let request = Request::from_http(request.map(DecodeStream::request));
    match call.answer(request).await {
        Ok(response) => {
            let (metadata, messages, extensions) = response.into_parts();
            let mut response = http::Response::new(Body::new(EncodeBody::server(messages)));
            *response.headers_mut() = metadata.into_headers();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
            *response.extensions_mut() = extensions;
            response
        }
        Err(status) => status.into_http(),
    }
}
