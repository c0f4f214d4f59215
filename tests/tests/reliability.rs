//! Losing and finding the relay again: agents reconnect by themselves and keep their names
//! and ports, dead peers are noticed within the keepalive bound, a new session of the same
//! agent replaces its stale one, and a draining relay lets open connections finish.

use std::sync::Arc;
use std::time::Duration;

use sesame_relay::RelayConfig;
use sesame_tests::*;
use sesame_tunnel::{Error, Event, Reconnect, RelayUrl, Session, TransportSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

/// Quick retries, so that the tests spend their time on what they check.
fn quick_retries() -> Reconnect {
    Reconnect::new(Duration::from_millis(20), Duration::from_millis(200))
}

/// An agent session that dials `relay` afresh on every reconnect.
async fn agent(relay: &RelayUrl, remote: &str, transport: TransportSettings) -> Session {
    Session::builder(name(remote))
        .relay(relay.clone())
        .transport(transport)
        .reconnect(quick_retries())
        .connect()
        .await
        .unwrap()
}

/// Waits for the first event that `wanted` accepts, skipping the others.
async fn wait_for_event(events: &mut broadcast::Receiver<Event>, wanted: impl Fn(&Event) -> bool) {
    loop {
        match events.recv().await {
            Ok(event) if wanted(&event) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => panic!("the session's events ended"),
        }
    }
}

/// Sends `len` random bytes through an echo and checks that they come back byte-exact.
async fn echo_round_trip(relay: &TestRelay, remote: &str, port: u16, len: usize) {
    let mut conn = relay
        .dialer()
        .await
        .dial(&name(remote), port)
        .await
        .unwrap();
    let data = Arc::new(random_bytes(len));
    let (mut reader, writer) = tokio::io::split(&mut conn);
    let sent = data.clone();
    let (written, (count, hash)) = tokio::join!(write_then_shutdown(writer, &sent), async {
        hash_to_end(&mut reader).await.unwrap()
    });
    written.unwrap();
    assert_eq!((count, hash), (len as u64, sha256(&data)));
}

#[tokio::test]
async fn an_agent_drained_by_its_relay_comes_back_to_the_successor_with_its_ports() {
    within(async {
        let mut old = TestRelay::start().await;
        let session = agent(old.url(), "phoenix", TransportSettings::default()).await;
        echo_listener(&session, 7).await;
        echo_round_trip(&old, "phoenix", 7, 1 << 20).await;
        let mut events = session.events();

        let addr = old.addr();
        old.begin_stop();
        wait_for_event(&mut events, |e| matches!(e, Event::Draining { .. })).await;
        wait_for_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
        old.stop().await;

        let successor = TestRelay::start_at(addr, RelayConfig::default()).await;
        wait_for_event(&mut events, |e| *e == Event::Reconnected).await;
        // The listener taken before the restart serves the new relay's dials.
        echo_round_trip(&successor, "phoenix", 7, 4 << 20).await;
        assert!(session.id().is_some());
    })
    .await
}

#[tokio::test]
async fn the_agent_retries_with_backoff_while_the_relay_is_away() {
    within(async {
        let relay = TestRelay::start().await;
        let addr = relay.addr();
        let session = agent(relay.url(), "patient", TransportSettings::default()).await;
        let mut events = session.events();
        relay.stop().await;

        // Nothing listens: each attempt fails, and the delays grow.
        let mut delays = Vec::new();
        while delays.len() < 4 {
            match events.recv().await.unwrap() {
                Event::Reconnecting {
                    delay,
                    error: Some(error),
                } => {
                    assert_eq!(error, "connection refused");
                    delays.push(delay);
                }
                _ => continue,
            }
        }
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(200)),
            "{delays:?}"
        );
        assert!(delays[3] > delays[0], "the delays do not grow: {delays:?}");
        assert_eq!(session.id(), None);

        let _back = TestRelay::start_at(addr, RelayConfig::default()).await;
        wait_for_event(&mut events, |e| *e == Event::Reconnected).await;
    })
    .await
}

