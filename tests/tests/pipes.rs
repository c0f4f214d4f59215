//! The whole protocol over in-memory pipes that buffer only a few bytes, so that every HTTP/2
//! frame and every message crosses many partial reads and writes: framing, flow control and
//! half-close must not depend on how the transport happens to slice the bytes.

use futures_util::StreamExt;
use sesame_relay::RelayConfig;
use sesame_tests::*;
use sesame_tunnel::{Error, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes each pipe holds: smaller than an HTTP/2 frame header plus payload.
const PIPE_BUFFER: usize = 61;

#[tokio::test]
async fn data_crosses_tiny_pipes_byte_exact_in_both_directions() {
    within(async {
        let relay = TestRelay::start_on_pipes(RelayConfig::default(), PIPE_BUFFER);
        let session = relay.session("tiny").await;
        echo_listener(&session, 1).await;
        let dialer = relay.dialer().await;

        let data = random_bytes(1 << 20);
        let conn = dialer.dial(&name("tiny"), 1).await.unwrap();
        let (reader, writer) = tokio::io::split(conn);
        let (echoed, sent) = tokio::join!(hash_to_end(reader), write_then_shutdown(writer, &data));
        sent.unwrap();
        assert_eq!(echoed.unwrap(), (data.len() as u64, sha256(&data)));
    })
    .await
}

#[tokio::test]
async fn half_close_and_many_streams_survive_tiny_pipes() {
    within(async {
        let relay = TestRelay::start_on_pipes(RelayConfig::default(), PIPE_BUFFER);
        let session = relay.session("streams").await;
        // The agent reads each request to its end, then answers with its length.
        let mut listener = session.listen(2).await.unwrap();
        tokio::spawn(async move {
            while let Some(Ok(mut conn)) = listener.next().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    conn.read_to_end(&mut request).await.unwrap();
                    conn.write_all(format!("got {}", request.len()).as_bytes())
                        .await
                        .unwrap();
                    conn.shutdown().await.unwrap();
                });
            }
        });
        let dialer = relay.dialer().await;
        let tasks: Vec<_> = (0..20usize)
            .map(|i| {
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    let mut conn = dialer.dial(&name("streams"), 2).await.unwrap();
                    conn.write_all(&random_bytes(i * 1000)).await.unwrap();
                    conn.shutdown().await.unwrap();
                    let mut reply = String::new();
                    conn.read_to_string(&mut reply).await.unwrap();
                    assert_eq!(reply, format!("got {}", i * 1000));
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn errors_cross_tiny_pipes_intact() {
    within(async {
        let relay = TestRelay::start_on_pipes(RelayConfig::default(), PIPE_BUFFER);
        let session = relay.session("errors").await;
        let dead = closed_port().await;
        let _dead = session
            .forward(3, Target::new("127.0.0.1", dead))
            .await
            .unwrap();
        let dialer = relay.dialer().await;
        let err = dialer.dial(&name("errors"), 3).await.unwrap_err();
        assert!(matches!(err, Error::TargetRefused { .. }), "{err:?}");
        let err = dialer.dial(&name("nobody"), 3).await.unwrap_err();
        assert!(matches!(err, Error::RemoteNotFound { .. }), "{err:?}");
    })
    .await
}
