//! Attacks on a relay with TLS and tokens, each while a legitimate transfer runs through the
//! same relay and must come back byte for byte: no token, a wrong, forged, expired or revoked
//! one; a scope too narrow; a name another token owns; guessed, replayed and foreign tickets;
//! oversized messages; floods of failed authentications; and each limit.

use std::time::Duration;

use futures_util::StreamExt;
use sesame_proto::v1::dialer_service_client::DialerServiceClient;
use sesame_proto::v1::remote_service_client::RemoteServiceClient;
use sesame_proto::v1::token_service_client::TokenServiceClient;
use sesame_proto::v1::tunnel_service_client::TunnelServiceClient;
use sesame_proto::v1::{
    AcceptConnectionRequest, ConnectionTicket, CreateTokenRequest, DialRequest, DialTarget,
    ExposePort, ExposedPort, GetRemoteRequest, ListRemotesRequest, ListTokensRequest,
    OpenSessionRequest, OpenSessionResponse, accept_connection_request, dial_request,
    open_session_request, open_session_response,
};
use sesame_relay::RelayConfig;
use sesame_relay::config::FailureBudget;
use sesame_tests::{LegitTransfer, SecureRelay, echo_server, name, within};
use sesame_tunnel::handshake::hello;
use sesame_tunnel::settings::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use sesame_tunnel::tonic::metadata::MetadataMap;
use sesame_tunnel::tonic::{Code, Status, Streaming};
use sesame_tunnel::{AgentKey, Error, RelayChannel, Target, Ticket, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A relay that never locks an address out, for tests that fail on purpose many times.
async fn lenient_relay() -> SecureRelay {
    let mut config = RelayConfig::default();
    config.failed_auth = FailureBudget {
        burst: 10_000,
        refill: Duration::from_millis(1),
    };
    SecureRelay::start_with(config).await
}

/// The code of a failed call.
fn code_of<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn error_code<T>(result: Result<T, Error>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(error) => error.code(),
    }
}

