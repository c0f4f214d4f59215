//! Carrying out what the control logic decided: accepting, forwarding and refusing dials,
//! answering who waits for a port, and reporting events. The only place where a relay's
//! control message leads to I/O.

use std::sync::Arc;

use tracing::debug;

use super::control::{Action, Dial};
use super::link::Link;
use super::shared::Shared;
use super::target::Target;
use crate::{Error, format_duration, io_reason, join_tcp};

/// Carries out `actions`, decided about a message that arrived on `link`, in order.
pub(super) fn execute(shared: &Arc<Shared>, link: &Arc<Link>, actions: Vec<Action>) {
    for action in actions {
        match action {
            Action::Accept { dial, listener } => {
                listener.send(shared.accept(link, dial));
            }
            Action::Forward { dial, target } => {
                tokio::spawn(forward(shared.clone(), link.clone(), dial, target));
            }
            Action::Refuse { dial, error } => shared.refuse(link, dial, error),
            Action::Answer { port, answer } => shared.answer(port, &answer),
            Action::Emit(event) => shared.observer.emit(event),
        }
    }
}

/// Serves one dial to a forwarded port: connects to the target first, so that a refused
/// target fails the dial with a clear reason, then accepts the dial and copies bytes both
/// ways until both directions have ended.
async fn forward(shared: Arc<Shared>, link: Arc<Link>, dial: Dial, target: Target) {
    let limit = link.target_timeout();
    let tcp = match tokio::time::timeout(limit, target.connect()).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            let reason = format!("{target}: {}", io_reason(&error));
            return shared.refuse(&link, dial, Error::TargetRefused { reason });
        }
        Err(_) => {
            let reason = format!("{target}: no answer within {}", format_duration(limit));
            return shared.refuse(&link, dial, Error::TargetRefused { reason });
        }
    };
    let port = dial.port;
    let conn = shared.accept(&link, dial);
    if let Err(error) = join_tcp(tcp, conn, &target.to_string()).await {
        debug!(port, %target, %error, "forwarded connection failed");
    }
}
