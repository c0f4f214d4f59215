//! Attacks by hostile token holders, each against a relay started here and each beside a
//! legitimate client whose transfer must come back byte for byte: taking over another
//! token's public TCP port while its remote is away, reading names through ListRemotes'
//! page tokens, exposing ports without end, and claiming names without end.

use std::collections::BTreeSet;
use std::time::Duration;

use sesame_proto::v1::ListRemotesRequest;
use sesame_proto::v1::remote_service_client::RemoteServiceClient;
use sesame_relay::{RelayConfig, TokenStore};
use sesame_tests::process::scratch_dir;
use sesame_tests::public::{PublicRelay, echoes_exactly, free_port_range, public_port};
use sesame_tests::{LegitTransfer, SecureRelay, echo_server, name, random_bytes, within};
use sesame_tunnel::tonic::Code;
use sesame_tunnel::{Error, Publish, RelayAccess, Session, Target, TcpPublish, Token, Trust};

const MIB: usize = 1 << 20;

/// A new token of `store` with these scopes.
fn token(store: &TokenStore, scopes: &[&str]) -> Token {
    let scopes = scopes.iter().map(|s| s.parse().unwrap()).collect();
    let (_, secret) = store.create(scopes, "test".into(), None).unwrap();
    secret.parse().unwrap()
}

/// A session of remote `remote` on `relay`, with `token`, that does not reconnect.
async fn agent(relay: &PublicRelay, remote: &str, token: &Token) -> Result<Session, Error> {
    let access = RelayAccess::new(relay.url.clone(), Trust::SystemRoots, Some(token.clone()));
    Session::builder(name(remote))
        .relay(access)
        .no_reconnect()
        .connect()
        .await
}

/// Publishing on any free TCP port, or on `port`.
fn tcp(port: Option<u16>) -> Publish {
    let tcp = TcpPublish::any_port();
    Publish::none().tcp(match port {
        Some(port) => tcp.port(port),
        None => tcp,
    })
}

/// A relay whose sessions end quickly when it stops.
fn quick() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.grace_period = Duration::from_secs(1);
    config
}

/// Asks for `port` for `thief` until the relay has seen its holder go, which it then holds
/// for that holder's token: the answer moves from "taken" to "held", and is never a yes.
async fn refused_while_held(thief: &Session, port: u16, target: Target) {
    for _ in 0..2_000 {
        let error = match thief
            .forward_with(22, target.clone(), tcp(Some(port)))
            .await
        {
            Ok(_) => panic!("another token's remote took TCP port {port}"),
            Err(error) => error.to_string(),
        };
        if error.contains("is held for another remote") {
            return;
        }
        assert!(error.contains("is taken by another remote"), "{error}");
        tokio::task::yield_now().await;
    }
    panic!("the relay never saw the holder of TCP port {port} go");
}

#[tokio::test]
async fn a_public_tcp_port_stays_with_its_token_through_drops_and_restarts() {
    within(async {
        let dir = scratch_dir();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (owner, intruder) = (
            token(&store, &["expose:victim"]),
            token(&store, &["expose:thief"]),
        );
        let range = free_port_range(3).await;
        let relay = PublicRelay::start_with_tokens(quick(), range.clone(), store).await;
        let echo = echo_server().await;
        let target = || Target::new("127.0.0.1", echo.port());

        let victim = agent(&relay, "victim", &owner).await.unwrap();
        let forward = victim.forward_with(22, target(), tcp(None)).await.unwrap();
        let port = public_port(&victim, 22);
        echoes_exactly(port, random_bytes(MIB)).await;

        // The thief asks for the port while the victim has it, and after its link drops.
        let thief = agent(&relay, "thief", &intruder).await.unwrap();
        drop(forward);
        victim.close();
        refused_while_held(&thief, port, target()).await;
        // Any free port it may have, but not that one.
        let _any = thief.forward_with(23, target(), tcp(None)).await.unwrap();
        assert_ne!(public_port(&thief, 23), port);

        // The victim comes back to its port, and its clients reach it again.
        let victim = agent(&relay, "victim", &owner).await.unwrap();
        let _forward = victim.forward_with(22, target(), tcp(None)).await.unwrap();
        assert_eq!(public_port(&victim, 22), port);
        echoes_exactly(port, random_bytes(MIB)).await;

        // The relay restarts while the victim is away: the port is still held for it.
        victim.close();
        thief.close();
        relay.stop().await;
        let store = TokenStore::open(dir.path()).unwrap().store;
        let relay = PublicRelay::start_with_tokens(quick(), range.clone(), store).await;
        let thief = agent(&relay, "thief", &intruder).await.unwrap();
        refused_while_held(&thief, port, target()).await;
        let victim = agent(&relay, "victim", &owner).await.unwrap();
        let _forward = victim.forward_with(22, target(), tcp(None)).await.unwrap();
        assert_eq!(public_port(&victim, 22), port);
        echoes_exactly(port, random_bytes(MIB)).await;
    })
    .await;
}

