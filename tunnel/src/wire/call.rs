//! [`call`]: a client's streaming call with hand-framed messages.

use futures_util::{Stream, StreamExt};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Method, Version};
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};
use tower::{Service, ServiceExt};

use super::{ChunkMessage, DecodeStream, EncodeBody, GRPC_CONTENT_TYPE};
use crate::RelayChannel;

/// Makes the streaming call `path` (`/package.Service/Method`) on `channel`, sending
/// `requests`; returns once the response's headers have arrived.
///
/// Fails, as tonic's generated clients do, when the relay cannot be reached or answers at
/// once with an error.
pub(crate) async fn call<Req, Resp, S>(
    mut channel: RelayChannel,
    path: &'static str,
    requests: S,
) -> Result<Response<DecodeStream<Resp>>, Status>
where
    Req: ChunkMessage,
    Resp: ChunkMessage,
    S: Stream<Item = Req> + Send + 'static,
{
    let body = EncodeBody::client(Box::pin(requests.map(Ok::<_, Status>)));
    let mut request = http::Request::new(Body::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    headers.insert(TE, HeaderValue::from_static("trailers"));

    let response = channel
        .ready()
        .await
        .map_err(|error| Status::from_error(error.into()))?
        .call(request)
        .await
        .map_err(|error| Status::from_error(error.into()))?;
    let (parts, body) = response.into_parts();
    // A call that fails at once carries its status in the headers ("trailers-only").
    let trailers = match Status::from_header_map(&parts.headers) {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(_) => false,
        None => true,
    };
    let messages = DecodeStream::response(body, parts.status, trailers);
    Ok(Response::from_parts(
        MetadataMap::from_headers(parts.headers),
        messages,
        parts.extensions,
    ))
}
