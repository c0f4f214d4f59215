//! The dialer: opens connections to the ports that remotes expose.

use futures_util::StreamExt;
use sesame_proto::v1::{DialRequest, DialResponse, DialTarget, dial_request, dial_response};

use crate::connection::{ConnectionInfo, inbound, outbound};
use crate::settings::MAX_CHUNK_BYTES;
use crate::wire::{self, DIAL_PATH};
use crate::{Connection, Error, RelayAccess, RelayChannel, RemoteName, TransportSettings};

/// Opens connections to remotes through a relay. Cheap to clone: clones share one HTTP/2
/// connection, and each dial is a new stream on it.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use sesame_tunnel::{Dialer, RemoteName};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// use sesame_tunnel::{RelayAccess, RelayUrl, Token, Trust};
/// let url: RelayUrl = "https://relay.example.com".parse()?;
/// let token: Token = std::env::var("SESAME_TOKEN")?.parse()?;
/// let dialer = Dialer::connect(&RelayAccess::new(url, Trust::SystemRoots, Some(token))).await?;
/// let mut conn = dialer.dial(&RemoteName::new("device-42")?, 22).await?;
/// let mut banner = [0; 64];
/// let n = conn.read(&mut banner).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Dialer {
    channel: RelayChannel,
    settings: TransportSettings,
}

impl Dialer {
    /// Connects to a relay with default settings.
    pub async fn connect(relay: &RelayAccess) -> Result<Self, Error> {
        let settings = TransportSettings::default();
        let channel = relay.connect(&settings).await?;
        Ok(Dialer::new(channel, settings))
    }

    /// A dialer over an existing channel to a relay.
    pub fn new(channel: RelayChannel, settings: TransportSettings) -> Self {
        Dialer { channel, settings }
    }

    /// Opens a connection to `port` of `remote`.
    ///
    /// Returns once the remote's agent has accepted the connection; fails with
    /// [`Error::RemoteNotFound`], [`Error::PortNotExposed`], [`Error::TargetRefused`], or a
    /// timeout when the agent does not answer.
    pub async fn dial(&self, remote: &RemoteName, port: u16) -> Result<Connection, Error> {
        let opening = DialRequest {
            message: Some(dial_request::Message::Target(DialTarget {
                remote: remote.resource_name(),
                port: u32::from(port),
            })),
        };
        let (writer, requests) = outbound(opening, &self.settings, MAX_CHUNK_BYTES);
        let mut responses =
            wire::call::<_, DialResponse, _>(self.channel.clone(), DIAL_PATH, requests)
                .await?
                .into_inner();
        match responses.next().await.transpose()? {
            Some(first) if matches!(first.message, Some(dial_response::Message::Opened(_))) => {}
            Some(_) => {
                return Err(Error::protocol(
                    "the relay's first answer to a dial was not `opened`",
                ));
            }
            None => {
                return Err(Error::protocol(
                    "the relay ended the dial without answering",
                ));
            }
        }
        let info = ConnectionInfo::new(remote.clone(), port, None);
        Ok(Connection::new(inbound(responses), writer, info, None))
    }
}