#[tokio::test]
async fn a_session_and_a_token_expose_a_limited_number_of_ports() {
    within(async {
        let dir = scratch_dir();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (greedy, honest) = (
            token(&store, &["expose:greedy-*"]),
            token(&store, &["expose:honest"]),
        );
        let mut config = quick();
        config.max_ports_per_session = 3;
        config.max_tcp_ports_per_token = 2;
        let range = free_port_range(4).await;
        let relay = PublicRelay::start_with_tokens(config, range, store).await;
        let echo = echo_server().await;
        let target = || Target::new("127.0.0.1", echo.port());

        let first = agent(&relay, "greedy-1", &greedy).await.unwrap();
        let mut forwards = Vec::new();
        for port in [12, 13] {
            forwards.push(first.forward_with(port, target(), tcp(None)).await.unwrap());
        }
        let error = first
            .forward_with(14, target(), tcp(None))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("already holds 2 public TCP ports"),
            "{error}"
        );
        // The same token's other remotes share its ports.
        let second = agent(&relay, "greedy-2", &greedy).await.unwrap();
        let error = second
            .forward_with(12, target(), tcp(None))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("2 public TCP ports"), "{error}");
        // Ports without public endpoints count against the session's own limit.
        forwards.push(first.forward(15, target()).await.unwrap());
        let error = first.forward(16, target()).await.unwrap_err();
        assert!(
            error.to_string().contains("already exposes 3 ports"),
            "{error}"
        );

        // Another token's remote still gets a port, and its clients their bytes.
        let honest = agent(&relay, "honest", &honest).await.unwrap();
        let _honest = honest.forward_with(7, target(), tcp(None)).await.unwrap();
        echoes_exactly(public_port(&honest, 7), random_bytes(MIB)).await;
        echoes_exactly(public_port(&first, 12), random_bytes(MIB)).await;
    })
    .await;
}

#[tokio::test]
async fn names_are_claimed_within_the_limits_and_no_further() {
    within(async {
        let mut config = RelayConfig::default();
        config.max_remotes_per_token = 2;
        config.max_names_per_token = 3;
        let relay = SecureRelay::start_with(config).await;
        let mut legit = LegitTransfer::start(&relay).await;
        let cams = relay.token(&["expose:cam-*"]);
        let id = SecureRelay::id_of(&cams);
        let owned = || relay.store.get(&id).unwrap().owned_names;

        let cam0 = relay.session("cam-0", &cams).await.unwrap();
        let _cam1 = relay.session("cam-1", &cams).await.unwrap();
        // At its limit of remotes, the token claims no new name.
        let refused = relay.session("cam-2", &cams).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
        assert_eq!(owned(), ["cam-0", "cam-1"]);
        legit.more().await;

        // With a remote gone it claims a third name, and then no fourth.
        cam0.close();
        let mut cam2 = None;
        for _ in 0..2_000 {
            match relay.session("cam-2", &cams).await {
                Ok(session) => {
                    cam2 = Some(session);
                    break;
                }
                Err(error) => assert_eq!(error.code(), Code::ResourceExhausted, "{error}"),
            }
        }
        let cam2 = cam2.expect("the relay never saw cam-0 go");
        assert_eq!(owned(), ["cam-0", "cam-1", "cam-2"]);
        cam2.close();
        let mut refused = None;
        for _ in 0..2_000 {
            let error = relay.session("cam-3", &cams).await.unwrap_err();
            if error.to_string().contains("owns 3 remote names") {
                refused = Some(error);
                break;
            }
            // Until the relay has seen cam-2 go, the token is at its limit of remotes.
            assert!(error.to_string().contains("2 remotes"), "{error}");
        }
        let refused = refused.expect("the relay never saw cam-2 go");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(owned(), ["cam-0", "cam-1", "cam-2"]);
        // Its own names it still has.
        let _cam0 = relay.session("cam-0", &cams).await.unwrap();
        legit.finish().await;
    })
    .await;
}

