//! `GET /metrics` over plain HTTP/1.1, for Prometheus to scrape: the relay's metrics, or an
//! agent's. Every other path is `404`; a client gets a few seconds to send its request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sesame_tunnel::io_reason;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::CONTENT_TYPE;

/// How long a scraper may take to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until `stop`, each scrape answered with what `render`
/// writes then (in the OpenMetrics text format, [`CONTENT_TYPE`]).
pub async fn serve_metrics<R>(render: R, listener: TcpListener, stop: CancellationToken)
where
    R: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                debug!(error = %io_reason(&error), "accepting a metrics connection failed");
                continue;
            }
        };
        let render = render.clone();
        let service = service_fn(move |request| {
            let answer = answer(&*render, &request);
            async move { Ok::<_, Infallible>(answer) }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                served = connection => {
                    if let Err(error) = served {
                        debug!(%error, "a metrics connection failed");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
}

/// The answer to one request.
fn answer(render: &dyn Fn() -> String, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "405 Method Not Allowed: GET /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 Not Found: the metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = header::HeaderValue::from_static(content_type);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}
