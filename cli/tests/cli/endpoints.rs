//! Public endpoints from the command line: `relay serve --domain/--http-listen/--tcp-ports`,
//! `expose --http/--tcp`, what they print, and `ls`.

use std::net::TcpListener;
use std::process::Command;

use crate::util::*;

/// A range of four ports next to an ephemeral one, free a moment ago.
fn free_range() -> String {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let first = probe.local_addr().unwrap().port().min(65531);
    format!("{first}-{}", first + 3)
}

/// curl's body for `url`, with `extra` arguments; fails the test unless curl succeeds.
fn fetch(url: &str, extra: &[&str]) -> Vec<u8> {
    let mut curl = Command::new("curl");
    curl.args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .args(extra)
        .arg(url);
    let result = run(curl, b"");
    assert!(
        result.status.success(),
        "curl {url}: {}",
        text(&result.stderr)
    );
    result.stdout
}

#[test]
fn expose_prints_its_public_endpoints_and_ls_shows_them() {
    require("curl");
    let range = free_range();
    let mut relay = Relay::start_with(
        "127.0.0.1:0",
        &[
            "--domain",
            "tunnel.test",
            "--http-listen",
            "127.0.0.1:0",
            "--tcp-ports",
            &range,
            "--public-host",
            "127.0.0.1",
        ],
    );
    let line = relay
        .proc
        .wait_for(|line| line.starts_with("serving http://*.tunnel.test on "));
    let http = line.rsplit(' ').next().unwrap().to_owned();
    let http_port = http.rsplit_once(':').unwrap().1.to_owned();

    let server = HttpServer::start(2 << 20);
    let port = server.port.to_string();
    let mut agent = relay.sesame(&["expose", &port, "--name", "web", "--http", "--tcp"]);
    let url_line = agent.wait_for(|line| line.contains("public: http://"));
    let url = url_line.trim().trim_start_matches("public: ").to_owned();
    assert_eq!(url, format!("http://web.tunnel.test:{http_port}"));
    let tcp_line = agent.wait_for(|line| line.contains("public: tcp://"));
    let tcp = tcp_line
        .trim()
        .trim_start_matches("public: tcp://")
        .to_owned();

    let (name, data) = &server.file;
    let resolve = format!("web.tunnel.test:{http_port}:127.0.0.1");
    let body = fetch(&format!("{url}/{name}"), &["--resolve", &resolve]);
    assert_eq!(sha256(&body), sha256(data), "through the virtual host");
    let body = fetch(&format!("http://{tcp}/{name}"), &[]);
    assert_eq!(sha256(&body), sha256(data), "through the TCP port");

    let listed = relay.run(&["ls"], b"");
    let table = text(&listed.stdout);
    assert!(table.contains("PUBLIC"), "{table}");
    assert!(
        table.contains(&url) && table.contains(&format!("tcp://{tcp}")),
        "{table}"
    );
    let listed = relay.run(&["ls", "--json"], b"");
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["public"][0], url, "{rows}");
    assert_eq!(rows[0]["public"][1], format!("tcp://{tcp}"), "{rows}");
}

#[test]
fn public_endpoint_flags_are_checked() {
    for (args, why) in [
        (
            &["expose", "80", "81", "--http"][..],
            "several ports are exposed",
        ),
        (&["expose", "80", "--http=81"], "port 81 is not among"),
        (
            &["expose", "80", "--remote-port", "5"],
            "needs exactly one --tcp",
        ),
        (
            &["expose", "80", "--proxy-protocol"],
            "--proxy-protocol needs --tcp",
        ),
        (
            &["expose", "80", "--host-header", "x"],
            "--host-header needs --http",
        ),
        (
            &["relay", "serve", "--http-listen", "127.0.0.1:0"],
            "--domain",
        ),
        (&["relay", "serve", "--tcp-ports", "9-1"], "empty"),
    ] {
        let output = sesame_run(args);
        assert!(!output.status.success(), "{args:?}");
        let error = text(&output.stderr);
        assert!(error.contains(why), "{args:?}: {error}");
    }

    // A relay without public endpoints refuses them clearly, and the agent says which port.
    let relay = Relay::start();
    for (flag, why) in [
        (
            "--http",
            "serves no HTTP virtual hosts (it runs without --domain)",
        ),
        (
            "--tcp",
            "publishes no TCP ports (it runs without --tcp-ports)",
        ),
    ] {
        let output = relay.run(&["expose", "80", "--name", "web", flag], b"");
        assert!(!output.status.success(), "{flag}");
        let error = text(&output.stderr);
        assert!(
            error.contains("cannot expose port 80") && error.contains(why),
            "{error}"
        );
    }
}
