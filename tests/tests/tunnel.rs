//! Relay, agent and dialer in one process, over real loopback TCP: bytes arrive whole and in
//! order, directions close independently, slow readers slow only themselves, and every bad
//! request gets a clear error without disturbing anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use sesame_tests::*;
use std::time::Duration;

use sesame_relay::RelayConfig;
use sesame_tunnel::{Error, Event, Target, TransportSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

#[tokio::test]
async fn echo_through_an_in_process_listener() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("echo").await;
        echo_listener(&session, 7).await;

        let mut conn = relay.dialer().await.dial(&name("echo"), 7).await.unwrap();
        assert_eq!(conn.info().port(), 7);
        conn.write_all(b"hello through the tunnel").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut echoed = String::new();
        conn.read_to_string(&mut echoed).await.unwrap();
        assert_eq!(echoed, "hello through the tunnel");
    })
    .await
}

#[tokio::test]
async fn sixty_four_mib_each_way_arrive_byte_exact() {
    within(async {
        const LEN: usize = 64 << 20;
        let relay = TestRelay::start().await;
        let from_target = Arc::new(random_bytes(LEN));
        let served = from_target.clone();
        // The target sends its 64 MiB while it receives the dialer's, and reports what it got
        // by sending nothing else: the dialer checks its hash of the target's data, and the
        // target's hash of the dialer's data comes back through a channel.
        let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let target = serve_tcp(move |stream| {
            let (served, report) = (served.clone(), report.clone());
            async move {
                let (reader, writer) = stream.into_split();
                let (received, sent) =
                    tokio::join!(hash_to_end(reader), write_then_shutdown(writer, &served));
                sent?;
                let _ = report.send(received?);
                Ok(())
            }
        })
        .await;

        let session = relay.session("bulk").await;
        let _forward = session
            .forward(9000, Target::new("127.0.0.1", target.port()))
            .await
            .unwrap();
        let conn = relay
            .dialer()
            .await
            .dial(&name("bulk"), 9000)
            .await
            .unwrap();
        let to_target = random_bytes(LEN);
        let (reader, writer) = tokio::io::split(conn);
        let (received, sent) =
            tokio::join!(hash_to_end(reader), write_then_shutdown(writer, &to_target));
        sent.unwrap();
        assert_eq!(
            received.unwrap(),
            (LEN as u64, sha256(&from_target)),
            "target to dialer"
        );
        assert_eq!(
            reports.recv().await.unwrap(),
            (LEN as u64, sha256(&to_target)),
            "dialer to target"
        );

        let stats = session.stats();
        assert_eq!((stats.bytes_in, stats.bytes_out), (LEN as u64, LEN as u64));
    })
    .await
}

