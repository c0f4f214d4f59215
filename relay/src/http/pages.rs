//! The relay's own answers: a short text page, or for a gRPC request a gRPC status, that says
//! what went wrong and where.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// An answer of the relay's own: `status` with a one-line `message`. gRPC clients get the
/// gRPC status that `status` maps to instead (UNAVAILABLE for a bad gateway), so that they
/// show the message rather than an HTTP status.
pub(crate) fn page(status: StatusCode, message: &str, grpc: bool) -> Response<Body> {
    if grpc {
        return grpc_status(status, message);
    }
    let text = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A trailers-only gRPC response carrying the status that `status` stands for.
fn grpc_status(status: StatusCode, message: &str) -> Response<Body> {
    // https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
    let code = match status {
        StatusCode::BAD_REQUEST => 13,       // INTERNAL
        StatusCode::NOT_FOUND => 12,         // UNIMPLEMENTED
        StatusCode::GATEWAY_TIMEOUT => 4,    // DEADLINE_EXCEEDED
        StatusCode::TOO_MANY_REQUESTS => 14, // UNAVAILABLE
        _ if status.is_server_error() => 14, // UNAVAILABLE
        _ => 2,                              // UNKNOWN
    };
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// Percent-encodes a gRPC message: printable ASCII but `%` stays as it is.
fn percent_encode(message: &str) -> String {
    message
        .bytes()
        .map(|byte| match byte {
            b' '..=b'~' if byte != b'%' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_name_the_status_and_the_problem() {
        let response = page(
            StatusCode::NOT_FOUND,
            "no remote at \"x.example.com\"",
            false,
        );
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn grpc_requests_get_a_grpc_status() {
        let response = page(
            StatusCode::BAD_GATEWAY,
            "remote \"pi\" is offline: 100%",
            true,
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "remote \"pi\" is offline: 100%25"
        );
    }
}
