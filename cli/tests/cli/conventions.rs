//! What a command-line tool owes its users beyond its commands: shell completions, a manual
//! page, documented exit codes, and JSON from every command that prints data.

use std::process::Command;

use crate::util::*;

#[test]
fn completions_load_in_bash_and_the_manual_covers_every_command() {
    require("bash");
    let script = sesame_run(&["completions", "bash"]);
    assert!(script.status.success(), "{}", text(&script.stderr));
    let path = scratch_dir().join("sesame.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(format!("source {} && complete -p sesame", path.display()));
    let loaded = run(bash, b"");
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    assert!(
        text(&loaded.stdout).contains("_sesame"),
        "{}",
        text(&loaded.stdout)
    );
    for shell in ["zsh", "fish"] {
        let script = sesame_run(&["completions", shell]);
        assert!(
            script.status.success() && !script.stdout.is_empty(),
            "{shell}"
        );
    }

    let page = sesame_run(&["man"]);
    assert!(page.status.success(), "{}", text(&page.stderr));
    let page = text(&page.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH sesame 1"),
        "{page}"
    );
    for command in [
        "relay",
        "expose",
        "connect",
        "ls",
        "login",
        "logout",
        "completions",
    ] {
        assert!(
            page.contains(&format!(".TH sesame-{command} ")),
            "{command} in the manual"
        );
    }
    assert!(
        page.contains("Exit codes: 0 when"),
        "the exit codes are in the manual"
    );
}

#[test]
fn exit_codes_are_0_1_and_2() {
    assert_eq!(sesame_run(&["completions", "bash"]).status.code(), Some(0));
    let usage = sesame_run(&["ls", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
    let closed = closed_port();
    let failed = sesame_run(&["--relay", &format!("https://127.0.0.1:{closed}"), "ls"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(text(&failed.stderr).starts_with("error: "));
}

#[test]
fn token_commands_print_json_when_asked() {
    let relay = Relay::start();
    let args = [
        "relay",
        "token",
        "create",
        "--scope",
        "connect:*",
        "--label",
        "bot",
        "--json",
    ];
    let output = relay.run(&args, b"");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let secret = created["secret"]
        .as_str()
        .expect("the secret, shown only now");
    assert!(secret.starts_with("sesame_"), "{created}");
    assert_eq!(created["label"], "bot");
    assert_eq!(created["scopes"], serde_json::json!(["connect:*"]));
    let id = created["id"].as_str().unwrap();
    assert!(secret.contains(id), "{created}");

    let output = relay.run(&["relay", "token", "revoke", id, "--json"], b"");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let revoked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(revoked["id"], id);
    assert!(revoked["revoked"].is_string(), "{revoked}");
}

#[test]
fn output_to_a_closed_or_full_stdout_ends_cleanly() {
    require("bash");
    // The reader of a pipe stops early: no panic, and success.
    let mut piped = Command::new("bash");
    let sesame = env!("CARGO_BIN_EXE_sesame");
    piped.arg("-c").arg(format!(
        "set -o pipefail; {sesame} completions bash | head -c 10 > /dev/null"
    ));
    let output = run(piped, b"");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        !text(&output.stderr).contains("panicked"),
        "{}",
        text(&output.stderr)
    );
    // A full disk is an error that says so.
    let mut full = Command::new("bash");
    full.arg("-c").arg(format!("{sesame} man > /dev/full"));
    let output = run(full, b"");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot write to standard output: no space left"),
        "{stderr}"
    );
}

#[test]
fn an_expiry_beyond_what_can_be_written_is_refused_before_any_token_is_made() {
    let relay = Relay::start();
    for (expires, refusal) in [
        ("9000y", "a token can expire on 9999-12-31 at the latest"),
        ("0s", "--expires must be longer than 0s"),
    ] {
        let args = [
            "relay",
            "token",
            "create",
            "--scope",
            "connect:*",
            "--expires",
            expires,
        ];
        let output = relay.run(&args, b"");
        assert_eq!(output.status.code(), Some(1), "{expires}");
        assert!(
            text(&output.stderr).contains(refusal),
            "{}",
            text(&output.stderr)
        );
    }
    let listed = relay.run(&["relay", "token", "ls", "--json"], b"");
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let tokens: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        tokens.as_array().unwrap().len(),
        1,
        "only the admin token: {tokens}"
    );
}