#[tokio::test]
async fn two_hundred_concurrent_connections_each_byte_exact() {
    within(async {
        const CONNECTIONS: usize = 200;
        let relay = TestRelay::start().await;
        let target = echo_server().await;
        let session = relay.session("busy").await;
        let _forward = session
            .forward(80, Target::new("127.0.0.1", target.port()))
            .await
            .unwrap();
        let dialer = relay.dialer().await;
        // Every connection is open before any sends: all 200 are live at once.
        let all_open = Arc::new(Barrier::new(CONNECTIONS));
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let (dialer, all_open) = (dialer.clone(), all_open.clone());
                tokio::spawn(async move {
                    let conn = dialer.dial(&name("busy"), 80).await.unwrap();
                    all_open.wait().await;
                    let data = random_bytes(32 << 10 | i);
                    let (reader, writer) = tokio::io::split(conn);
                    let (echoed, sent) =
                        tokio::join!(hash_to_end(reader), write_then_shutdown(writer, &data));
                    sent.unwrap();
                    assert_eq!(
                        echoed.unwrap(),
                        (data.len() as u64, sha256(&data)),
                        "connection {i}"
                    );
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(session.stats().connections_total, CONNECTIONS as u64);
    })
    .await
}

#[tokio::test]
async fn the_dialer_half_closes_and_still_reads_the_whole_reply() {
    within(async {
        let relay = TestRelay::start().await;
        // The target reads the whole request, then answers with a reply far larger than any
        // buffer on the way, then closes.
        let reply = Arc::new(random_bytes(8 << 20));
        let served = reply.clone();
        let target = serve_tcp(move |mut stream| {
            let served = served.clone();
            async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await?;
                assert_eq!(request, b"the whole request");
                write_then_shutdown(stream, &served).await
            }
        })
        .await;
        let session = relay.session("half").await;
        let _forward = session
            .forward(1, Target::new("127.0.0.1", target.port()))
            .await
            .unwrap();

        let mut conn = relay.dialer().await.dial(&name("half"), 1).await.unwrap();
        conn.write_all(b"the whole request").await.unwrap();
        conn.shutdown().await.unwrap();
        assert_eq!(
            hash_to_end(&mut conn).await.unwrap(),
            (reply.len() as u64, sha256(&reply))
        );
    })
    .await
}

#[tokio::test]
async fn the_target_half_closes_and_still_reads_the_whole_upload() {
    within(async {
        let relay = TestRelay::start().await;
        let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
        // The target greets and shuts its write side at once, then reads the upload.
        let target = serve_tcp(move |stream| {
            let report = report.clone();
            async move {
                let (reader, writer) = stream.into_split();
                write_then_shutdown(writer, b"send me everything").await?;
                let _ = report.send(hash_to_end(reader).await?);
                Ok(())
            }
        })
        .await;
        let session = relay.session("upload").await;
        let _forward = session
            .forward(2, Target::new("127.0.0.1", target.port()))
            .await
            .unwrap();

        let mut conn = relay.dialer().await.dial(&name("upload"), 2).await.unwrap();
        let mut greeting = String::new();
        conn.read_to_string(&mut greeting).await.unwrap();
        assert_eq!(greeting, "send me everything");
        let upload = random_bytes(8 << 20);
        write_then_shutdown(&mut conn, &upload).await.unwrap();
        assert_eq!(
            reports.recv().await.unwrap(),
            (upload.len() as u64, sha256(&upload))
        );
    })
    .await
}

#[tokio::test]
async fn a_stalled_reader_holds_bounded_memory_and_stalls_nobody_else() {
    within(async {
        const STALLED_TOTAL: usize = 64 << 20;
        const BULK: usize = 64 << 20;
        // What one connection may hold in flight: the writer's buffer, one HTTP/2 stream
        // window on each of its two hops (agent to relay, relay to dialer), and a chunk or so
        // in the encoders on the way; 1 MiB covers those. Far below what the writer offers.
        let settings = TransportSettings::default();
        let bound =
            2 * u64::from(settings.stream_window) + settings.write_buffer as u64 + (1 << 20);

        let relay = TestRelay::start().await;
        let session = relay.session("two-conns").await;

        // Port 1: the agent writes 64 MiB to a dialer that reads nothing (yet).
        let stalled_data = Arc::new(random_bytes(STALLED_TOTAL));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut stalled_listener = session.listen(1).await.unwrap();
        let (data, counter) = (stalled_data.clone(), accepted.clone());
        let stalled_writer = tokio::spawn(async move {
            let mut conn = stalled_listener.next().await.unwrap().unwrap();
            for piece in data.chunks(16 << 10) {
                conn.write_all(piece).await.unwrap();
                counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            conn.shutdown().await.unwrap();
        });
        // Port 2: an ordinary bulk transfer, agent to dialer.
        let bulk_data = Arc::new(random_bytes(BULK));
        let mut bulk_listener = session.listen(2).await.unwrap();
        let data = bulk_data.clone();
        tokio::spawn(async move {
            let conn = bulk_listener.next().await.unwrap().unwrap();
            write_then_shutdown(conn, &data).await.unwrap();
        });

        // Both connections share the dialer's HTTP/2 connection and the agent's.
        let dialer = relay.dialer().await;
        let mut stalled = dialer.dial(&name("two-conns"), 1).await.unwrap();
        let bulk = dialer.dial(&name("two-conns"), 2).await.unwrap();
        assert_eq!(
            hash_to_end(bulk).await.unwrap(),
            (BULK as u64, sha256(&bulk_data))
        );

        let in_flight = accepted.load(Ordering::SeqCst);
        assert!(
            !stalled_writer.is_finished(),
            "the stalled writer must be held back"
        );
        assert!(
            in_flight <= bound,
            "{in_flight} bytes in flight for a stalled reader, bound {bound}"
        );
        eprintln!("a stalled reader held {} KiB in flight", in_flight >> 10);

        // Once the reader reads, everything arrives, in order.
        let received = hash_to_end(&mut stalled).await.unwrap();
        assert_eq!(received, (STALLED_TOTAL as u64, sha256(&stalled_data)));
        stalled_writer.await.unwrap();
    })
    .await
}

#[tokio::test]
async fn unknown_remotes_and_ports_are_not_found() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("known").await;
        echo_listener(&session, 22).await;
        let dialer = relay.dialer().await;

        let err = dialer.dial(&name("unknown"), 22).await.unwrap_err();
        assert!(
            matches!(&err, Error::RemoteNotFound { name } if name == "unknown"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), r#"no remote named "unknown""#);

        let err = dialer.dial(&name("known"), 23).await.unwrap_err();
        assert!(
            matches!(err, Error::PortNotExposed { port: 23, .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), r#"remote "known" does not expose port 23"#);
    })
    .await
}

#[tokio::test]
async fn a_refused_target_fails_that_dial_only() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("mixed").await;
        let mut events = session.events();
        let dead = closed_port().await;
        let _dead = session
            .forward(5, Target::new("127.0.0.1", dead))
            .await
            .unwrap();
        let alive = echo_server().await;
        let _alive = session
            .forward(6, Target::new("127.0.0.1", alive.port()))
            .await
            .unwrap();
        let dialer = relay.dialer().await;

        let err = dialer.dial(&name("mixed"), 5).await.unwrap_err();
        match &err {
            Error::TargetRefused { reason } => {
                assert_eq!(reason, &format!("127.0.0.1:{dead}: connection refused"))
            }
            other => panic!("expected a refused target, got {other:?}"),
        }
        assert!(err.to_string().starts_with("target refused: "), "{err}");
        assert!(matches!(
            events.recv().await.unwrap(),
            Event::DialFailed { port: 5, .. }
        ));

        // The agent, the relay and the dialer's connection all carry on.
        let mut conn = dialer.dial(&name("mixed"), 6).await.unwrap();
        conn.write_all(b"still here").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        conn.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"still here");
        assert_eq!(session.stats().dials_failed, 1);
    })
    .await
}

