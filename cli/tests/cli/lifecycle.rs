//! Starting, stopping and losing the processes: the relay drains gracefully, agents come
//! back to a relay that returns, transfers through a dead relay or agent fail loudly, and a
//! remote whose agent dies disappears.

use crate::util::*;

#[test]
fn sigterm_drains_the_relay_and_its_agents_return_to_its_successor() {
    let mut relay = Relay::start();
    let ticker = Ticker::start();
    let mut agent = relay.expose("phoenix", &[&ticker.port.to_string()]);

    relay.proc.signal("TERM");
    let (status, output) = relay.proc.wait_exit();
    assert!(status.success(), "{output}");
    assert!(output.contains("relay stopped"), "{output}");
    agent.wait_for(|line| line == "the relay is draining: open connections may run for 2s");
    agent.wait_for(|line| line.starts_with("lost the relay: "));
    agent.wait_for(|line| line.starts_with("relay unreachable (connection refused), retrying in "));
    assert!(agent.is_running(), "{}", agent.transcript());

    // A new relay on the same address: the agent registers again, with its port.
    let successor = relay.successor();
    agent.wait_for(|line| line.starts_with("reconnected"));
    let mut reader = successor.sesame(&[
        "connect",
        "phoenix",
        "--port",
        &ticker.port.to_string(),
        "--stdio",
    ]);
    reader.wait_for(|line| line == "tick 3");
}

#[test]
fn a_killed_relay_fails_open_connections_and_everyone_recovers_when_it_returns() {
    let relay = Relay::start();
    let ticker = Ticker::start();
    let port = ticker.port.to_string();
    let mut agent = relay.expose("steady", &[&port]);
    let mut listening = relay.sesame(&["connect", "steady", "--port", &port]);
    let line = listening.wait_for(|line| line.starts_with("listening on "));
    let local = line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let mut reader = relay.sesame(&["connect", "steady", "--port", &port, "--stdio"]);
    reader.wait_for(|line| line == "tick 3");

    relay.proc.signal("KILL");
    // The transfer in progress fails loudly at once, rather than hanging or ending quietly.
    let (status, output) = reader.wait_exit();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("[stderr] error: "), "{output}");
    agent.wait_for(|line| line.starts_with("lost the relay: "));

    // While the relay is away, `connect --listen` still accepts, and closes what it cannot carry.
    let mut early = std::net::TcpStream::connect(&local).unwrap();
    early.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut buf = [0; 64];
    let failed = matches!(std::io::Read::read(&mut early, &mut buf), Ok(0) | Err(_));
    assert!(failed, "a connection through an absent relay carried data");
    assert!(listening.is_running(), "{}", listening.transcript());

    let _back = relay.successor();
    agent.wait_for(|line| line.starts_with("reconnected"));
    // The same `connect --listen` serves new connections through the new relay.
    let mut late = std::net::TcpStream::connect(&local).unwrap();
    late.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut late), &mut first).unwrap();
    assert_eq!(first, "tick 0\n");
}

#[test]
fn sigint_stops_an_agent_and_its_remote_goes_away() {
    let relay = Relay::start();
    let mut agent = relay.expose("polite", &[&closed_port().to_string()]);
    agent.signal("INT");
    let (status, output) = agent.wait_exit();
    assert!(status.success(), "{output}");
    wait_until_unlisted(&relay, "polite");
}

#[test]
fn a_killed_agent_leaves_the_list_and_dials_fail_clearly() {
    let relay = Relay::start();
    let ticker = Ticker::start();
    let port = ticker.port.to_string();
    let agent = relay.expose("doomed", &[&port]);
    assert!(text(&relay.run(&["ls"], b"").stdout).contains("doomed"));
    let mut reader = relay.sesame(&["connect", "doomed", "--port", &port, "--stdio"]);
    reader.wait_for(|line| line == "tick 3");

    agent.signal("KILL");
    let (status, output) = reader.wait_exit();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("[stderr] error: "), "{output}");
    wait_until_unlisted(&relay, "doomed");
    let output = relay.run(&["connect", "doomed", "--port", "1", "--stdio"], b"");
    assert!(text(&output.stderr).starts_with(r#"error: no remote named "doomed""#));
}

/// Lists the relay's remotes until `name` is gone; each listing is a full round trip, so a
/// bounded number of them gives the relay ample time to notice.
fn wait_until_unlisted(relay: &Relay, name: &str) {
    for _ in 0..200 {
        let listed = text(&relay.run(&["ls", "--json"], b"").stdout);
        if !listed.contains(&format!("\"{name}\"")) {
            return;
        }
    }
    panic!("{name} is still listed");
}

#[test]
fn help_names_every_command() {
    let output = sesame_run(&["--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for command in ["relay", "expose", "connect", "ls"] {
        assert!(help.contains(&format!("  {command} ")), "{help}");
    }
}
