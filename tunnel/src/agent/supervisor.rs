//! Keeping a session up: each link's heartbeats and silence timer, and reconnecting with
//! backoff when a link is lost.

use std::error::Error as _;
use std::sync::Arc;

use sesame_proto::v1::{Heartbeat, OpenSessionResponse, open_session_request};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::dispatch::execute;
use super::link::Link;
use super::observe::Event;
use super::reconnect::{Reconnect, is_permanent};
use super::shared::Shared;
use crate::{Error, format_duration, one_line, root_cause_phrase};

/// How one link ended.
enum LinkEnd {
    /// The agent closed the session.
    Closed,
    /// The relay was lost, or ended the session for a reason that may pass.
    Lost(Error),
}

/// Runs the session: each link until it ends, then reconnects with backoff, until the agent
/// closes the session or the relay refuses it for good.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    mut link: Arc<Link>,
    mut responses: Streaming<OpenSessionResponse>,
) {
    let mut failures = 0;
    let reason = 'session: loop {
        let started = Instant::now();
        let end = run_link(&shared, &link, responses).await;
        link.end.cancel();
        shared.uninstall(&link);
        let error = match end {
            LinkEnd::Closed => break "the agent closed the session".to_owned(),
            LinkEnd::Lost(error) => error,
        };
        let Some(policy) = shared.reconnect.clone() else {
            break one_line(&error);
        };
        if is_permanent(&error) {
            break one_line(&error);
        }
        let reason = match error {
            Error::SessionClosed { reason } => reason,
            other => other.to_string(),
        };
        info!(%reason, "lost the relay");
        shared.observer.emit(Event::Disconnected { reason });
        if started.elapsed() >= policy.max_delay {
            failures = 0;
        }
        let mut last_error = None;
        (link, responses) = loop {
            let delay = policy.delay(failures, Reconnect::jitter());
            failures = failures.saturating_add(1);
            shared.observer.emit(Event::Reconnecting {
                delay,
                error: last_error.take(),
            });
            let attempt = async {
                tokio::time::sleep(delay).await;
                shared.registration.open(&shared.shutdown).await
            };
            let outcome = tokio::select! {
                () = shared.shutdown.cancelled() => break 'session "the agent closed the session".to_owned(),
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(opened) => break opened,
                Err(error) if is_permanent(&error) => break 'session one_line(&error),
                Err(error) => {
                    debug!(%error, "reconnecting failed");
                    last_error = Some(match &error {
                        Error::RelayUnreachable { .. } => root_cause_phrase(&error),
                        other => other.to_string(),
                    });
                }
            }
        };
        let confirmations = shared.install(&link);
        let observer = shared.observer.clone();
        let timeout = shared.registration.settings.handshake_timeout;
        tokio::spawn(async move {
            let confirmed = futures_util::future::join_all(
                confirmations
                    .into_iter()
                    .map(|(port, answer)| async move { (port, answer.await) }),
            );
            let Ok(answers) = tokio::time::timeout(timeout, confirmed).await else {
                warn!("reconnected, but the relay did not confirm every port in time");
                return;
            };
            let mut refused = false;
            for (port, answer) in answers {
                if let Ok(Err(error)) = answer {
                    warn!(port, %error, "the relay refused to expose the port again");
                    let error = error.to_string();
                    observer.emit(Event::ExposeFailed { port, error });
                    refused = true;
                }
            }
            if !refused {
                info!("reconnected to the relay");
                observer.emit(Event::Reconnected);
            }
        });
    };
    debug!(%reason, "session closed");
    shared.close(reason);
}

/// Reads one link's control messages and sends its heartbeats, until the link ends.
async fn run_link(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut responses: Streaming<OpenSessionResponse>,
) -> LinkEnd {
    let silence = shared.registration.settings.dead_peer_timeout();
    let mut heartbeats = tokio::time::interval_at(
        Instant::now() + link.heartbeat_interval,
        link.heartbeat_interval,
    );
    heartbeats.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sequence = 0;
    let quiet = tokio::time::sleep(silence);
    tokio::pin!(quiet);
    loop {
        let message = tokio::select! {
            () = shared.shutdown.cancelled() => return LinkEnd::Closed,
            () = &mut quiet => {
                let reason = format!("no word from the relay for {}", format_duration(silence));
                return LinkEnd::Lost(Error::SessionClosed { reason });
            }
            _ = heartbeats.tick() => {
                sequence += 1;
                link.send_control(open_session_request::Message::Heartbeat(Heartbeat { sequence }));
                continue;
            }
            message = responses.message() => message,
        };
        quiet.as_mut().reset(Instant::now() + silence);
        match message {
            Ok(Some(message)) => match shared.on_message(message) {
                Ok(actions) => execute(shared, link, actions),
                Err(error) => {
                    warn!(%error, "ending the session");
                    return LinkEnd::Lost(error);
                }
            },
            Ok(None) => {
                return LinkEnd::Lost(Error::SessionClosed {
                    reason: "the relay ended the session".to_owned(),
                });
            }
            // A status with a source was not sent by the relay: the connection broke.
            Err(status) if status.source().is_some() => {
                let reason = format!("the connection broke ({})", root_cause_phrase(&status));
                return LinkEnd::Lost(Error::SessionClosed { reason });
            }
            Err(status) => return LinkEnd::Lost(Error::from_status(status)),
        }
    }
}