#[tokio::test]
async fn a_connection_that_finishes_within_the_grace_period_loses_nothing() {
    within(async {
        let mut config = RelayConfig::default();
        config.grace_period = Duration::from_secs(30);
        let mut relay = TestRelay::start_with(config).await;
        let session = relay.session("graceful").await;
        echo_listener(&session, 7).await;
        let mut conn = relay
            .dialer()
            .await
            .dial(&name("graceful"), 7)
            .await
            .unwrap();
        conn.write_all(b"open").await.unwrap();
        conn.read_exact(&mut [0; 4]).await.unwrap();

        relay.begin_stop();
        let mut events = session.events();
        wait_for_event(&mut events, |e| matches!(e, Event::Draining { .. })).await;
        // The connection was open before the drain: 16 MiB each way still arrive whole.
        const LEN: usize = 16 << 20;
        let data = Arc::new(random_bytes(LEN));
        let (mut reader, writer) = tokio::io::split(&mut conn);
        let sent = data.clone();
        let (written, received) =
            tokio::join!(write_then_shutdown(writer, &sent), hash_to_end(&mut reader));
        written.unwrap();
        assert_eq!(received.unwrap(), (LEN as u64, sha256(&data)));
        drop(conn);
        // With the last connection done, the relay stops well before its grace period.
        tokio::time::timeout(Duration::from_secs(20), relay.stop())
            .await
            .expect("the relay waited out its grace period with nothing open");
    })
    .await
}

#[tokio::test]
async fn an_agent_notices_a_silent_relay_and_replaces_its_stale_session_at_once() {
    within(async {
        // The relay would take a minute to notice; the agent, a second.
        let mut config = RelayConfig::default();
        config.transport =
            TransportSettings::default().with_dead_peer_timeout(Duration::from_secs(60));
        let relay = TestRelay::start_with(config).await;
        let proxy = FreezingProxy::start(relay.addr()).await;
        let quick = TransportSettings::default().with_dead_peer_timeout(Duration::from_secs(1));
        let session = agent(&proxy.url(), "sleeper", quick).await;
        echo_listener(&session, 7).await;
        let stale = session.id().unwrap();
        let mut events = session.events();

        proxy.freeze();
        let started = tokio::time::Instant::now();
        wait_for_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
        let noticed = started.elapsed();
        assert!(
            noticed < Duration::from_secs(5),
            "noticed only after {noticed:?}"
        );

        // The relay still holds the name for the stale session, yet the agent gets it back.
        wait_for_event(&mut events, |e| *e == Event::Reconnected).await;
        assert_ne!(session.id().unwrap(), stale);
        echo_round_trip(&relay, "sleeper", 7, 1 << 20).await;

        // A different agent still cannot take the name.
        let rival = Session::builder(name("sleeper"))
            .relay(relay.url().clone())
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(rival, Error::NameInUse { .. }), "{rival}");
    })
    .await
}

#[tokio::test]
async fn a_relay_forgets_an_agent_that_goes_silent() {
    within(async {
        let mut config = RelayConfig::default();
        config.transport =
            TransportSettings::default().with_dead_peer_timeout(Duration::from_secs(1));
        let relay = TestRelay::start_with(config).await;
        let proxy = FreezingProxy::start(relay.addr()).await;
        let patient = TransportSettings::default().with_dead_peer_timeout(Duration::from_secs(60));
        let session = agent(&proxy.url(), "ghost", patient).await;
        echo_listener(&session, 7).await;
        let dialer = relay.dialer().await;
        dialer.dial(&name("ghost"), 7).await.unwrap();

        proxy.freeze();
        let started = tokio::time::Instant::now();
        loop {
            match dialer.dial(&name("ghost"), 7).await {
                Err(Error::RemoteNotFound { .. }) => break,
                // Until then the dial waits for an agent that cannot answer, and times out.
                _ => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the relay never forgot the silent agent"
                ),
            }
        }
        let noticed = started.elapsed();
        assert!(
            noticed < Duration::from_secs(12),
            "noticed only after {noticed:?}"
        );
    })
    .await
}
