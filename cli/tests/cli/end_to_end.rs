//! Data through the real binaries, byte-exact.

use std::process::Command;

use crate::util::*;

#[test]
fn curl_fetches_a_file_through_connect_listen_byte_exact() {
    require("curl");
    let relay = Relay::start();
    let http = HttpServer::start(4 << 20);
    let port = http.port.to_string();
    let mut agent = relay.expose("web", &[&port]);
    let mut connect = relay.sesame(&["connect", "web", "--port", &port, "--listen", "127.0.0.1:0"]);
    let line = connect.wait_for(|line| line.starts_with("listening on "));
    let local = line
        .trim_start_matches("listening on ")
        .split(": ")
        .next()
        .unwrap()
        .to_owned();

    let out = scratch_dir();
    // Two fetches: the listener serves each connection with a dial of its own.
    for attempt in 0..2 {
        let path = out.join(format!("fetched-{attempt}"));
        let mut curl = Command::new("curl");
        curl.args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "60",
            "--output",
        ])
        .arg(&path)
        .arg(format!("http://{local}/{}", http.file.0));
        let result = run(curl, b"");
        assert!(
            result.status.success(),
            "curl failed: {}",
            text(&result.stderr)
        );
        let fetched = std::fs::read(&path).unwrap();
        assert_eq!(fetched.len(), http.file.1.len());
        assert_eq!(sha256(&fetched), sha256(&http.file.1));
    }
    // On a pipe, the agent reports each connection on a line of its own.
    agent.wait_for(|line| line.contains("opened"));
    agent.wait_for(|line| line.contains("closed") && line.contains("4.00 MiB out"));
}

