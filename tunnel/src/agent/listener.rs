//! [`Listener`]: the connections dialed to one exposed port, served in-process.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use super::control::Route;
use super::publish::Publish;
use super::session::Session;
use crate::{Connection, Error};

/// How many accepted connections may wait for a listener to take them.
const LISTENER_BACKLOG: usize = 128;

// Defined here rather than with the rest of `Session`, so that the session's module does not
// depend on the handles it returns.
impl Session {
    /// Exposes `port` and returns the stream of connections dialed to it.
    ///
    /// Returns once the relay has confirmed the port: from then on dials reach the listener.
    pub async fn listen(&self, port: u16) -> Result<Listener, Error> {
        self.listen_with(port, Publish::none()).await
    }

    /// Exposes `port`, published as `publish` says, and returns the stream of connections
    /// dialed to it or made to its public endpoints.
    ///
    /// Fails with the relay's refusal when it cannot publish the port (a TCP port that is
    /// taken, HTTP on a relay without a domain); the session carries on.
    pub async fn listen_with(&self, port: u16, publish: Publish) -> Result<Listener, Error> {
        let (sender, incoming) = mpsc::channel(LISTENER_BACKLOG);
        self.shared()
            .expose(port, Route::Listener(sender), publish)
            .await?;
        Ok(Listener {
            session: self.clone(),
            port,
            incoming,
            ended: false,
        })
    }
}

/// The connections dialed to one exposed port: a `Stream` of [`Connection`]s.
///
/// It yields `Err` once if the session ends, then ends. Dropping it withdraws the port;
/// connections already accepted keep running. It works as the `incoming` of a server, for
/// example tonic's `serve_with_incoming`.
#[derive(Debug)]
pub struct Listener {
    session: Session,
    port: u16,
    incoming: mpsc::Receiver<Connection>,
    ended: bool,
}

impl Listener {
    /// The exposed port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The session the port belongs to.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Stream for Listener {
    type Item = Result<Connection, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.incoming.poll_recv(cx) {
            Poll::Ready(Some(conn)) => Poll::Ready(Some(Ok(conn))),
            Poll::Ready(None) => {
                self.ended = true;
                let reason = self.session.shared().close_reason();
                Poll::Ready(Some(Err(Error::SessionClosed { reason })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.session.shared().unexpose(self.port);
        // Connections nobody took are refused, as a closing TCP listener resets its backlog.
        self.incoming.close();
        while let Ok(conn) = self.incoming.try_recv() {
            conn.reset("the listener closed");
        }
    }
}
