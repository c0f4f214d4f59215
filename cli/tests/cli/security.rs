//! Tokens, login and TLS from the command line: `login` and `logout` with the keyring or its
//! file fallback, token precedence, `relay token create/ls/revoke`, plaintext only on
//! loopback, and secrets kept out of logs.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

/// `sesame ARGS` with its settings in `config`, the keyring as the system has it, and `env`.
fn with_config(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = sesame();
    command
        .env("SESAME_CONFIG_DIR", config)
        .env_remove("SESAME_KEYRING")
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    run(command, b"")
}

/// Checks that the command failed (exit code 1) saying `fragment`; returns its stderr.
fn fails(output: &Output, fragment: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(stderr.contains(fragment), "stderr: {stderr}");
    stderr
}

fn succeeds(output: &Output) -> String {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    stdout
}

#[test]
fn login_checks_the_certificate_and_token_stores_them_and_logout_forgets() {
    let relay = Relay::start();
    let config = scratch_dir();
    let url = relay.url.as_str();

    // Not on a terminal, a self-signed relay needs its fingerprint: nothing is stored.
    let output = with_config(&config, &["login", url, "--token", &relay.token], &[]);
    let stderr = fails(&output, "not signed by an authority this system trusts");
    assert!(stderr.contains(&relay.fingerprint), "{stderr}");
    let wrong = "AB:".repeat(31) + "AB";
    let output = with_config(
        &config,
        &[
            "login",
            url,
            "--token",
            &relay.token,
            "--fingerprint",
            &wrong,
        ],
        &[],
    );
    fails(&output, "not the relay you meant");
    let output = with_config(
        &config,
        &[
            "login",
            url,
            "--fingerprint",
            &relay.fingerprint,
            "--token",
            "sesame_0123abcd_00112233445566778899aabbccddeeff",
        ],
        &[],
    );
    let stderr = fails(&output, "the token is not valid");
    assert!(
        stderr.contains("hint: ask the relay's administrator for a new token"),
        "{stderr}"
    );
    assert!(
        !config.join("config.json").exists(),
        "a failed login stores nothing"
    );

    let output = with_config(
        &config,
        &[
            "login",
            url,
            "--token",
            &relay.token,
            "--fingerprint",
            &relay.fingerprint,
        ],
        &[],
    );
    let stdout = succeeds(&output);
    assert!(stdout.contains(&format!("logged in to {url}")), "{stdout}");
    assert!(stdout.contains("scopes admin"), "{stdout}");
    let credentials = config.join("credentials.json");
    if stdout.contains("the token is in the system keyring") {
        assert!(!credentials.exists());
    } else {
        // No keyring service on this machine: the file, readable by its owner alone.
        assert!(stdout.contains("which only you can read"), "{stdout}");
        let stored = std::fs::read_to_string(&credentials).unwrap();
        assert!(stored.contains(&relay.token));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Later commands need neither the relay, nor its fingerprint, nor the token.
    let agent = relay.create_token(&["expose:pinned", "connect:pinned"]);
    let mut command = relay.command_with(&agent);
    command.args(["expose", "--name", "pinned", "9"]);
    let mut exposed = Proc::start(command);
    exposed.wait_for(|line| line.contains("reach it with:"));
    let stdout = succeeds(&with_config(&config, &["ls"], &[]));
    assert!(stdout.contains("pinned"), "{stdout}");

    // Precedence: --token, then SESAME_TOKEN, then the stored token.
    let viewer = relay.create_token(&["connect:nothing"]);
    let hidden = |output: &Output| succeeds(output).contains("none this token may see");
    assert!(hidden(&with_config(
        &config,
        &["ls", "--token", &viewer],
        &[]
    )));
    assert!(hidden(&with_config(
        &config,
        &["ls"],
        &[("SESAME_TOKEN", &viewer)]
    )));
    assert!(!hidden(&with_config(
        &config,
        &["ls", "--token", &relay.token],
        &[("SESAME_TOKEN", &viewer)]
    )));

    let stdout = succeeds(&with_config(&config, &["logout"], &[]));
    assert!(stdout.contains(&format!("forgot, for {url}")), "{stdout}");
    let stored = std::fs::read_to_string(&credentials).unwrap_or_default();
    assert!(!stored.contains(&relay.token), "logout removes the token");
    let output = with_config(
        &config,
        &["--relay", url, "--fingerprint", &relay.fingerprint, "ls"],
        &[],
    );
    let stderr = fails(&output, "needs a token");
    assert!(stderr.contains("hint: log in"), "{stderr}");
}

#[test]
fn tokens_are_created_listed_and_revoked_from_the_command_line() {
    let relay = Relay::start();
    let output = relay.run(
        &[
            "relay",
            "token",
            "create",
            "--scope",
            "expose:cam",
            "--label",
            "camera",
            "--expires",
            "1h",
        ],
        b"",
    );
    let stdout = succeeds(&output);
    assert!(stdout.contains("with scopes expose:cam"), "{stdout}");
    assert!(stdout.contains("it expires at"), "{stdout}");
    let token = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("sesame_"))
        .unwrap()
        .to_owned();
    let id = &token["sesame_".len().."sesame_".len() + 8];

    let mut command = relay.command_with(&token);
    command.args(["expose", "--name", "cam", "9"]);
    let mut agent = Proc::start(command);
    agent.wait_for(|line| line.contains("reach it with:"));

    let listed = succeeds(&relay.run(&["relay", "token", "ls"], b""));
    let row = listed.lines().find(|line| line.starts_with(id)).unwrap();
    assert!(
        row.contains("camera") && row.contains("expose:cam"),
        "{row}"
    );
    assert!(row.contains("expires in") && row.contains("cam"), "{row}");
    let json: serde_json::Value = serde_json::from_str(&succeeds(
        &relay.run(&["relay", "token", "ls", "--json"], b""),
    ))
    .unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(entry["live_remotes"], 1);
    assert_eq!(entry["owned_names"], serde_json::json!(["cam"]));

    // A token without admin cannot manage tokens.
    let mut command = relay.command_with(&token);
    command.args(["relay", "token", "ls"]);
    let stderr = fails(&run(command, b""), "may not manage tokens");
    assert!(
        stderr.contains("hint: ask the relay's administrator"),
        "{stderr}"
    );

    let stdout = succeeds(&relay.run(&["relay", "token", "revoke", id], b""));
    assert!(stdout.contains(&format!("revoked token {id}")), "{stdout}");
    let (status, output) = agent.wait_exit();
    assert!(!status.success(), "{output}");
    assert!(output.contains("revoked"), "{output}");
    let listed = succeeds(&relay.run(&["relay", "token", "ls"], b""));
    let row = listed.lines().find(|line| line.starts_with(id)).unwrap();
    assert!(row.contains("revoked"), "{row}");
    let stderr = fails(
        &relay.run(&["relay", "token", "revoke", "ffffffff"], b""),
        "no token has the id",
    );
    assert!(!stderr.is_empty());
    let output = relay.run(&["relay", "token", "create", "--scope", "root"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("is not a scope"));
}

#[test]
fn plaintext_is_refused_off_loopback_and_warned_about_on_it() {
    let output = sesame_run(&[
        "relay",
        "serve",
        "--insecure-plaintext",
        "--listen",
        "0.0.0.0:0",
    ]);
    fails(
        &output,
        "--insecure-plaintext is accepted only on a loopback address",
    );

    let data_dir = scratch_dir();
    let mut relay = Proc::sesame(&[
        "relay",
        "serve",
        "--insecure-plaintext",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let line = relay.wait_for(|line| line.starts_with("relay listening on "));
    let addr = line.trim_start_matches("relay listening on ").to_owned();
    let token = admin_token(&mut relay);
    let url = format!("http://{addr}");
    let stdout = succeeds(&sesame_run(&["--relay", &url, "--token", &token, "ls"]));
    assert!(stdout.contains("no remotes"), "{stdout}");
    // A TLS client cannot reach it by mistake.
    let output = sesame_run(&[
        "--relay",
        &format!("https://{addr}"),
        "--token",
        &token,
        "ls",
    ]);
    fails(&output, "cannot reach relay");
    relay.signal("TERM");
    let (_, output) = relay.wait_exit();
    assert!(output.contains("without TLS"), "{output}");
}

#[test]
fn secrets_stay_out_of_logs() {
    let relay = Relay::start_with("127.0.0.1:0", &["-vvv"]);
    let agent_token = relay.create_token(&["expose:quiet"]);
    let mut command: Command = relay.command_with(&agent_token);
    command.args(["-vvv", "expose", "--name", "quiet", "9"]);
    let mut agent = Proc::start(command);
    agent.wait_for(|line| line.contains("reach it with:"));
    agent.signal("INT");
    let (_, agent_output) = agent.wait_exit();
    let mut relay = relay;
    relay.proc.signal("TERM");
    let (_, relay_output) = relay.proc.wait_exit();
    for (who, output) in [("agent", &agent_output), ("relay", &relay_output)] {
        let logs: String = output
            .lines()
            .filter(|line| line.starts_with("[stderr]"))
            .collect();
        assert!(!logs.is_empty(), "{who} logged at -vvv");
        assert!(
            !logs.contains(&agent_token),
            "{who}'s logs hold the agent's token"
        );
        assert!(
            !logs.contains(&relay.token),
            "{who}'s logs hold the admin token"
        );
        let secret = &agent_token["sesame_".len() + 9..];
        assert!(
            !logs.contains(secret),
            "{who}'s logs hold a token's secret part"
        );
    }
}

#[test]
fn on_a_terminal_login_shows_the_fingerprint_and_asks_for_trust_and_token() {
    require("python3");
    let relay = Relay::start();
    let config = scratch_dir();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/answer_prompts.py"
    );
    let login = |answer: &str| {
        let mut command = Command::new("python3");
        command
            .arg(script)
            .args(["trust this relay?", answer])
            .args(["token for", &format!("{}\\n", relay.token)])
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_sesame"))
            .args(["login", &relay.url])
            .env("SESAME_CONFIG_DIR", &config)
            .env("SESAME_KEYRING", "off")
            .env_remove("SESAME_TOKEN")
            .env_remove("SESAME_FINGERPRINT");
        run(command, b"")
    };
    // Refusing the certificate stores nothing and never asks for the token.
    let refused = login("n");
    let shown = text(&refused.stdout);
    assert!(shown.contains(&relay.fingerprint), "{shown}");
    assert!(shown.contains("not logged in"), "{shown}");
    assert!(!config.join("config.json").exists());

    let accepted = login("y");
    let shown = text(&accepted.stdout);
    assert!(accepted.status.success(), "{shown}");
    assert!(
        !shown.contains(&relay.token),
        "the token is not echoed: {shown}"
    );
    assert!(
        shown.contains(&format!("logged in to {}", relay.url)),
        "{shown}"
    );
    let stored = std::fs::read_to_string(config.join("config.json")).unwrap();
    assert!(
        stored.contains(&relay.fingerprint),
        "the fingerprint is pinned: {stored}"
    );
    let stdout = succeeds(&with_config(&config, &["ls"], &[("SESAME_KEYRING", "off")]));
    assert!(stdout.contains("no remotes"), "{stdout}");
}

#[test]
fn a_relay_that_cannot_start_makes_no_admin_token_nobody_saw() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data_dir = scratch_dir();
    let output = sesame_run(&[
        "relay",
        "serve",
        "--listen",
        &addr,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    fails(&output, &format!("cannot listen on {addr}"));
    assert!(
        !data_dir.join("tokens.json").exists(),
        "the next start makes the admin token, and shows it"
    );
}

#[test]
fn a_token_never_goes_over_plaintext_to_another_machine() {
    // Nothing listens at 10.0.0.1 here, and nothing is sent there: each command refuses
    // before it connects, which a connection attempt's error ("cannot reach relay") would show.
    let relay = "http://10.0.0.1:7373";
    let token = "sesame_0123abcd_00112233445566778899aabbccddeeff";
    let refused = "refusing to send a token over plaintext to http://10.0.0.1:7373";
    for args in [
        vec!["--relay", relay, "--token", token, "ls"],
        vec!["--relay", relay, "--token", token, "relay", "token", "ls"],
        vec![
            "--relay", relay, "--token", token, "expose", "9", "--name", "pi",
        ],
        vec![
            "--relay", relay, "--token", token, "connect", "pi", "--port", "22", "--stdio",
        ],
        vec!["login", relay, "--token", token],
    ] {
        let stderr = fails(&sesame_run(&args), refused);
        assert!(
            stderr.contains("hint: name the relay with https://"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("cannot reach relay"), "{args:?}: {stderr}");
    }
    // The token from the environment is refused the same way.
    let output = with_config(
        &scratch_dir(),
        &["--relay", relay, "ls"],
        &[("SESAME_TOKEN", token), ("SESAME_KEYRING", "off")],
    );
    fails(&output, refused);
}

#[test]
fn the_first_admin_token_goes_to_a_private_file_when_the_output_is_not_a_terminal() {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = scratch_dir();
    let mut relay = Proc::sesame(&[
        "relay",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let token = admin_token(&mut relay);
    let file = data_dir.join("admin-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());

    // The login command shown reads the file, and works as shown.
    let login = relay.wait_for(|line| line.trim_start().starts_with("sesame login "));
    assert!(
        login.contains(&format!("--token \"$(cat {})\"", file.display())),
        "{login}"
    );
    let config = scratch_dir();
    let shown = login
        .trim()
        .replacen("sesame", &format!("'{}'", env!("CARGO_BIN_EXE_sesame")), 1);
    let mut command = Command::new("sh");
    command
        .args(["-c", &shown])
        .env("SESAME_CONFIG_DIR", &config)
        .env("SESAME_KEYRING", "off")
        .env_remove("SESAME_TOKEN")
        .env_remove("SESAME_FINGERPRINT");
    let stdout = succeeds(&run(command, b""));
    assert!(stdout.contains("scopes admin"), "{stdout}");
    let stdout = succeeds(&with_config(&config, &["ls"], &[("SESAME_KEYRING", "off")]));
    assert!(stdout.contains("no remotes"), "{stdout}");

    relay.signal("TERM");
    let (_, output) = relay.wait_exit();
    assert!(
        !output.contains(&token),
        "the relay's output holds the admin token:\n{output}"
    );
}

#[test]
fn a_relay_that_cannot_keep_its_admin_token_keeps_no_admin_token() {
    let data_dir = scratch_dir();
    // A directory where the file goes: the token cannot be written there.
    std::fs::create_dir(data_dir.join("admin-token")).unwrap();
    let output = sesame_run(&[
        "relay",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    fails(&output, "cannot write this relay's first admin token");
    assert!(
        !data_dir.join("tokens.json").exists(),
        "the next start makes the admin token, and hands it over"
    );
}

#[test]
fn login_with_a_ca_keeps_the_authority_not_the_file() {
    let dir = scratch_dir();
    let (ours, our_cert, our_key) = authority_and_relay_certificate(&dir, "ours");
    let (theirs, their_cert, their_key) = authority_and_relay_certificate(&dir, "attacker");
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    let (our_cert, our_key) = (path(&our_cert), path(&our_key));
    let mut relay = Relay::start_with(
        "127.0.0.1:0",
        &["--tls-cert", &our_cert, "--tls-key", &our_key],
    );
    let url = relay.url.clone();
    let ca_file = dir.join("ca.pem");
    std::fs::copy(&ours, &ca_file).unwrap();
    let ca = path(&ca_file);
    let keyring_off = [("SESAME_KEYRING", "off")];

    let config = scratch_dir();
    let login = ["login", &url, "--token", &relay.token, "--ca", &ca];
    succeeds(&with_config(&config, &login, &keyring_off));

    // Whoever can write the file puts their own authority in it: nothing changes.
    std::fs::copy(&theirs, &ca_file).unwrap();
    let stdout = succeeds(&with_config(&config, &["ls"], &keyring_off));
    assert!(stdout.contains("no remotes"), "{stdout}");

    // A login stored before (the file's path) still works as it did, with a warning.
    let legacy = scratch_dir();
    let entry = serde_json::json!({
        "default_relay": url,
        "relays": { url.clone(): { "ca": path(&ours) } },
    });
    std::fs::write(legacy.join("config.json"), entry.to_string()).unwrap();
    let output = with_config(&legacy, &["ls", "--token", &relay.token], &keyring_off);
    let stderr = text(&output.stderr);
    assert!(succeeds(&output).contains("no remotes"), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("log in again"),
        "{stderr}"
    );

    // ...and their relay where ours was: refused, as their authority never vouched for it.
    let addr = url.trim_start_matches("https://").to_owned();
    relay.proc.signal("TERM");
    relay.proc.wait_exit();
    let (their_cert, their_key) = (path(&their_cert), path(&their_key));
    let impostor = Relay::start_with(&addr, &["--tls-cert", &their_cert, "--tls-key", &their_key]);
    let stderr = fails(
        &with_config(&config, &["ls"], &keyring_off),
        "is not trusted here: its certificate is not signed by an authority trusted here",
    );
    assert!(
        stderr.contains("its SHA-256 fingerprint: ") && stderr.contains("hint: check that"),
        "{stderr}"
    );

    // An explicit --ca is read as the file is now.
    let explicit = ["--ca", &ca, "--token", &impostor.token, "ls"];
    let stdout = succeeds(&with_config(&config, &explicit, &keyring_off));
    assert!(stdout.contains("no remotes"), "{stdout}");
}

#[test]
fn an_untrusted_or_changed_relay_certificate_is_explained_as_ssh_does() {
    let relay = Relay::start();
    let config = scratch_dir();
    let url = relay.url.as_str();
    let token = relay.token.as_str();

    // First contact, nothing pinned: the fingerprint, and how to pin it once checked.
    let output = with_config(&config, &["--relay", url, "--token", token, "ls"], &[]);
    let stderr = fails(&output, &format!("the relay at {url} is not trusted here"));
    assert!(
        stderr.contains(&format!("its SHA-256 fingerprint: {}", relay.fingerprint)),
        "{stderr}"
    );
    let pin = format!("sesame login {url} --fingerprint {}", relay.fingerprint);
    assert!(stderr.contains(&pin), "{stderr}");

    // A pin that does not match: loud, with both fingerprints.
    let wrong = "AB:".repeat(31) + "AB";
    let args = [
        "--relay",
        url,
        "--token",
        token,
        "--fingerprint",
        &wrong,
        "ls",
    ];
    let stderr = fails(
        &with_config(&config, &args, &[]),
        "THE RELAY'S CERTIFICATE HAS CHANGED",
    );
    for part in [
        format!("pinned:    {wrong}"),
        format!("presented: {}", relay.fingerprint),
        pin,
    ] {
        assert!(stderr.contains(&part), "{part} in {stderr}");
    }
    // Never the TLS library's names, nor a hint that does not fit.
    for stderr in [&stderr, &text(&output.stderr)] {
        for wrong in [
            "unknownIssuer",
            "UnknownIssuer",
            "InvalidCertificate",
            "start one",
        ] {
            assert!(!stderr.contains(wrong), "{wrong} in {stderr}");
        }
    }
}