#[test]
fn stdio_carries_one_connection_byte_exact() {
    let relay = Relay::start();
    let http = HttpServer::start(3 << 20);
    let port = http.port.to_string();
    let _agent = relay.expose("web", &[&port]);

    // Like ssh's ProxyCommand: the request on stdin, then EOF; the response on stdout.
    let request = format!("GET /{} HTTP/1.0\r\nHost: web\r\n\r\n", http.file.0);
    let result = relay.run(
        &["connect", "web", "--port", &port, "--stdio"],
        request.as_bytes(),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    assert!(
        result.stderr.is_empty(),
        "stdio mode prints nothing else: {}",
        text(&result.stderr)
    );
    let (status, body) = http_body(&result.stdout);
    assert!(status.contains("200"), "{status}");
    assert_eq!(sha256(body), sha256(&http.file.1));
}

#[test]
fn a_relay_on_one_thread_carries_connections_byte_exact() {
    relay_on_threads_carries_connections_byte_exact("1");
}

#[test]
fn a_relay_on_worker_threads_carries_connections_byte_exact() {
    relay_on_threads_carries_connections_byte_exact("3");
}

fn relay_on_threads_carries_connections_byte_exact(threads: &str) {
    let mut relay = Relay::start_with("127.0.0.1:0", &["--threads", threads]);
    relay.proc.signal("USR1");
    let stats = relay
        .proc
        .wait_for_on(Stream::Stderr, |line| line.starts_with("sesame stats: "));
    assert!(stats.ends_with(&format!(" workers={threads}")), "{stats}");
    let http = HttpServer::start(3 << 20);
    let port = http.port.to_string();
    let _agent = relay.expose("web", &[&port]);
    for _ in 0..2 {
        let request = format!("GET /{} HTTP/1.0\r\nHost: web\r\n\r\n", http.file.0);
        let result = relay.run(
            &["connect", "web", "--port", &port, "--stdio"],
            request.as_bytes(),
        );
        assert!(result.status.success(), "{}", text(&result.stderr));
        let (status, body) = http_body(&result.stdout);
        assert!(status.contains("200"), "{status}");
        assert_eq!(sha256(body), sha256(&http.file.1));
    }
}

#[test]
fn ls_lists_remotes_with_their_ports_as_json_and_as_a_table() {
    let relay = Relay::start();
    let http = HttpServer::start(16);
    let port = http.port.to_string();
    let other = closed_port().to_string();
    let _web = relay.expose("web", &[&port, &format!("127.0.0.1:{other}")]);
    // Exposed port 2222 leads to a closed local port: nothing dials it here.
    let _db = relay.expose("db", &[&format!("2222:127.0.0.1:{}", closed_port())]);

    let result = relay.run(&["ls", "--json"], b"");
    assert!(result.status.success(), "{}", text(&result.stderr));
    let remotes: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let remotes = remotes.as_array().unwrap();
    let names: Vec<&str> = remotes
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"], "sorted by name");
    assert_eq!(remotes[0]["ports"], serde_json::json!([2222]));
    let mut web_ports = vec![http.port, other.parse().unwrap()];
    web_ports.sort_unstable();
    assert_eq!(remotes[1]["ports"], serde_json::json!(web_ports));
    for remote in remotes {
        assert_eq!(
            remote["agent_version"],
            format!("sesame/{}", env!("CARGO_PKG_VERSION"))
        );
        let since = remote["connect_time"].as_str().unwrap();
        assert!(
            since.ends_with('Z') && since.len() == 20,
            "RFC 3339: {since}"
        );
    }

    let table = text(&relay.run(&["ls"], b"").stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("PORTS")
            && lines[0].contains("CONNECTED")
    );
    assert!(
        lines[1].starts_with("db ") && lines[1].contains("2222"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("web ") && lines[2].contains(&port),
        "{table}"
    );
}

#[test]
fn expose_derives_a_valid_name_from_the_host_name() {
    let relay = Relay::start();
    let mut agent = relay.sesame(&["expose", &closed_port().to_string()]);
    let line = agent.wait_for(|line| line.starts_with("remote "));
    let name = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    let listed = text(&relay.run(&["ls"], b"").stdout);
    assert!(
        listed.lines().any(|l| l.starts_with(&format!("{name} "))),
        "{listed}"
    );
}

#[test]
fn relay_serve_serves_prometheus_metrics() {
    require("curl");
    let mut relay = Relay::start_with("127.0.0.1:0", &["--metrics-listen", "127.0.0.1:0"]);
    let line = relay.proc.wait_for(|line| line.starts_with("metrics at "));
    let url = line.trim_start_matches("metrics at ").to_owned();
    let ticker = Ticker::start();
    let _agent = relay.expose("counted", &[&ticker.port.to_string()]);
    let mut curl = Command::new("curl");
    curl.args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .arg(&url);
    let result = run(curl, b"");
    assert!(result.status.success(), "{}", text(&result.stderr));
    let metrics = text(&result.stdout);
    assert!(
        metrics
            .lines()
            .any(|line| line == "sesame_relay_sessions 1"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
}

/// The samples of the metrics at `url`, as `tests/python/scrape.py` reads them with Python's
/// `prometheus_client` parser: `(name, labels, value)`.
fn scrape(url: &str) -> Vec<(String, serde_json::Value, f64)> {
    require("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/scrape.py");
    let mut python = Command::new("/usr/bin/python3");
    python.arg(script).arg(url);
    let result = run(python, b"");
    assert!(result.status.success(), "{}", text(&result.stderr));
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_owned(),
                s[1].clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn expose_serves_the_agents_metrics() {
    let relay = Relay::start();
    let ticker = Ticker::start();
    let port = ticker.port.to_string();
    let mut agent = relay.sesame(&[
        "expose",
        "--name",
        "watched",
        &port,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let line = agent.wait_for(|line| line.trim_start().starts_with("metrics at "));
    let url = line.trim().trim_start_matches("metrics at ").to_owned();
    let mut reader = relay.sesame(&["connect", "watched", "--port", &port, "--stdio"]);
    reader.wait_for(|line| line == "tick 3");

    let samples = scrape(&url);
    let value = |name: &str, direction: Option<&str>| {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name
                    && labels["remote"] == "watched"
                    && direction.is_none_or(|d| labels["direction"] == d)
            })
            .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
            .2
    };
    assert_eq!(value("sesame_agent_connected", None), 1.0);
    assert_eq!(value("sesame_agent_connections_active", None), 1.0);
    assert_eq!(value("sesame_agent_connections_opened_total", None), 1.0);
    // "tick 1\ntick 2\ntick 3\n" at least, while the connection is still open.
    assert!(value("sesame_agent_bytes_total", Some("to_dialers")) >= 21.0);
    assert!(
        samples
            .iter()
            .any(|(n, _, v)| n == "process_open_fds" && *v > 0.0)
    );
}

#[test]
fn json_logs_are_one_object_a_line_with_the_fields_of_their_spans() {
    let mut relay = Relay::start_with("127.0.0.1:0", &["-v", "--log-format", "json"]);
    let ticker = Ticker::start();
    let _agent = relay.expose("logged", &[&ticker.port.to_string()]);
    let line = relay
        .proc
        .wait_for_on(Stream::Stderr, |line| line.contains("remote connected"));
    let event: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {line}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert_eq!(event["fields"]["message"], "remote connected", "{event}");
    assert!(event["fields"]["peer"].as_str().is_some(), "{event}");
    let spans = event["spans"].as_array().expect("the spans it happened in");
    assert!(
        spans
            .iter()
            .any(|span| span["remote"] == "logged" && span["session"].is_string()),
        "{event}"
    );
}
