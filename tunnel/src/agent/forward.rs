//! Forwarding an exposed port to a [`Target`].

use std::sync::Arc;

use tracing::debug;

use super::link::Link;
use super::session::{Session, Shared};
use super::target::Target;
use crate::{Error, Ticket, format_duration, io_reason, join_tcp};

/// An exposed port whose connections the session forwards to a [`Target`]. Dropping it
/// withdraws the port; connections already open keep running.
#[derive(Debug)]
pub struct Forward {
    session: Session,
    port: u16,
    target: Target,
}

impl Forward {
    pub(super) fn new(session: Session, port: u16, target: Target) -> Self {
        Forward {
            session,
            port,
            target,
        }
    }

    /// The exposed port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its connections go.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.session.shared().unexpose(self.port);
    }
}

/// Serves one dial notice: connects to the target first, so that a refused target fails the
/// dial with a clear reason, then accepts the dial and copies bytes both ways until both
/// directions have ended.
pub(super) async fn serve(
    shared: Arc<Shared>,
    link: Arc<Link>,
    ticket: Ticket,
    port: u16,
    peer: String,
    target: Target,
) {
    let limit = link.target_timeout();
    let tcp = match tokio::time::timeout(limit, target.connect()).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            let reason = format!("{target}: {}", io_reason(&error));
            return shared.refuse(&link, ticket, port, peer, Error::TargetRefused { reason });
        }
        Err(_) => {
            let reason = format!("{target}: no answer within {}", format_duration(limit));
            return shared.refuse(&link, ticket, port, peer, Error::TargetRefused { reason });
        }
    };
    let conn = shared.accept(&link, ticket, port, peer);
    if let Err(error) = join_tcp(tcp, conn, &target.to_string()).await {
        debug!(port, %target, %error, "forwarded connection failed");
    }
}
