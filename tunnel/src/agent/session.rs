//! [`Session`]: an agent's registration with a relay, kept up across reconnects. What a
//! session does lives below it: the protocol logic in `control`, the state its handles and
//! its task share in `shared`, the task itself in `supervisor`. [`Session::listen`] and
//! [`Session::forward`] are defined with the handles they return.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::DropGuard;
use tracing::{Instrument, info_span};

use super::link::Registration;
use super::observe::{Event, Stats};
use super::publish::Published;
use super::reconnect::Reconnect;
use super::shared::Shared;
use super::supervisor::supervise;
use crate::transport::DEFAULT_RELAY;
use crate::{
    AgentKey, Error, RelayAccess, RelayChannel, RelayUrl, RemoteName, SessionId, TransportSettings,
};

/// Configures and opens a [`Session`].
#[derive(Debug)]
#[must_use]
pub struct SessionBuilder {
    name: RemoteName,
    relay: Option<RelayAccess>,
    channel: Option<RelayChannel>,
    agent_version: String,
    settings: TransportSettings,
    reconnect: Option<Reconnect>,
}

impl SessionBuilder {
    /// The relay to register with, how to trust it and the token to present (or just its
    /// address); [`DEFAULT_RELAY`](crate::DEFAULT_RELAY), without a token, unless set.
    pub fn relay(mut self, relay: impl Into<RelayAccess>) -> Self {
        self.relay = Some(relay.into());
        self
    }

    /// An existing channel to the relay, used instead of connecting to an address, for the
    /// first session and for every reconnect.
    pub fn channel(mut self, channel: RelayChannel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// How the agent describes itself to others (`name/version`); this crate's by default.
    pub fn agent_version(mut self, agent_version: impl Into<String>) -> Self {
        self.agent_version = agent_version.into();
        self
    }

    /// The transport tuning, including how soon a dead relay is noticed.
    pub fn transport(mut self, settings: TransportSettings) -> Self {
        self.settings = settings;
        self
    }

    /// How to reconnect after losing the relay; [`Reconnect::default`] unless set.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = Some(reconnect);
        self
    }

    /// Never reconnect: the session ends when its relay is lost.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// Connects, registers the remote, and returns the open session.
    ///
    /// Fails with [`Error::NameInUse`] when another agent holds the name, and with
    /// [`Error::RelayUnreachable`] when the relay cannot be reached: the first connection
    /// fails fast, so that a wrong address shows at once. Once connected, the session
    /// reconnects by itself when it loses the relay, as configured with
    /// [`reconnect`](Self::reconnect).
    pub async fn connect(self) -> Result<Session, Error> {
        let relay = match self.relay {
            Some(relay) => relay,
            None => RelayAccess::from(
                DEFAULT_RELAY
                    .parse::<RelayUrl>()
                    .expect("the default relay address is valid"),
            ),
        };
        let registration = Registration {
            name: self.name,
            relay,
            channel: self.channel,
            agent_key: AgentKey::generate(),
            agent_version: self.agent_version,
            settings: self.settings,
        };
        let shared = Arc::new(Shared::new(registration, self.reconnect));
        let (link, responses) = shared.registration.open(&shared.shutdown).await?;
        // Nothing is exposed yet: this only makes it the session's link.
        shared.install(&link);
        let span = info_span!("session", remote = %shared.registration.name);
        tokio::spawn(supervise(shared.clone(), link, responses).instrument(span));
        let shutdown = shared.shutdown.clone().drop_guard();
        Ok(Session {
            handle: Arc::new(Handle {
                shared,
                _shutdown: shutdown,
            }),
        })
    }
}

/// An agent's session with a relay: its remote is registered for as long as the session
/// lives, across reconnects.
///
/// Cheap to clone. The session stays open while any clone, [`Listener`](crate::Listener) or
/// [`Forward`](crate::Forward) of it exists, until [`close`](Session::close) is called, or
/// until the relay refuses it for good. When the relay is lost, the session reconnects by
/// itself (unless told not to), registers the name again and exposes the same ports;
/// listeners and forwards carry on unchanged.
#[derive(Clone, Debug)]
pub struct Session {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl Session {
    /// Starts configuring a session for the remote `name`.
    pub fn builder(name: RemoteName) -> SessionBuilder {
        SessionBuilder {
            name,
            relay: None,
            channel: None,
            agent_version: concat!("sesame/", env!("CARGO_PKG_VERSION")).to_owned(),
            settings: TransportSettings::default(),
            reconnect: Some(Reconnect::default()),
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The relay's id of the current session; `None` while the agent is reconnecting.
    pub fn id(&self) -> Option<SessionId> {
        self.shared().session_id()
    }

    /// The remote's name.
    pub fn name(&self) -> &RemoteName {
        &self.shared().registration.name
    }

    /// The relay's address.
    pub fn relay(&self) -> &RelayUrl {
        &self.shared().registration.relay.url
    }

    /// Where the relay currently publishes `port`; empty for a port published nowhere or not
    /// exposed.
    pub fn published(&self, port: u16) -> Published {
        self.shared().published(port)
    }

    /// Totals of the session's connections so far.
    pub fn stats(&self) -> Stats {
        self.shared().observer.stats()
    }

    /// Subscribes to the session's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared().observer.subscribe()
    }

    /// Waits until the session ends for good and says why.
    pub async fn closed(&self) -> Error {
        let reason = self.shared().closed().await;
        Error::SessionClosed { reason }
    }

    /// Ends the session: the relay forgets the remote. Open connections keep running.
    pub fn close(&self) {
        self.shared().shutdown.cancel();
    }
}
