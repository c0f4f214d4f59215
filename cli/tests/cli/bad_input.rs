//! Bad input gets one clear line, a hint where one helps, a non-zero exit, and harms nobody.

use crate::util::*;

/// Asserts a runtime failure: exit code 1, and stderr starting with `error: {message}`.
fn assert_fails(output: &std::process::Output, message: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!("error: {message}")),
        "stderr: {stderr}"
    );
    stderr
}

#[test]
fn an_unknown_remote_is_named_in_the_error() {
    let relay = Relay::start();
    for mode in [&["--stdio"][..], &["--listen", "127.0.0.1:0"]] {
        let mut args = vec!["connect", "nosuch", "--port", "22"];
        args.extend_from_slice(mode);
        let stderr = assert_fails(&relay.run(&args, b""), r#"no remote named "nosuch""#);
        assert!(stderr.contains("hint: `sesame ls`"), "{stderr}");
    }
}

#[test]
fn an_unexposed_port_is_named_in_the_error() {
    let relay = Relay::start();
    let _agent = relay.expose("pi", &["2222:127.0.0.1:22"]);
    let output = relay.run(&["connect", "pi", "--port", "23", "--stdio"], b"");
    assert_fails(&output, r#"remote "pi" does not expose port 23"#);
}

#[test]
fn a_dead_target_fails_that_dial_and_nothing_else() {
    let relay = Relay::start();
    let http = HttpServer::start(1 << 20);
    let (dead, alive) = (closed_port().to_string(), http.port.to_string());
    let mut agent = relay.expose("mixed", &[&dead, &alive]);

    let output = relay.run(&["connect", "mixed", "--port", &dead, "--stdio"], b"");
    assert_fails(
        &output,
        &format!("target refused: localhost:{dead}: connection refused"),
    );
    agent.wait_for(|line| {
        line.contains(&format!("port {dead}: dial from")) && line.contains("refused")
    });

    // The agent, the relay and the other port carry on.
    assert!(agent.is_running());
    let request = format!("GET /{} HTTP/1.0\r\n\r\n", http.file.0);
    let output = relay.run(
        &["connect", "mixed", "--port", &alive, "--stdio"],
        request.as_bytes(),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(sha256(http_body(&output.stdout).1), sha256(&http.file.1));
}

#[test]
fn another_token_cannot_take_a_name_in_use() {
    let relay = Relay::start();
    let http = HttpServer::start(1024);
    let port = http.port.to_string();
    let mut first = relay.expose("web", &[&port]);

    let other = relay.create_token(&["expose:*"]);
    let mut command = relay.command_with(&other);
    command.args(["expose", "--name", "web", &port]);
    let mut second = Proc::start(command);
    let (status, output) = second.wait_exit();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(r#"[stderr] error: the name "web" belongs to another token"#),
        "{output}"
    );
    assert!(output.contains("hint: "), "{output}");

    // The first agent keeps the name and keeps serving.
    assert!(first.is_running());
    let request = format!("GET /{} HTTP/1.0\r\n\r\n", http.file.0);
    let output = relay.run(
        &["connect", "web", "--port", &port, "--stdio"],
        request.as_bytes(),
    );
    assert_eq!(sha256(http_body(&output.stdout).1), sha256(&http.file.1));
}

#[test]
fn an_unreachable_relay_is_named_in_the_error() {
    let relay = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        vec!["ls"],
        vec!["expose", "8080", "--name", "x"],
        vec!["connect", "x", "--port", "22", "--stdio"],
    ] {
        let mut all = vec!["--relay", relay.as_str()];
        all.extend(args);
        let output = sesame_run(&all);
        let stderr = assert_fails(
            &output,
            &format!("cannot reach relay at {relay}: connection refused"),
        );
        assert!(
            stderr.contains("hint: start one with `sesame relay serve`"),
            "{stderr}"
        );
    }
}

#[test]
fn invalid_ports_names_and_addresses_are_usage_errors() {
    for (args, complaint) in [
        (vec!["expose", "70000"], "\"70000\" is not a port"),
        (vec!["expose", "0"], "\"0\" is not a port"),
        (vec!["expose", "web:"], "\"\" is not a port"),
        (vec!["expose", ":80"], "names no host"),
        (
            vec!["expose", "8080", "--name", "Bad_Name"],
            "invalid remote name",
        ),
        (
            vec!["connect", "pi", "--port", "0"],
            "'0' for '--port <PORT>'",
        ),
        (
            vec!["connect", "pi", "--port", "http"],
            "'http' for '--port <PORT>'",
        ),
        (vec!["connect", "pi"], "--port <PORT>"),
        (
            vec![
                "connect",
                "pi",
                "--port",
                "22",
                "--stdio",
                "--listen",
                "127.0.0.1:0",
            ],
            "cannot be used with",
        ),
        (
            vec!["connect", "pi", "--port", "22", "--listen", "localhost"],
            "invalid socket address",
        ),
        (
            vec!["relay", "serve", "--listen", "nowhere"],
            "invalid socket address",
        ),
        (
            vec!["relay", "serve", "--threads", "0"],
            "0 is not in 1..=1024",
        ),
        (
            vec!["--relay", "ftp://relay", "ls"],
            "the scheme must be https://",
        ),
        (
            vec!["--relay", "relay:99999", "ls"],
            "the port must be a number",
        ),
        (
            vec!["--keepalive", "10ms", "ls"],
            "the keepalive must be at least 300ms",
        ),
        (vec!["--keepalive", "soon", "ls"], "'soon' for '--keepalive"),
    ] {
        let output = sesame_run(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(complaint), "{args:?}: {stderr}");
    }
}

#[test]
fn a_port_given_twice_is_refused_before_connecting() {
    let output = sesame_run(&[
        "--relay",
        "http://127.0.0.1:1",
        "expose",
        "22",
        "127.0.0.1:22",
    ]);
    assert_fails(&output, "port 22 is given twice");
}

#[test]
fn every_way_of_not_reaching_a_relay_gets_a_hint_that_fits() {
    // A port where nothing speaks TLS: neither a relay to start nor a raw library name.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answering = std::thread::spawn(move || {
        // Answers the first connection as a plain HTTP server would, then stops.
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0; 512];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let output = sesame_run(&["--relay", &format!("https://{addr}"), "ls"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("start one"), "{stderr}");
    answering.join().unwrap();

    // A token the relay does not know: a new one is needed, not another login with it.
    let relay = Relay::start();
    // http:// for a relay that serves TLS: the likeliest typo, with its fix.
    let plaintext = relay.url.replace("https://", "http://");
    let output = sesame_run(&["--relay", &plaintext, "ls"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer as a Sesame relay"),
        "{stderr}"
    );
    assert!(stderr.contains("try https://"), "{stderr}");
    let mut command = relay.command_with("sesame_0123abcd_00112233445566778899aabbccddeeff");
    command.arg("ls");
    let output = run(command, b"");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("the token is not valid"), "{stderr}");
    assert!(
        stderr.contains("hint: ask the relay's administrator for a new token"),
        "{stderr}"
    );

    // Names in messages read as names, never as Rust values.
    let narrow = relay.create_token(&["expose:mine"]);
    let mut command = relay.command_with(&narrow);
    command.args(["expose", "--name", "theirs", "9"]);
    let output = run(command, b"");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(r#"this token may not expose "theirs""#),
        "{stderr}"
    );
    for internal in [
        "RemoteName(",
        "os error",
        "docs.rs",
        "http2 error",
        "transport error",
    ] {
        assert!(!stderr.contains(internal), "{internal} in {stderr}");
    }
}