/// Tries every kind of call with `token` and returns each one's code.
async fn codes_of_every_call(
    relay: &SecureRelay,
    token: Option<&Token>,
) -> Vec<(&'static str, Code)> {
    let channel = relay.channel(token).await;
    let mut remotes = RemoteServiceClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel.clone());
    let mut tunnel = TunnelServiceClient::new(channel.clone());
    let list = code_of(remotes.list_remotes(ListRemotesRequest::default()).await);
    let get = code_of(
        remotes
            .get_remote(GetRemoteRequest {
                name: "remotes/legit".into(),
            })
            .await,
    );
    let dial = error_code(
        sesame_tunnel::Dialer::new(channel.clone(), Default::default())
            .dial(&name("legit"), 7)
            .await,
    );
    let session = match token {
        Some(token) => error_code(relay.session("intruder", token).await),
        None => {
            let opening = OpenSessionRequest {
                message: Some(open_session_request::Message::Hello(hello(
                    &name("intruder"),
                    "test",
                    MAX_CHUNK_BYTES,
                    &AgentKey::generate(),
                ))),
            };
            code_of(tunnel.open_session(tokio_stream::iter([opening])).await)
        }
    };
    let accept = code_of(
        tunnel
            .accept_connection(tokio_stream::iter([AcceptConnectionRequest {
                message: Some(accept_connection_request::Message::Ticket(
                    ConnectionTicket {
                        session_id: "s".into(),
                        ticket: Ticket::generate().as_bytes().to_vec().into(),
                    },
                )),
            }]))
            .await,
    );
    let manage = code_of(tokens.list_tokens(ListTokensRequest {}).await);
    vec![
        ("ListRemotes", list),
        ("GetRemote", get),
        ("Dial", dial),
        ("OpenSession", session),
        ("AcceptConnection", accept),
        ("ListTokens", manage),
    ]
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated_while_a_transfer_runs() {
    within(async {
        let relay = lenient_relay().await;
        let mut legit = LegitTransfer::start(&relay).await;

        let unknown: Token = "sesame_0123abcd_00112233445566778899aabbccddeeff"
            .parse()
            .unwrap();
        let valid = relay.token(&["admin"]);
        let mut forged = valid.secret().to_owned();
        let last = if forged.ends_with('0') { '1' } else { '0' };
        forged.pop();
        forged.push(last);
        let forged: Token = forged.parse().unwrap();
        let revoked = relay.token(&["admin"]);
        relay.store.revoke(&SecureRelay::id_of(&revoked)).unwrap();
        let expired = relay.token_for(&["admin"], Some(Duration::from_secs(1)));
        // Wait for the expiry itself: the store ends the token's calls when it expires.
        let mut metadata = MetadataMap::new();
        let bearer = format!("Bearer {}", expired.secret());
        metadata.insert("authorization", bearer.parse().unwrap());
        let caller = sesame_relay::auth::Authorize::authenticate(&*relay.store, &metadata).unwrap();
        caller.ended().unwrap().cancelled().await;

        let cases: [(&str, Option<&Token>); 6] = [
            ("no token", None),
            ("a malformed token", Some(&"garbage".parse().unwrap())),
            ("an unknown token", Some(&unknown)),
            ("a forged secret", Some(&forged)),
            ("a revoked token", Some(&revoked)),
            ("an expired token", Some(&expired)),
        ];
        for (what, token) in cases {
            for (call, code) in codes_of_every_call(&relay, token).await {
                assert_eq!(code, Code::Unauthenticated, "{call} with {what}");
            }
            legit.more().await;
        }
        // The valid token works for each call it may make.
        let admin = relay.admin.clone();
        let codes = codes_of_every_call(&relay, Some(&admin)).await;
        assert!(codes.contains(&("ListTokens", Code::Ok)), "{codes:?}");
        assert!(codes.contains(&("ListRemotes", Code::Ok)), "{codes:?}");
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn a_token_does_only_what_its_scopes_allow() {
    within(async {
        let relay = lenient_relay().await;
        let mut legit = LegitTransfer::start(&relay).await;
        let cameras = relay.token(&["expose:cam-*"]);
        let viewer = relay.token(&["connect:cam-1"]);
        let echo = echo_server().await;
        let mut sessions = Vec::new();
        for camera in ["cam-1", "cam-2"] {
            let session = relay.session(camera, &cameras).await.unwrap();
            std::mem::forget(
                session
                    .forward(7, Target::new("127.0.0.1", echo.port()))
                    .await
                    .unwrap(),
            );
            sessions.push(session);
        }

        let refused = relay.session("prod-db", &cameras).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        assert!(refused.to_string().contains("expose:prod-db"), "{refused}");
        let dialer = relay.dialer(&viewer).await;
        let mut conn = dialer.dial(&name("cam-1"), 7).await.unwrap();
        conn.write_all(b"x").await.unwrap();
        let mut byte = [0];
        conn.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
        for (what, result) in [
            (
                "dialing cam-2",
                error_code(dialer.dial(&name("cam-2"), 7).await),
            ),
            (
                "dialing legit",
                error_code(dialer.dial(&name("legit"), 7).await),
            ),
            (
                "exposing with a connect token",
                error_code(relay.session("cam-1", &viewer).await),
            ),
            (
                "dialing with an expose token",
                error_code(relay.dialer(&cameras).await.dial(&name("cam-1"), 7).await),
            ),
        ] {
            assert_eq!(result, Code::PermissionDenied, "{what}");
        }
        legit.more().await;

        // Lists show only what the token may see; the rest is not there.
        assert_eq!(listed(&relay, &viewer).await, ["remotes/cam-1"]);
        assert_eq!(
            listed(&relay, &cameras).await,
            ["remotes/cam-1", "remotes/cam-2"]
        );
        assert_eq!(
            listed(&relay, &relay.admin).await,
            ["remotes/cam-1", "remotes/cam-2", "remotes/legit"]
        );
        let hidden = RemoteServiceClient::new(relay.channel(Some(&viewer)).await)
            .get_remote(GetRemoteRequest {
                name: "remotes/cam-2".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(hidden.code(), Code::NotFound);

        // Only admins manage tokens.
        let mut manage = TokenServiceClient::new(relay.channel(Some(&cameras)).await);
        let request = CreateTokenRequest {
            scopes: vec!["admin".into()],
            ..Default::default()
        };
        assert_eq!(
            code_of(manage.create_token(request).await),
            Code::PermissionDenied
        );
        legit.finish().await;
    })
    .await
}

/// The remotes `token` sees in a list.
async fn listed(relay: &SecureRelay, token: &Token) -> Vec<String> {
    let channel = relay.channel(Some(token)).await;
    let page = RemoteServiceClient::new(channel)
        .list_remotes(ListRemotesRequest::default())
        .await
        .unwrap()
        .into_inner();
    page.remotes.into_iter().map(|r| r.name).collect()
}

#[tokio::test]
async fn a_name_belongs_to_the_token_that_registered_it() {
    within(async {
        let relay = lenient_relay().await;
        let mut legit = LegitTransfer::start(&relay).await;
        let owner = relay.token(&["expose:*"]);
        let rival = relay.token(&["expose:*"]);
        let first = relay.session("laptop", &owner).await.unwrap();

        let refused = relay.session("laptop", &rival).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.to_string().contains("belongs to another token"),
            "{refused}"
        );
        legit.more().await;

        // The same token takes the name over: a reconnect.
        let second = relay.session("laptop", &owner).await.unwrap();
        let replaced = first.closed().await;
        assert!(replaced.to_string().contains("replaced"), "{replaced}");

        // Offline, the name stays its owner's.
        second.close();
        second.closed().await;
        let refused = relay.session("laptop", &rival).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);

        // Revoking the owner frees it, once the relay has let the closed session go.
        relay.store.revoke(&SecureRelay::id_of(&owner)).unwrap();
        let mut taken = None;
        for _ in 0..10_000 {
            match relay.session("laptop", &rival).await {
                Ok(session) => {
                    taken = Some(session);
                    break;
                }
                Err(error) if error.code() == Code::AlreadyExists => tokio::task::yield_now().await,
                Err(error) => panic!("{error}"),
            }
        }
        assert!(taken.is_some(), "the rival registers the freed name");
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn revoking_a_token_ends_its_sessions_and_connections_within_a_second() {
    within(async {
        let relay = lenient_relay().await;
        let mut legit = LegitTransfer::start(&relay).await;
        let agent = relay.token(&["expose:doomed"]);
        let client = relay.token(&["connect:doomed"]);
        let session = relay.session("doomed", &agent).await.unwrap();
        let echo = echo_server().await;
        let _forward = session
            .forward(7, Target::new("127.0.0.1", echo.port()))
            .await
            .unwrap();
        let mut conn = relay
            .dialer(&client)
            .await
            .dial(&name("doomed"), 7)
            .await
            .unwrap();
        conn.write_all(b"x").await.unwrap();
        let mut byte = [0];
        conn.read_exact(&mut byte).await.unwrap();

        // Revoking a dialer's token cuts its connections, and no one else's.
        let other = relay.token(&["connect:doomed"]);
        let mut other_conn = relay
            .dialer(&other)
            .await
            .dial(&name("doomed"), 7)
            .await
            .unwrap();
        other_conn.write_all(b"y").await.unwrap();
        other_conn.read_exact(&mut byte).await.unwrap();
        relay.store.revoke(&SecureRelay::id_of(&other)).unwrap();
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(1), other_conn.read_to_end(&mut rest))
            .await
            .expect("the dialer's connection ended within a second of the revocation");
        assert!(
            cut.is_err(),
            "the connection was cut, not ended cleanly: {cut:?}"
        );
        conn.write_all(b"z").await.unwrap();
        conn.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"z", "the other dialer's connection carries on");

        legit.more().await;
        relay.store.revoke(&SecureRelay::id_of(&agent)).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), session.closed())
            .await
            .expect("the session ended within a second of the revocation");
        assert!(ended.to_string().contains("revoked"), "{ended}");
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut rest))
            .await
            .expect("the connection ended within a second of the revocation");
        assert!(
            cut.is_err(),
            "the connection was cut, not ended cleanly: {cut:?}"
        );
        assert_eq!(
            error_code(relay.session("doomed", &agent).await),
            Code::Unauthenticated
        );
        legit.finish().await;
    })
    .await
}

