//! Starting, stopping and losing the processes: the relay shuts down gracefully, and a
//! remote whose agent dies disappears.

use crate::util::*;

#[test]
fn sigterm_stops_the_relay_and_its_agents_hear_why() {
    let mut relay = Relay::start();
    let mut agent = relay.expose("leaving", &[&closed_port().to_string()]);

    relay.proc.signal("TERM");
    let (status, output) = relay.proc.wait_exit();
    assert!(status.success(), "{output}");
    assert!(output.contains("relay stopped"), "{output}");

    let (status, output) = agent.wait_exit();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("the relay is draining"), "{output}");
    assert!(
        output.contains("error: session closed: the relay is shutting down"),
        "{output}"
    );
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
    let agent = relay.expose("doomed", &[&closed_port().to_string()]);
    assert!(text(&relay.run(&["ls"], b"").stdout).contains("doomed"));

    agent.signal("KILL");
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
