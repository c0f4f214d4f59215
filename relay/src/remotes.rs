//! `RemoteService`: reading the list of connected remotes.

use std::sync::Arc;

use sesame_proto::v1::remote_service_server::RemoteService;
use sesame_proto::v1::{
    ExposedPort, GetRemoteRequest, HttpEndpoint, ListRemotesRequest, ListRemotesResponse, Remote,
    TcpEndpoint,
};
use sesame_tunnel::{Error, RemoteName};
use tonic::{Request, Response, Status};

use crate::auth::Gate;
use crate::registry::{Registry, RemoteRecord};

/// The page size when the caller asks for none.
const DEFAULT_PAGE_SIZE: usize = 50;

/// The largest page; larger requests get this many.
const MAX_PAGE_SIZE: usize = 1000;

/// Serves the list of remotes.
pub(crate) struct Remotes {
    pub(crate) gate: Arc<Gate>,
    pub(crate) registry: Arc<dyn Registry>,
}

/// A registry record as the API shows it.
pub(crate) fn to_proto(record: &RemoteRecord) -> Remote {
    Remote {
        name: record.name.resource_name(),
        ports: record
            .ports
            .iter()
            .map(|(&port, endpoints)| ExposedPort {
                port: u32::from(port),
                http: (!endpoints.http_urls.is_empty()).then(|| HttpEndpoint {
                    urls: endpoints.http_urls.clone(),
                    ..HttpEndpoint::default()
                }),
                tcp: endpoints.tcp_address.as_ref().map(|address| TcpEndpoint {
                    public_port: address
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse().ok())
                        .unwrap_or_default(),
                    address: address.clone(),
                    ..TcpEndpoint::default()
                }),
            })
            .collect(),
        connect_time: Some(record.connect_time.into()),
        agent_version: record.agent_version.clone(),
    }
}

/// Page tokens are opaque to callers: the hex of the last name of the previous page.
fn encode_page_token(last: &RemoteName) -> String {
    last.as_str().bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_page_token(token: &str) -> Result<RemoteName, Status> {
    let invalid = || Status::invalid_argument("invalid page token");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let name = String::from_utf8(bytes).map_err(|_| invalid())?;
    RemoteName::new(name).map_err(|_| invalid())
}

#[tonic::async_trait]
impl RemoteService for Remotes {
    async fn get_remote(
        &self,
        request: Request<GetRemoteRequest>,
    ) -> Result<Response<Remote>, Status> {
        let caller = self.gate.authenticate(&request)?;
        let name = RemoteName::from_resource_name(&request.get_ref().name)?;
        let not_found = || Error::RemoteNotFound {
            name: name.to_string(),
        };
        // A remote the caller may not see is, to the caller, not there.
        if !caller.may_see(&name) {
            return Err(not_found().into());
        }
        let record = self.registry.get(&name).await?.ok_or_else(not_found)?;
        Ok(Response::new(to_proto(&record)))
    }

    async fn list_remotes(
        &self,
        request: Request<ListRemotesRequest>,
    ) -> Result<Response<ListRemotesResponse>, Status> {
        let caller = self.gate.authenticate(&request)?;
        let ListRemotesRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page_size = match usize::try_from(page_size) {
            Err(_) => return Err(Status::invalid_argument("page_size cannot be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        let after = match page_token.as_str() {
            "" => None,
            token => Some(decode_page_token(token)?),
        };
        // One more than the page tells whether another page follows.
        let mut records = self.registry.list(after.as_ref(), page_size + 1).await?;
        let next_page_token = if records.len() > page_size {
            records.truncate(page_size);
            records
                .last()
                .map(|last| encode_page_token(&last.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Filtering after paging may leave a page short, with more to come: callers follow
        // `next_page_token` until it is empty.
        Ok(Response::new(ListRemotesResponse {
            remotes: records
                .iter()
                .filter(|record| caller.may_see(&record.name))
                .map(to_proto)
                .collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let name = RemoteName::new("device-42").unwrap();
        assert_eq!(decode_page_token(&encode_page_token(&name)).unwrap(), name);
        for garbage in ["x", "zz", "2d", "c3"] {
            assert!(decode_page_token(garbage).is_err(), "{garbage}");
        }
    }
}
