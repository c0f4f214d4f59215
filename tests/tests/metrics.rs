//! The relay's `/metrics`, scraped as Prometheus would and parsed with Python's
//! `prometheus_client` while connections run through every entrance: the figures move as bytes
//! flow, not when connections close.

use sesame_relay::RelayConfig;
use sesame_tests::process::curl;
use sesame_tests::public::{PublicRelay, echoes_exactly, public_port};
use sesame_tests::{
    HttpBackend, Sample, echo_server, expected_download, hash_to_end, name, random_bytes, sample,
    scrape, sha256, within,
};
use sesame_tunnel::{
    Dialer, HttpProtocol, HttpPublish, Publish, RelayAccess, Session, Target, TcpPublish,
    TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

/// The value of `name` with `labels`, which must be there.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:?}"))
}

#[tokio::test]
async fn the_relay_counts_connections_and_bytes_as_they_flow() {
    within(async {
        let relay = PublicRelay::start(RelayConfig::default(), 1).await;
        let url = format!("http://{}/metrics", relay.metrics);
        let echo = echo_server().await;
        let backend = HttpBackend::start().await;
        let session = Session::builder(name("pi"))
            .relay(relay.url.clone())
            .connect()
            .await
            .unwrap();
        let echo_target = Target::new("127.0.0.1", echo.port());
        let tcp = Publish::none().tcp(TcpPublish::any_port());
        let _echo = session.forward_with(7, echo_target, tcp).await.unwrap();
        let http_target = Target::new("127.0.0.1", backend.addr().port());
        let http = Publish::none().http(HttpPublish::new(HttpProtocol::Http1));
        let _http = session.forward_with(80, http_target, http).await.unwrap();

        let before = scrape(&url).await;
        assert_eq!(value(&before, "sesame_relay_sessions", &[]), 1.0);
        assert!(value(&before, "process_open_fds", &[]) > 0.0);
        assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);

        // A dial carries 2 MiB each way and stays open: the bytes are counted already.
        let access = RelayAccess::from(relay.url.clone());
        let settings = TransportSettings::default();
        let dialer = Dialer::new(access.connect(&settings).await.unwrap(), settings);
        let mut conn = dialer.dial(&name("pi"), 7).await.unwrap();
        let data = random_bytes(2 * MIB);
        conn.write_all(&data).await.unwrap();
        let mut echoed = vec![0; data.len()];
        conn.read_exact(&mut echoed).await.unwrap();
        assert_eq!(sha256(&echoed), sha256(&data));
        let during = scrape(&url).await;
        let dial = [("entrance", "dial")];
        assert_eq!(
            value(&during, "sesame_relay_connections_active", &dial),
            1.0
        );
        assert_eq!(
            value(&during, "sesame_relay_connections_opened_total", &dial),
            1.0
        );
        let bytes = |samples: &[Sample], direction| {
            value(
                samples,
                "sesame_relay_bytes_total",
                &[("direction", direction)],
            )
        };
        assert!(bytes(&during, "to_remote") >= data.len() as f64);
        assert!(bytes(&during, "from_remote") >= data.len() as f64);
        let of_pi = [("remote", "pi"), ("direction", "from_remote")];
        assert!(value(&during, "sesame_relay_remote_bytes_total", &of_pi) >= data.len() as f64);
        conn.shutdown().await.unwrap();
        assert_eq!(hash_to_end(conn).await.unwrap().0, 0);

        // A public TCP connection and an HTTPS request: each entrance is counted, byte for
        // byte, and the HTTPS handshake too.
        echoes_exactly(public_port(&session, 7), random_bytes(MIB)).await;
        let resolve = relay.resolve("pi");
        let ca = relay.ca.display().to_string();
        let download = format!("{}/download?bytes=1048576&seed=5", relay.https_url("pi"));
        let mut args: Vec<&str> = resolve.iter().map(String::as_str).collect();
        args.extend(["--cacert", &ca, &download]);
        let (body, head) = curl(&args).await;
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert_eq!(sha256(&body), expected_download(1 << 20, 5));
        // A dial to a port nobody exposes fails, and says why.
        assert!(dialer.dial(&name("pi"), 9).await.is_err());

        let after = scrape(&url).await;
        for entrance in ["tcp", "http"] {
            let opened = value(
                &after,
                "sesame_relay_connections_opened_total",
                &[("entrance", entrance)],
            );
            assert!(opened >= 1.0, "{entrance}: {opened}");
        }
        assert!(bytes(&after, "from_remote") >= (data.len() + 2 * MIB) as f64);
        let handshakes = [("listener", "https"), ("result", "ok")];
        assert!(value(&after, "sesame_relay_tls_handshakes_total", &handshakes) >= 1.0);
        let failures = value(
            &after,
            "sesame_relay_dial_failures_total",
            &[("reason", "not_found")],
        );
        assert_eq!(failures, 1.0);
        assert!(value(&after, "sesame_relay_dial_duration_seconds_count", &[]) >= 3.0);
        assert!(value(&after, "sesame_relay_first_byte_seconds_count", &[]) >= 3.0);
        assert!(
            value(&after, "process_cpu_seconds_total", &[])
                >= value(&before, "process_cpu_seconds_total", &[])
        );

        // A remote that leaves takes its own series with it.
        drop((_echo, _http));
        session.close();
        let mut gone = None;
        for _ in 0..200 {
            let samples = scrape(&url).await;
            if value(&samples, "sesame_relay_sessions", &[]) == 0.0 {
                gone = Some(samples);
                break;
            }
        }
        let gone = gone.expect("the relay never counted the session out");
        let pi = [("remote", "pi")];
        assert!(sample(&gone, "sesame_relay_remote_connections_active", &pi).is_none());
    })
    .await;
}