#[tokio::test]
async fn a_second_agent_cannot_take_a_name_in_use() {
    within(async {
        let relay = TestRelay::start().await;
        let first = relay.session("taken").await;
        echo_listener(&first, 1).await;

        let err = relay.try_session("taken").await.unwrap_err();
        assert!(
            matches!(&err, Error::NameInUse { name } if name == "taken"),
            "{err:?}"
        );
        assert_eq!(err.code(), sesame_tunnel::tonic::Code::AlreadyExists);

        // The first agent keeps the name and keeps serving.
        let mut conn = relay.dialer().await.dial(&name("taken"), 1).await.unwrap();
        conn.write_all(b"mine").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        conn.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"mine");

        // Once the first leaves, the name is free again.
        first.close();
        let reason = first.closed().await;
        assert!(
            reason.to_string().contains("closed the session"),
            "{reason}"
        );
        let mut retry = relay.try_session("taken").await;
        for _ in 0..100 {
            if retry.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
            retry = relay.try_session("taken").await;
        }
        retry.expect("the name is free once its holder has gone");
    })
    .await
}

#[tokio::test]
async fn a_departed_agent_fails_dials_and_leaves_the_list() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("leaving").await;
        echo_listener(&session, 1).await;
        let dialer = relay.dialer().await;
        dialer.dial(&name("leaving"), 1).await.unwrap();

        session.close();
        // The relay notices the end of the control stream; from then on the name is unknown.
        let mut last = None;
        for _ in 0..1000 {
            match dialer.dial(&name("leaving"), 1).await {
                Err(Error::RemoteNotFound { .. }) => {
                    last = None;
                    break;
                }
                other => last = Some(format!("{other:?}")),
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(last, None, "the departed agent was never forgotten");
    })
    .await
}

#[tokio::test]
async fn listeners_and_forwards_refuse_a_port_twice() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("twice").await;
        let _listener = session.listen(3).await.unwrap();
        let err = session.forward(3, Target::local(3)).await.unwrap_err();
        assert!(matches!(err, Error::PortInUse { port: 3 }), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn a_dropped_listener_withdraws_its_port() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("withdraw").await;
        let listener = session.listen(4).await.unwrap();
        echo_listener(&session, 5).await;
        drop(listener);
        // The withdrawal travels on the control stream ahead of anything the next expose
        // sends, so once port 6 is confirmed, port 4 is gone.
        let _six = session.listen(6).await.unwrap();
        let err = relay
            .dialer()
            .await
            .dial(&name("withdraw"), 4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PortNotExposed { port: 4, .. }),
            "{err:?}"
        );
        relay
            .dialer()
            .await
            .dial(&name("withdraw"), 5)
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn a_target_reset_reaches_the_dialer_as_an_error_not_an_end() {
    within(async {
        let relay = TestRelay::start().await;
        // The target reads a greeting, then resets the connection.
        let target = serve_tcp(|mut stream| async move {
            let mut greeting = [0; 5];
            stream.read_exact(&mut greeting).await?;
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO))?;
            Ok(())
        })
        .await;
        let session = relay.session("resets").await;
        let _forward = session
            .forward(9, Target::new("127.0.0.1", target.port()))
            .await
            .unwrap();
        let mut conn = relay.dialer().await.dial(&name("resets"), 9).await.unwrap();
        conn.write_all(b"hello").await.unwrap();
        let err = conn.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("the remote reset the connection: 127.0.0.1:"),
            "{message}"
        );
    })
    .await
}