/// Every page of ListRemotes for `token`, with their tokens.
async fn pages(relay: &SecureRelay, token: &Token, size: i32) -> Vec<(Vec<String>, String)> {
    let mut remotes = RemoteServiceClient::new(relay.channel(Some(token)).await);
    let mut pages = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let request = ListRemotesRequest {
            page_size: size,
            page_token,
        };
        let page = remotes.list_remotes(request).await.unwrap().into_inner();
        let names = page.remotes.into_iter().map(|r| r.name).collect();
        pages.push((names, page.next_page_token.clone()));
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
    panic!("ListRemotes never ended");
}

#[tokio::test]
async fn list_pages_show_only_what_the_caller_may_see_and_tokens_cannot_be_forged() {
    within(async {
        let relay = SecureRelay::start().await;
        let mut legit = LegitTransfer::start(&relay).await;
        let agents = relay.token(&["expose:*"]);
        let mut sessions = Vec::new();
        for n in 0..5 {
            for side in ["a", "b"] {
                let session = relay
                    .session(&format!("n{n}{side}"), &agents)
                    .await
                    .unwrap();
                sessions.push(session);
            }
        }
        let reader = relay.token(&["connect:n*a"]);
        let pages = pages(&relay, &reader, 2).await;
        let shown: Vec<String> = pages.iter().flat_map(|(names, _)| names.clone()).collect();
        let expected: Vec<String> = (0..5).map(|n| format!("remotes/n{n}a")).collect();
        assert_eq!(shown, expected, "everything it may see, in order, once");
        let (last, full) = pages.split_last().unwrap();
        assert!(full.iter().all(|(names, _)| names.len() == 2), "{pages:?}");
        assert!(last.1.is_empty() && !last.0.is_empty(), "{pages:?}");
        for (_, page_token) in full {
            // Sealed: hex digits only, no name in sight.
            let opaque = page_token.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(opaque, "{page_token}");
        }
        legit.more().await;

        // A token changed to start elsewhere, or another caller's, is refused.
        let genuine = full[0].1.clone();
        let mut changed = genuine.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).unwrap();
        let other = relay.token(&["connect:*"]);
        for (caller, page_token) in [
            (&reader, changed),
            (&reader, "n2b".to_owned()),
            (&other, genuine.clone()),
        ] {
            let mut client = RemoteServiceClient::new(relay.channel(Some(caller)).await);
            let request = ListRemotesRequest {
                page_size: 2,
                page_token,
            };
            let status = client.list_remotes(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        // Seen from a caller that may see everything, every name is there.
        let everything: BTreeSet<String> = pages_of(&relay, &other).await;
        assert_eq!(everything.len(), 11, "ten remotes and the legitimate one");
        drop(sessions);
        legit.finish().await;
    })
    .await;
}

/// The names on every page of ListRemotes for `token`.
async fn pages_of(relay: &SecureRelay, token: &Token) -> BTreeSet<String> {
    let pages = pages(relay, token, 3).await;
    pages.into_iter().flat_map(|(names, _)| names).collect()
}
