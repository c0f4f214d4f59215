//! `RemoteService`: reading the list of connected remotes.

use std::sync::Arc;

use sesame_proto::v1::remote_service_server::RemoteService;
use sesame_proto::v1::{
    ExposedPort, GetRemoteRequest, HttpEndpoint, ListRemotesRequest, ListRemotesResponse, Remote,
    TcpEndpoint,
};
use sesame_tunnel::{Error, RemoteName};
use tonic::{Request, Response, Status};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{Caller, Gate};
use crate::registry::{Registry, RemoteRecord};

/// The page size when the caller asks for none.
const DEFAULT_PAGE_SIZE: usize = 50;

/// The largest page; larger requests get this many.
const MAX_PAGE_SIZE: usize = 1000;

/// Serves the list of remotes.
pub(crate) struct Remotes {
    pub(crate) gate: Arc<Gate>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) pages: PageTokens,
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

/// Page tokens: the last name of the previous page (a name the caller was shown), with a
/// MAC under a secret of this relay's process that binds it to the caller's token. A caller
/// cannot start a page from a position it chose, nor use another caller's tokens; tokens
/// lapse when the relay restarts.
pub(crate) struct PageTokens {
    key: [u8; 32],
}

impl PageTokens {
    /// Tokens under a fresh random key.
    pub(crate) fn new() -> Self {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("the system's random number generator works");
        PageTokens { key }
    }

    fn mac(&self, caller: &Caller, last: &RemoteName) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        // The token id is hex digits and the name has no NUL: the two cannot run together.
        mac.update(caller.token().unwrap_or_default().as_bytes());
        mac.update(b"\0");
        mac.update(last.as_str().as_bytes());
        mac
    }

    /// The token for the page after `last`, for `caller`.
    pub(crate) fn issue(&self, caller: &Caller, last: &RemoteName) -> String {
        let tag = self.mac(caller, last).finalize().into_bytes();
        format!("{last}.{}", hex(&tag))
    }

    /// The name after which the page `token` stands for begins, if `caller` was given it.
    pub(crate) fn verify(&self, caller: &Caller, token: &str) -> Result<RemoteName, Status> {
        let invalid = || {
            Status::invalid_argument(
                "invalid page token: pass next_page_token from your previous ListRemotes call, \
                 unchanged (tokens lapse when the relay restarts)",
            )
        };
        let (name, tag) = token.rsplit_once('.').ok_or_else(invalid)?;
        let name = RemoteName::new(name).map_err(|_| invalid())?;
        let tag = unhex(tag).ok_or_else(invalid)?;
        self.mac(caller, &name)
            .verify_slice(&tag)
            .map_err(|_| invalid())?;
        Ok(name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
        let mut after = match page_token.as_str() {
            "" => None,
            token => Some(self.pages.verify(&caller, token)?),
        };
        // The page holds only what the caller may see, so the token that ends it names a
        // remote the caller was shown. One more than the page tells whether another follows.
        // Each round reads further on in the registry, so this ends with it.
        let mut page = Vec::new();
        while page.len() <= page_size {
            let batch = self.registry.list(after.as_ref(), page_size + 1).await?;
            let exhausted = batch.len() <= page_size;
            after = batch.last().map(|record| record.name.clone());
            let visible = batch.into_iter().filter(|r| caller.may_see(&r.name));
            page.extend(visible.take(page_size + 1 - page.len()));
            if exhausted {
                break;
            }
        }
        let next_page_token = if page.len() > page_size {
            page.truncate(page_size);
            let last = &page.last().expect("a page of at least one").name;
            self.pages.issue(&caller, last)
        } else {
            String::new()
        };
        Ok(Response::new(ListRemotesResponse {
            remotes: page.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn caller(token: &str) -> Caller {
        Caller::new(token.to_owned(), Arc::from([]), CancellationToken::new())
    }

    #[test]
    fn page_tokens_hold_only_for_their_caller_and_relay() {
        let pages = PageTokens::new();
        let (ada, bob) = (caller("0000ada0"), caller("00000b0b"));
        let name = RemoteName::new("device-42").unwrap();
        let token = pages.issue(&ada, &name);
        assert_eq!(pages.verify(&ada, &token).unwrap(), name);
        assert!(pages.verify(&bob, &token).is_err(), "another caller's");
        assert!(pages.verify(&Caller::anyone(), &token).is_err());
        assert!(
            PageTokens::new().verify(&ada, &token).is_err(),
            "another relay's, or before a restart"
        );
        // A position the caller chose, with any tag.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let chosen = format!("device-41.{tag}");
        assert!(pages.verify(&ada, &chosen).is_err());
        for garbage in ["", "x", "device-42", "device-42.zz", "device-42.", ".00"] {
            let status = pages.verify(&ada, garbage).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{garbage}");
        }
    }
}