/// An agent speaking the protocol by hand, to present tickets as it likes.
struct RawAgent {
    session_id: String,
    control: mpsc::Sender<OpenSessionRequest>,
    responses: Streaming<OpenSessionResponse>,
    channel: RelayChannel,
}

impl RawAgent {
    /// Registers `remote` with `token` and exposes port 7.
    async fn register(relay: &SecureRelay, remote: &str, token: &Token) -> RawAgent {
        let channel = relay.channel(Some(token)).await;
        let (control, requests) = mpsc::channel(8);
        let opening = hello(&name(remote), "raw", MAX_CHUNK_BYTES, &AgentKey::generate());
        control
            .send(OpenSessionRequest {
                message: Some(open_session_request::Message::Hello(opening)),
            })
            .await
            .unwrap();
        let mut responses = TunnelServiceClient::new(channel.clone())
            .open_session(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(open_session_response::Message::Welcome(welcome)) =
            responses.message().await.unwrap().unwrap().message
        else {
            panic!("no welcome");
        };
        let expose = ExposePort {
            port: Some(ExposedPort {
                port: 7,
                ..Default::default()
            }),
        };
        control
            .send(OpenSessionRequest {
                message: Some(open_session_request::Message::ExposePort(expose)),
            })
            .await
            .unwrap();
        let mut agent = RawAgent {
            session_id: welcome.session_id,
            control,
            responses,
            channel,
        };
        agent.next_message().await;
        agent
    }

    async fn next_message(&mut self) -> open_session_response::Message {
        self.responses
            .message()
            .await
            .unwrap()
            .unwrap()
            .message
            .unwrap()
    }

    /// The ticket of the next dial notice.
    async fn next_ticket(&mut self) -> Vec<u8> {
        loop {
            if let open_session_response::Message::DialNotice(notice) = self.next_message().await {
                return notice.ticket.to_vec();
            }
        }
    }
}

/// Presents `ticket` for `session_id` on `channel`; returns the code and keeps the call open.
async fn present(
    channel: &RelayChannel,
    session_id: &str,
    ticket: &[u8],
) -> Result<Streaming<sesame_proto::v1::AcceptConnectionResponse>, Status> {
    let opening = AcceptConnectionRequest {
        message: Some(accept_connection_request::Message::Ticket(
            ConnectionTicket {
                session_id: session_id.to_owned(),
                ticket: ticket.to_vec().into(),
            },
        )),
    };
    let requests = tokio_stream::iter([opening]).chain(futures_util::stream::pending());
    TunnelServiceClient::new(channel.clone())
        .accept_connection(requests)
        .await
        .map(|response| response.into_inner())
}

#[tokio::test]
async fn guessed_replayed_and_foreign_tickets_are_refused_and_a_silent_agent_times_out() {
    within(async {
        let mut config = RelayConfig::default();
        config.dial_timeout = Duration::from_secs(2);
        let relay = SecureRelay::start_with(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let agent_token = relay.token(&["expose:raw"]);
        let thief_token = relay.token(&["expose:*", "connect:*"]);
        let client = relay.token(&["connect:raw"]);
        let mut agent = RawAgent::register(&relay, "raw", &agent_token).await;
        let thief = relay.channel(Some(&thief_token)).await;

        let dialer = relay.dialer(&client).await;
        let dial = tokio::spawn(async move { dialer.dial(&name("raw"), 7).await });
        let ticket = agent.next_ticket().await;

        let guessed = present(
            &agent.channel,
            &agent.session_id,
            Ticket::generate().as_bytes(),
        )
        .await;
        assert_eq!(code_of(guessed), Code::NotFound, "a guessed ticket");
        let foreign = present(&thief, &agent.session_id, &ticket).await;
        assert_eq!(
            code_of(foreign),
            Code::NotFound,
            "a ticket presented with another token"
        );
        // The real agent's ticket still works after both.
        let _accepted = present(&agent.channel, &agent.session_id, &ticket)
            .await
            .unwrap();
        dial.await.unwrap().expect("the dial went through");
        let replayed = present(&agent.channel, &agent.session_id, &ticket).await;
        assert_eq!(code_of(replayed), Code::NotFound, "a replayed ticket");
        legit.more().await;

        // An agent that never answers: the dialer hears DEADLINE_EXCEEDED.
        let dialer = relay.dialer(&client).await;
        let silent = tokio::spawn(async move { dialer.dial(&name("raw"), 7).await });
        let _ignored = agent.next_ticket().await;
        let timed_out = silent.await.unwrap().unwrap_err();
        assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out}");
        assert!(
            timed_out.to_string().contains("did not answer"),
            "{timed_out}"
        );
        drop(agent.control);
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn oversized_messages_are_refused_and_harm_nobody_else() {
    within(async {
        let relay = lenient_relay().await;
        let mut legit = LegitTransfer::start(&relay).await;
        let client = relay.token(&["connect:*"]);
        let channel = relay.channel(Some(&client)).await;
        let target = DialRequest {
            message: Some(dial_request::Message::Target(DialTarget {
                remote: "remotes/legit".into(),
                port: 7,
            })),
        };
        let huge = DialRequest {
            message: Some(dial_request::Message::Data(
                vec![0; MAX_MESSAGE_BYTES + 1].into(),
            )),
        };
        let requests = tokio_stream::iter([target, huge]).chain(futures_util::stream::pending());
        let outcome = async {
            let mut responses = DialerServiceClient::new(channel.clone())
                .dial(requests)
                .await?
                .into_inner();
            while responses.message().await?.is_some() {}
            Ok::<_, Status>(())
        };
        let refused = outcome.await.unwrap_err();
        assert!(
            matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{refused:?}"
        );
        legit.more().await;
        // A control message past the limit fails that call only.
        let list = ListRemotesRequest {
            page_size: 1,
            page_token: "a".repeat(MAX_MESSAGE_BYTES + 1),
        };
        let refused = RemoteServiceClient::new(channel)
            .list_remotes(list)
            .await
            .unwrap_err();
        assert!(
            matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{refused:?}"
        );
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn an_address_that_fails_too_often_is_locked_out_and_no_other() {
    within(async {
        let mut config = RelayConfig::default();
        config.failed_auth = FailureBudget {
            burst: 3,
            refill: Duration::from_secs(600),
        };
        // Plaintext, so that the attacker can pick its address: the limit is the same.
        let relay = SecureRelay::start_plaintext(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let admin = relay.admin.clone();
        let wrong: Token = "sesame_0123abcd_00112233445566778899aabbccddeeff"
            .parse()
            .unwrap();
        let attacker = |token: Token| relay.channel_from("127.0.0.2", Some(token));
        let list = |channel: RelayChannel| async move {
            code_of(
                RemoteServiceClient::new(channel)
                    .list_remotes(ListRemotesRequest::default())
                    .await,
            )
        };
        for _ in 0..3 {
            assert_eq!(
                list(attacker(wrong.clone()).await).await,
                Code::Unauthenticated
            );
        }
        assert_eq!(
            list(attacker(wrong.clone()).await).await,
            Code::ResourceExhausted
        );
        assert_eq!(
            list(attacker(admin.clone()).await).await,
            Code::ResourceExhausted,
            "a locked-out address is refused whatever it presents"
        );
        legit.more().await;
        assert_eq!(
            list(relay.channel(Some(&admin)).await).await,
            Code::Ok,
            "another address"
        );
        // The relay counts both kinds of refusal for its operator.
        let metrics = relay.metrics.encode();
        let counted = |name: &str| {
            metrics
                .lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        };
        assert_eq!(counted("sesame_relay_auth_failures_total"), 3.0);
        assert_eq!(counted("sesame_relay_throttled_total"), 2.0);
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn limits_on_remotes_per_token_and_connections_per_remote_say_so() {
    within(async {
        let mut config = RelayConfig::default();
        config.max_remotes_per_token = 2;
        config.max_connections_per_remote = 2;
        let relay = SecureRelay::start_with(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let fleet = relay.token(&["expose:*", "connect:*"]);
        let echo = echo_server().await;
        let one = relay.session("one", &fleet).await.unwrap();
        let _two = relay.session("two", &fleet).await.unwrap();
        let third = relay.session("three", &fleet).await.unwrap_err();
        assert_eq!(third.code(), Code::ResourceExhausted, "{third}");
        assert!(third.to_string().contains("2 remotes"), "{third}");
        // A reconnect holds the same name: it does not count twice.
        let one = {
            let again = relay.session("one", &fleet).await.unwrap();
            one.closed().await;
            again
        };
        let _forward = one
            .forward(7, Target::new("127.0.0.1", echo.port()))
            .await
            .unwrap();
        let dialer = relay.dialer(&fleet).await;
        let first = dialer.dial(&name("one"), 7).await.unwrap();
        let _second = dialer.dial(&name("one"), 7).await.unwrap();
        let refused = dialer.dial(&name("one"), 7).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
        assert!(refused.to_string().contains("2 connections"), "{refused}");
        legit.more().await;
        drop(first);
        // The slot comes back once both halves of the connection are gone.
        let mut again = None;
        for _ in 0..100 {
            match dialer.dial(&name("one"), 7).await {
                Ok(conn) => {
                    again = Some(conn);
                    break;
                }
                Err(error) if error.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert!(again.is_some(), "a closed connection gives its slot back");
        legit.finish().await;
    })
    .await
}

#[tokio::test]
async fn a_client_that_never_finishes_its_tls_handshake_is_cut() {
    within(async {
        let mut config = RelayConfig::default();
        config.handshake_timeout = Duration::from_millis(300);
        let relay = SecureRelay::start_with(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let mut silent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let mut plaintext = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        plaintext
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        legit.more().await;
        for stream in [&mut silent, &mut plaintext] {
            let mut rest = Vec::new();
            // The relay closes it: EOF, or a reset.
            let _ = stream.read_to_end(&mut rest).await;
        }
        legit.finish().await;
    })
    .await
}

/// A relay that, once the agent exposes a port, asks it to dial another one.
struct HostileRelay {
    target: u16,
    failures: mpsc::Sender<sesame_proto::v1::DialFailure>,
}

type Responses =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<OpenSessionResponse, Status>> + Send>>;
type DataResponses = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<sesame_proto::v1::AcceptConnectionResponse, Status>>
            + Send,
    >,
>;

#[sesame_tunnel::tonic::async_trait]
impl sesame_proto::v1::tunnel_service_server::TunnelService for HostileRelay {
    type OpenSessionStream = Responses;
    type AcceptConnectionStream = DataResponses;

    async fn open_session(
        &self,
        request: sesame_tunnel::tonic::Request<Streaming<OpenSessionRequest>>,
    ) -> Result<sesame_tunnel::tonic::Response<Responses>, Status> {
        use open_session_response::Message;
        let mut requests = request.into_inner();
        let Some(open_session_request::Message::Hello(hello)) =
            requests.message().await?.and_then(|m| m.message)
        else {
            return Err(Status::invalid_argument("no hello"));
        };
        let (answers, responses) = mpsc::channel(8);
        let welcome = sesame_proto::v1::Welcome {
            protocol_version: hello.protocol_version,
            session_id: "hostile".into(),
            remote: None,
            settings: hello.settings,
        };
        let send = |message| {
            Ok(OpenSessionResponse {
                message: Some(message),
            })
        };
        answers.send(send(Message::Welcome(welcome))).await.unwrap();
        let (target, failures) = (self.target, self.failures.clone());
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                match request.message {
                    Some(open_session_request::Message::ExposePort(expose)) => {
                        let port = expose.port.unwrap_or_default();
                        let _ = answers
                            .send(send(Message::PortExposed(sesame_proto::v1::PortExposed {
                                port: Some(port),
                            })))
                            .await;
                        let notice = sesame_proto::v1::DialNotice {
                            ticket: Ticket::generate().as_bytes().to_vec().into(),
                            port: u32::from(target),
                            dialer: "hostile".into(),
                        };
                        let _ = answers.send(send(Message::DialNotice(notice))).await;
                    }
                    Some(open_session_request::Message::DialFailure(failure)) => {
                        let _ = failures.send(failure).await;
                    }
                    _ => {}
                }
            }
        });
        Ok(sesame_tunnel::tonic::Response::new(Box::pin(
            ReceiverStream::new(responses),
        )))
    }

    async fn accept_connection(
        &self,
        _request: sesame_tunnel::tonic::Request<Streaming<AcceptConnectionRequest>>,
    ) -> Result<sesame_tunnel::tonic::Response<DataResponses>, Status> {
        Err(Status::unimplemented("a hostile relay takes no connection"))
    }
}

#[tokio::test]
async fn an_agent_refuses_to_dial_a_port_it_did_not_expose() {
    within(async {
        // A service on this machine that the agent was never told to expose.
        let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let private_port = private.local_addr().unwrap().port();
        let (failures, mut failed) = mpsc::channel(4);
        let hostile = HostileRelay {
            target: private_port,
            failures,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            sesame_tunnel::tonic::transport::Server::builder()
                .add_service(
                    sesame_proto::v1::tunnel_service_server::TunnelServiceServer::new(hostile),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let echo = echo_server().await;
        let session = sesame_tunnel::Session::builder(name("victim"))
            .relay(
                format!("http://{addr}")
                    .parse::<sesame_tunnel::RelayUrl>()
                    .unwrap(),
            )
            .no_reconnect()
            .connect()
            .await
            .unwrap();
        let _forward = session
            .forward(7, Target::new("127.0.0.1", echo.port()))
            .await
            .unwrap();

        let failure = failed.recv().await.expect("the agent answered the dial");
        let status = failure.status.unwrap();
        assert_eq!(Code::from_i32(status.code), Code::NotFound, "{status:?}");
        assert!(
            status.message.contains(&format!("port {private_port}")),
            "{status:?}"
        );
        // Refused before anything was dialed: the private service saw no connection.
        let pending = tokio::time::timeout(Duration::ZERO, private.accept()).await;
        assert!(
            pending.is_err(),
            "the agent connected to a port it did not expose"
        );
    })
    .await
}
