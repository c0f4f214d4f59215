//! [`Shutdown`]: the two moments of a relay's graceful shutdown, as every part that carries
//! connections sees them.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a connection still runs once the grace period has ended, to send the statuses of
/// the calls that the cut ended: small frames, delayed only by a peer that does not read.
pub(crate) const FLUSH_AFTER_CUT: Duration = Duration::from_secs(1);

/// When the relay begins to shut down, and when its grace period ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shutdown {
    /// Cancelled when the relay begins to shut down: it accepts nothing new, and sessions
    /// drain and end.
    pub(crate) begun: CancellationToken,
    /// Cancelled when the grace period ends: open connections are cut.
    pub(crate) cut: CancellationToken,
}

impl Shutdown {
    /// What cuts one connection: the relay's cut, or, when either side's token can end, a
    /// child of it that the end of either token also cancels. The guard cancels it when the
    /// connection is gone, so that its watcher ends too.
    pub(crate) fn connection_cut(
        &self,
        agent_ended: Option<&CancellationToken>,
        dialer_ended: Option<&CancellationToken>,
    ) -> (CancellationToken, Option<DropGuard>) {
        if agent_ended.is_none() && dialer_ended.is_none() {
            return (self.cut.clone(), None);
        }
        let cut = self.cut.child_token();
        let (agent, dialer, watched) = (
            agent_ended.cloned().unwrap_or_default(),
            dialer_ended.cloned().unwrap_or_default(),
            cut.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = agent.cancelled() => watched.cancel(),
                () = dialer.cancelled() => watched.cancel(),
                () = watched.cancelled() => {}
            }
        });
        (cut.clone(), Some(cut.drop_guard()))
    }
}

impl Shutdown {
    /// Runs an HTTP connection; when the shutdown begins, lets it finish its open requests
    /// (`graceful_shutdown` tells it to), and cuts it at the cut, once its calls' final
    /// statuses are sent (at most [`FLUSH_AFTER_CUT`] later).
    pub(crate) async fn drive<C>(
        &self,
        connection: C,
        graceful_shutdown: impl FnOnce(&mut Pin<&mut C>),
    ) -> Result<(), hyper::Error>
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        let mut connection = pin!(connection);
        tokio::select! {
            result = &mut connection => return result,
            () = self.begun.cancelled() => graceful_shutdown(&mut connection),
        }
        tokio::select! {
            result = &mut connection => return result,
            () = self.cut.cancelled() => {}
        }
        // The cut ends every call with an error status; the connection, already going away,
        // ends by itself once they are sent.
        tokio::time::timeout(FLUSH_AFTER_CUT, connection)
            .await
            .unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_cut_by_the_relay_or_by_the_end_of_either_token() {
        let shutdown = Shutdown::default();
        let (plain, guard) = shutdown.connection_cut(None, None);
        assert!(guard.is_none(), "nothing to watch without tokens");

        let agent = CancellationToken::new();
        let (by_agent, _guard) = shutdown.connection_cut(Some(&agent), None);
        let dialer = CancellationToken::new();
        let (by_dialer, _guard) = shutdown.connection_cut(None, Some(&dialer));
        agent.cancel();
        by_agent.cancelled().await;
        assert!(!by_dialer.is_cancelled() && !plain.is_cancelled());

        shutdown.cut.cancel();
        by_dialer.cancelled().await;
        assert!(plain.is_cancelled());
        assert!(!dialer.is_cancelled(), "the relay's cut ends no token");
    }
}
