//! `RemoteService`: reading the list of connected remotes.

use std::sync::Arc;

use sesame_proto::v1::remote_service_server::RemoteService;
use sesame_proto::v1::{
    ExposedPort, GetRemoteRequest, HttpEndpoint, ListRemotesRequest, ListRemotesResponse, Remote,
    TcpEndpoint,
};
use sesame_tunnel::{Error, RemoteName};
use tonic::{Request, Response, Status};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::auth::{Caller, Gate};
use crate::registry::{Registry, RemoteRecord};

/// The page size when the caller asks for none.
const DEFAULT_PAGE_SIZE: usize = 50;

/// The largest page; larger requests get this many.
const MAX_PAGE_SIZE: usize = 1000;

/// The most remotes one `ListRemotes` call examines: a caller that may see few of many
/// remotes gets a short page (perhaps empty) and a token to go on, rather than a scan of the
/// whole registry per call.
const MAX_EXAMINED: usize = 10 * MAX_PAGE_SIZE;

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

/// Page tokens: where the next page begins (the last name the previous page examined, which
/// the caller may not be allowed to see), sealed with ChaCha20-Poly1305 under a key of this
/// relay's process, with the caller's token as associated data. A token reveals nothing, a
/// caller cannot make one that starts where it chose, nor use another caller's; tokens lapse
/// when the relay restarts.
pub(crate) struct PageTokens {
    key: LessSafeKey,
}

/// The bytes of a nonce: random for each token, so that no two tokens share one.
const NONCE_BYTES: usize = 12;

impl PageTokens {
    /// Tokens under a fresh random key.
    pub(crate) fn new() -> Self {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("the system's random number generator works");
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key");
        PageTokens {
            key: LessSafeKey::new(key),
        }
    }

    /// What binds a token to its caller.
    fn caller_data(caller: &Caller) -> Aad<&[u8]> {
        Aad::from(caller.token().unwrap_or_default().as_bytes())
    }

    /// The token for the page that begins after `position`, for `caller`.
    pub(crate) fn issue(&self, caller: &Caller, position: &RemoteName) -> String {
        let mut nonce = [0; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the system's random number generator works");
        let mut sealed = position.as_str().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Self::caller_data(caller),
                &mut sealed,
            )
            .expect("a name is far below the cipher's limit");
        let mut token = nonce.to_vec();
        token.extend_from_slice(&sealed);
        hex(&token)
    }

    /// Where the page `token` stands for begins, if `caller` was given it.
    pub(crate) fn verify(&self, caller: &Caller, token: &str) -> Result<RemoteName, Status> {
        let invalid = || {
            Status::invalid_argument(
                "invalid page token: pass next_page_token from your previous ListRemotes call, \
                 unchanged (tokens lapse when the relay restarts)",
            )
        };
        let bytes = unhex(token).ok_or_else(invalid)?;
        if bytes.len() < NONCE_BYTES {
            return Err(invalid());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| invalid())?;
        let mut sealed = sealed.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, Self::caller_data(caller), &mut sealed)
            .map_err(|_| invalid())?;
        let name = std::str::from_utf8(opened).map_err(|_| invalid())?;
        RemoteName::new(name).map_err(|_| invalid())
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
        // The page holds only what the caller may see. One more than the page tells whether
        // another follows. Each round reads further on in the registry, and the rounds stop
        // once MAX_EXAMINED remotes have been read: the next page then begins where this one
        // stopped, which the sealed token does not reveal.
        let mut page = Vec::new();
        let mut examined = 0;
        let mut more = false;
        while page.len() <= page_size {
            if examined >= MAX_EXAMINED {
                more = true;
                break;
            }
            let batch = self.registry.list(after.as_ref(), MAX_PAGE_SIZE).await?;
            examined += batch.len();
            let exhausted = batch.len() < MAX_PAGE_SIZE;
            for record in batch {
                if page.len() > page_size {
                    break;
                }
                after = Some(record.name.clone());
                if caller.may_see(&record.name) {
                    page.push(record);
                }
            }
            if exhausted {
                break;
            }
        }
        let next_page_token = if page.len() > page_size {
            page.truncate(page_size);
            let last = &page.last().expect("a page of at least one").name;
            self.pages.issue(&caller, last)
        } else if more && let Some(position) = &after {
            self.pages.issue(&caller, position)
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

    /// Authenticates every call as a caller with these scopes.
    struct Scoped(&'static [&'static str]);

    impl crate::auth::Authorize for Scoped {
        fn authenticate(&self, _metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
            let scopes = self.0.iter().map(|s| s.parse().unwrap()).collect();
            Ok(Caller::new(
                "0000ada0".into(),
                scopes,
                CancellationToken::new(),
            ))
        }
    }

    #[tokio::test]
    async fn a_call_examines_a_bounded_number_of_remotes_and_tells_where_to_go_on() {
        let registry = Arc::new(crate::MemoryRegistry::default());
        let names = (0..MAX_EXAMINED + 5)
            .map(|n| format!("hidden-{n:05}"))
            .chain(["shown-1".to_owned(), "shown-2".to_owned()]);
        for name in names {
            let record = RemoteRecord {
                name: RemoteName::new(name).unwrap(),
                session: sesame_tunnel::SessionId::generate(),
                ports: Default::default(),
                connect_time: std::time::SystemTime::UNIX_EPOCH,
                agent_version: String::new(),
                agent_key: None,
                owner: None,
            };
            registry.claim(record).await.unwrap();
        }
        let budget = crate::config::RelayConfig::default().failed_auth;
        let remotes = Remotes {
            gate: Arc::new(Gate::new(
                Arc::new(Scoped(&["connect:shown-*"])),
                budget,
                Arc::default(),
            )),
            registry,
            pages: PageTokens::new(),
        };
        let mut shown = Vec::new();
        let mut page_token = String::new();
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls <= 10, "the listing never ends");
            let request = ListRemotesRequest {
                page_size: 1,
                page_token,
            };
            let page = remotes
                .list_remotes(Request::new(request))
                .await
                .unwrap()
                .into_inner();
            shown.extend(page.remotes.into_iter().map(|r| r.name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(shown, ["remotes/shown-1", "remotes/shown-2"]);
        // The first call stopped among the hidden names with an empty page; then a page each.
        assert_eq!(calls, 3);
    }

    #[test]
    fn page_tokens_hold_only_for_their_caller_and_relay_and_reveal_nothing() {
        let pages = PageTokens::new();
        let (ada, bob) = (caller("0000ada0"), caller("00000b0b"));
        let name = RemoteName::new("device-42").unwrap();
        let token = pages.issue(&ada, &name);
        assert_eq!(pages.verify(&ada, &token).unwrap(), name);
        assert!(!token.contains("device"), "{token}");
        assert_ne!(token, pages.issue(&ada, &name), "a fresh nonce each time");
        assert!(pages.verify(&bob, &token).is_err(), "another caller's");
        assert!(pages.verify(&Caller::anyone(), &token).is_err());
        assert!(
            PageTokens::new().verify(&ada, &token).is_err(),
            "another relay's, or before a restart"
        );
        // Any change to a token spoils it.
        let mut bytes = unhex(&token).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(pages.verify(&ada, &hex(&bytes)).is_err());
        bytes[last] ^= 1;
        bytes[NONCE_BYTES] ^= 1;
        assert!(pages.verify(&ada, &hex(&bytes)).is_err());
        for garbage in ["", "x", "device-42", "00", &"00".repeat(40)] {
            let status = pages.verify(&ada, garbage).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{garbage}");
        }
    }
}