#[tokio::test]
async fn a_full_listener_backlog_refuses_and_a_dropped_listener_resets_it() {
    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("backlog").await;
        let listener = session.listen(7).await.unwrap();
        let dialer = relay.dialer().await;
        // Nobody takes connections from the listener: its backlog of 128 fills up.
        let mut queued = Vec::new();
        for _ in 0..128 {
            queued.push(dialer.dial(&name("backlog"), 7).await.unwrap());
        }
        let err = dialer.dial(&name("backlog"), 7).await.unwrap_err();
        assert_eq!(err.code(), sesame_tunnel::tonic::Code::Unavailable);
        assert_eq!(
            err.to_string(),
            "port 7's listener is not taking connections"
        );

        // Dropping the listener refuses what it never took.
        drop(listener);
        let err = queued[0].read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the remote reset the connection: the listener closed"
        );
    })
    .await
}

#[tokio::test]
async fn the_relay_cuts_connections_still_open_after_its_grace_period() {
    within(async {
        let mut config = RelayConfig::default();
        config.grace_period = Duration::from_millis(200);
        let relay = TestRelay::start_with(config).await;
        let session = relay.session("lingering").await;
        echo_listener(&session, 1).await;
        let mut conn = relay
            .dialer()
            .await
            .dial(&name("lingering"), 1)
            .await
            .unwrap();
        conn.write_all(b"x").await.unwrap();
        conn.read_exact(&mut [0; 1]).await.unwrap();

        relay.stop().await;
        let err = conn.read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        assert_eq!(err.to_string(), "the relay shut down");
    })
    .await
}

#[tokio::test]
async fn a_burst_of_dials_beyond_the_notice_queue_waits_for_room_rather_than_failing() {
    within(async {
        let mut config = RelayConfig::default();
        config.control_queue = 1;
        let relay = TestRelay::start_with(config).await;
        let session = relay.session("busy").await;
        echo_listener(&session, 7).await;
        let dialer = relay.dialer().await;
        let dials = (0..64).map(|n| {
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let mut conn = dialer
                    .dial(&name("busy"), 7)
                    .await
                    .map_err(|e| e.to_string())?;
                let message = format!("dial {n}");
                conn.write_all(message.as_bytes()).await.unwrap();
                conn.shutdown().await.unwrap();
                let mut echoed = String::new();
                conn.read_to_string(&mut echoed).await.unwrap();
                assert_eq!(echoed, message);
                Ok::<_, String>(())
            })
        });
        for dial in futures_util::future::join_all(dials).await {
            dial.unwrap().expect("every dial of the burst succeeds");
        }
    })
    .await
}

/// The relay frames data messages by hand; a client built on a stock gRPC library (tonic's
/// generated client with prost, which sends each message whole) must see no difference.
#[tokio::test]
async fn a_stock_grpc_client_dials_and_gets_its_bytes_back_exact() {
    use sesame_tunnel::proto::v1::dialer_service_client::DialerServiceClient;
    use sesame_tunnel::proto::v1::{DialRequest, DialTarget, dial_request, dial_response};

    within(async {
        let relay = TestRelay::start().await;
        let session = relay.session("stock").await;
        echo_listener(&session, 7).await;

        // Sizes around the hand framing's limits: empty, tiny, either side of the size
        // below which chunks are copied, an HTTP/2 frame, and several frames.
        let sizes = [0, 1, 100, 8191, 8192, 16_384, 65_536, 65_545, 300_000];
        let payloads: Vec<Vec<u8>> = sizes.iter().map(|&len| random_bytes(len)).collect();
        let sent: Vec<u8> = payloads.concat();
        let target = DialRequest {
            message: Some(dial_request::Message::Target(DialTarget {
                remote: "remotes/stock".into(),
                port: 7,
            })),
        };
        let data = payloads.into_iter().map(|payload| DialRequest {
            message: Some(dial_request::Message::Data(payload.into())),
        });
        let requests = futures_util::stream::iter(std::iter::once(target).chain(data));
        let mut responses = DialerServiceClient::new(relay.channel().await)
            .dial(requests)
            .await
            .unwrap()
            .into_inner();

        let first = responses.message().await.unwrap().unwrap();
        assert!(
            matches!(first.message, Some(dial_response::Message::Opened(_))),
            "{first:?}"
        );
        let mut echoed = Vec::new();
        loop {
            match responses.message().await.unwrap().and_then(|m| m.message) {
                Some(dial_response::Message::Data(chunk)) => echoed.extend_from_slice(&chunk),
                Some(dial_response::Message::CloseWrite(_)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed.len(), sent.len());
        assert_eq!(sha256(&echoed), sha256(&sent), "byte-exact");
        assert!(
            responses.message().await.unwrap().is_none(),
            "the call ends with OK"
        );
    })
    .await
}
