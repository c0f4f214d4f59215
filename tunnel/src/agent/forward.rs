//! [`Forward`]: an exposed port whose connections the session forwards to a [`Target`].

use super::control::Route;
use super::publish::Publish;
use super::session::Session;
use super::target::Target;
use crate::Error;

// Defined here rather than with the rest of `Session`, so that the session's module does not
// depend on the handles it returns.
impl Session {
    /// Exposes `port` and forwards each connection dialed to it to `target`.
    ///
    /// The agent connects to the target when a dial arrives; if the target refuses, the dial
    /// fails with [`Error::TargetRefused`] and the session carries on.
    pub async fn forward(&self, port: u16, target: Target) -> Result<Forward, Error> {
        self.forward_with(port, target, Publish::none()).await
    }

    /// Exposes `port`, published as `publish` says, and forwards each of its connections to
    /// `target`. Fails like [`listen_with`](Self::listen_with).
    pub async fn forward_with(
        &self,
        port: u16,
        target: Target,
        publish: Publish,
    ) -> Result<Forward, Error> {
        self.shared()
            .expose(port, Route::Forward(target.clone()), publish)
            .await?;
        Ok(Forward {
            session: self.clone(),
            port,
            target,
        })
    }
}

/// An exposed port whose connections the session forwards to a [`Target`]. Dropping it
/// withdraws the port; connections already open keep running.
#[derive(Debug)]
pub struct Forward {
    session: Session,
    port: u16,
    target: Target,
}

impl Forward {
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
