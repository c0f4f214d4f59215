//! What `sesame expose` shows while it runs: on a terminal, a live status line; on a pipe,
//! one plain line per event.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sesame_tunnel::{Event, Session, Stats, format_duration};
use tokio::sync::broadcast::error::RecvError;

use crate::logging;

/// How often the status line refreshes.
const REFRESH: Duration = Duration::from_millis(250);

/// Shows the session's activity until the session ends, including what happened just before.
pub(crate) async fn show(session: &Session) {
    if std::io::stdout().is_terminal() {
        live_line(session).await
    } else {
        plain_lines(session).await
    }
}

fn summary(stats: Stats) -> String {
    format!(
        "{} open, {} total, {} in, {} out",
        stats.connections_open,
        stats.connections_total,
        HumanBytes(stats.bytes_in),
        HumanBytes(stats.bytes_out)
    )
}

async fn live_line(session: &Session) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("the template is valid"));
    bar.enable_steady_tick(REFRESH);
    logging::attach_status_line(bar.clone());
    let mut refresh = tokio::time::interval(REFRESH);
    let print = |event: Event| match event {
        Event::Opened { .. } | Event::Closed { .. } => {}
        _ => {
            if let Some(line) = describe(&event) {
                bar.println(line);
            }
        }
    };
    let updates = async {
        loop {
            refresh.tick().await;
            bar.set_message(summary(session.stats()));
        }
    };
    tokio::select! {
        () = updates => {}
        () = each_event(session, print) => {}
    }
    bar.finish_and_clear();
}

async fn plain_lines(session: &Session) {
    each_event(session, |event| {
        if let Some(line) = describe(&event) {
            println!("{line}");
        }
    })
    .await
}

/// Calls `handle` for each event until the session ends, then for those already queued.
async fn each_event(session: &Session, mut handle: impl FnMut(Event)) {
    let mut events = session.events();
    let closed = session.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Ok(event) => handle(event),
                Err(RecvError::Lagged(missed)) => println!("({missed} events not shown)"),
                Err(RecvError::Closed) => return,
            },
            _ = &mut closed => break,
        }
    }
    while let Ok(event) = events.try_recv() {
        handle(event);
    }
}

fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::Opened { port, peer } => format!("port {port}: connection from {peer} opened"),
        Event::Closed {
            port,
            peer,
            bytes_in,
            bytes_out,
            error,
        } => {
            let outcome = error.as_ref().map(|e| format!(", {e}")).unwrap_or_default();
            format!(
                "port {port}: connection from {peer} closed ({} in, {} out{outcome})",
                HumanBytes(*bytes_in),
                HumanBytes(*bytes_out)
            )
        }
        Event::DialFailed { port, peer, error } => {
            format!("port {port}: dial from {peer} failed: {error}")
        }
        Event::Draining { grace: Some(grace) } => format!(
            "the relay is draining: open connections may run for {}",
            format_duration(*grace)
        ),
        Event::Draining { grace: None } => "the relay is draining".to_owned(),
        Event::Disconnected { reason } => format!("lost the relay: {reason}"),
        Event::Reconnecting { delay, error: None } => {
            format!("reconnecting in {}", format_duration(*delay))
        }
        Event::Reconnecting {
            delay,
            error: Some(error),
        } => format!(
            "relay unreachable ({error}), retrying in {}",
            format_duration(*delay)
        ),
        Event::Reconnected => "reconnected: the remote and its ports are back".to_owned(),
        Event::Republished { port, published } => {
            format!("port {port} is now public at {published}")
        }
        Event::ExposeFailed { port, error } => {
            format!("port {port} is not exposed any more: {error}")
        }
        _ => return None,
    })
}
