//! [`Listener`]: the connections dialed to one exposed port, served in-process.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use super::session::Session;
use crate::{Connection, Error};

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
    pub(super) fn new(session: Session, port: u16, incoming: mpsc::Receiver<Connection>) -> Self {
        Listener {
            session,
            port,
            incoming,
            ended: false,
        }
    }

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
