//! The session handshake as pure functions: what an agent says in its `Hello`, how a relay
//! judges it, and how the agent judges the relay's `Welcome`. No sockets, no clocks.
//!
//! Internal: shared by the relay and the agent of this project; not a stable API, and hidden
//! from the documentation.

use std::time::Duration;

use sesame_proto::v1::{Hello, Settings, Welcome};

use crate::settings::{
    MIN_CHUNK_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, announced_chunk_limit,
};
use crate::{AgentKey, Error, RemoteName, SessionId};

/// The longest agent version string a relay keeps.
const MAX_AGENT_VERSION_LEN: usize = 64;

/// The agent's opening message.
pub fn hello(
    name: &RemoteName,
    agent_version: &str,
    chunk_limit: usize,
    agent_key: &AgentKey,
) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        remote: name.resource_name(),
        agent_version: agent_version.to_owned(),
        settings: Some(Settings {
            max_chunk_bytes: u32::try_from(chunk_limit).unwrap_or(u32::MAX),
            ..Settings::default()
        }),
        agent_key: agent_key.as_bytes().to_vec().into(),
    }
}

/// A `Hello` the relay accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedHello {
    /// The version both sides speak in this session.
    pub protocol_version: u32,
    /// The remote's name.
    pub name: RemoteName,
    /// The agent's description of itself, trimmed to printable ASCII.
    pub agent_version: String,
    /// The largest data payload the agent accepts.
    pub chunk_limit: usize,
    /// The agent's key, if it presented one: a session with the same key may take the name
    /// over.
    pub agent_key: Option<AgentKey>,
}

/// Judges an agent's `Hello` on the relay's side.
pub fn accept_hello(hello: Hello) -> Result<AcceptedHello, Error> {
    let protocol_version = common_version(hello.protocol_version).ok_or_else(|| {
        Error::protocol(format!(
            "the agent speaks protocol version {} and this relay needs {MIN_PROTOCOL_VERSION} \
             to {PROTOCOL_VERSION}: upgrade the agent",
            hello.protocol_version
        ))
    })?;
    let name = RemoteName::from_resource_name(&hello.remote)?;
    let chunk_limit = chunk_limit(hello.settings.as_ref(), "agent")?;
    let agent_version = hello
        .agent_version
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_AGENT_VERSION_LEN)
        .collect();
    let agent_key = match hello.agent_key.as_ref() {
        [] => None,
        bytes => Some(AgentKey::from_bytes(bytes).ok_or_else(|| {
            Error::protocol(format!(
                "an agent key has {} to {} bytes, not {}",
                AgentKey::MIN_LEN,
                AgentKey::MAX_LEN,
                bytes.len()
            ))
        })?),
    };
    Ok(AcceptedHello {
        protocol_version,
        name,
        agent_version,
        chunk_limit,
        agent_key,
    })
}

/// A `Welcome` the agent accepts.
#[derive(Debug, Clone)]
pub struct AcceptedWelcome {
    /// The session's id.
    pub session_id: SessionId,
    /// The version both sides speak.
    pub protocol_version: u32,
    /// The largest data payload the relay accepts.
    pub chunk_limit: usize,
    /// How long the relay waits for the agent to answer a dial notice.
    pub dial_timeout: Option<Duration>,
    /// How often the relay wants a heartbeat.
    pub heartbeat_interval: Option<Duration>,
}

/// Judges the relay's `Welcome` on the agent's side.
pub fn accept_welcome(welcome: Welcome) -> Result<AcceptedWelcome, Error> {
    let version = welcome.protocol_version;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(Error::protocol(format!(
            "the relay chose protocol version {version} and this agent speaks \
             {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
        )));
    }
    if welcome.session_id.is_empty() {
        return Err(Error::protocol("the relay's welcome has no session id"));
    }
    let settings = welcome.settings.as_ref();
    let duration = |d: Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok());
    let dial_timeout = duration(settings.and_then(|s| s.dial_timeout));
    let heartbeat_interval =
        duration(settings.and_then(|s| s.heartbeat_interval)).filter(|d| !d.is_zero());
    Ok(AcceptedWelcome {
        session_id: SessionId::from_wire(welcome.session_id),
        protocol_version: version,
        chunk_limit: chunk_limit(settings, "relay")?,
        dial_timeout,
        heartbeat_interval,
    })
}

/// The highest version both this side and a peer speaking up to `peer_max` speak.
fn common_version(peer_max: u32) -> Option<u32> {
    let version = peer_max.min(PROTOCOL_VERSION);
    (version >= MIN_PROTOCOL_VERSION).then_some(version)
}

fn chunk_limit(settings: Option<&Settings>, who: &str) -> Result<usize, Error> {
    let limit = announced_chunk_limit(settings.map_or(0, |s| s.max_chunk_bytes));
    if limit < MIN_CHUNK_BYTES {
        return Err(Error::protocol(format!(
            "the {who} accepts chunks of {limit} bytes, below the minimum of {MIN_CHUNK_BYTES}"
        )));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MAX_CHUNK_BYTES;

    fn name() -> RemoteName {
        RemoteName::new("pi").unwrap()
    }

    fn key() -> AgentKey {
        AgentKey::from_bytes(&[9; 16]).unwrap()
    }

    #[test]
    fn a_current_agent_is_accepted() {
        let accepted = accept_hello(hello(&name(), "sesame/0.1.0", 65536, &key())).unwrap();
        assert_eq!(
            accepted,
            AcceptedHello {
                protocol_version: PROTOCOL_VERSION,
                name: name(),
                agent_version: "sesame/0.1.0".into(),
                chunk_limit: 65536,
                agent_key: Some(key()),
            }
        );
    }

    #[test]
    fn a_newer_agent_speaks_the_relays_version() {
        let mut newer = hello(&name(), "future", 65536, &key());
        newer.protocol_version = PROTOCOL_VERSION + 5;
        assert_eq!(
            accept_hello(newer).unwrap().protocol_version,
            PROTOCOL_VERSION
        );
    }

    #[test]
    fn an_older_agent_is_told_to_upgrade() {
        let mut old = hello(&name(), "old", 65536, &key());
        old.protocol_version = 0;
        let err = accept_hello(old).unwrap_err();
        assert!(err.to_string().contains("upgrade the agent"), "{err}");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn bad_names_and_tiny_chunks_are_refused() {
        let mut bad = hello(&name(), "x", 65536, &key());
        bad.remote = "pi".into();
        assert!(matches!(accept_hello(bad), Err(Error::InvalidName { .. })));
        let tiny = hello(&name(), "x", 16, &key());
        assert!(
            accept_hello(tiny)
                .unwrap_err()
                .to_string()
                .contains("below the minimum")
        );
    }

    #[test]
    fn unset_or_huge_chunk_limits_mean_the_ceiling() {
        let mut unset = hello(&name(), "x", 0, &key());
        unset.settings = None;
        assert_eq!(accept_hello(unset).unwrap().chunk_limit, MAX_CHUNK_BYTES);
        let huge = hello(&name(), "x", usize::MAX, &key());
        assert_eq!(accept_hello(huge).unwrap().chunk_limit, MAX_CHUNK_BYTES);
    }

    #[test]
    fn agent_versions_are_trimmed_to_printable_text() {
        let noisy = hello(
            &name(),
            &format!("evil\n\x1b[31m{}", "v".repeat(100)),
            65536,
            &key(),
        );
        let kept = accept_hello(noisy).unwrap().agent_version;
        assert!(kept.starts_with("evil[31m"), "{kept:?}");
        assert_eq!(kept.len(), MAX_AGENT_VERSION_LEN);
    }

    #[test]
    fn welcomes_are_checked() {
        let welcome = |version, id: &str| Welcome {
            protocol_version: version,
            session_id: id.into(),
            remote: None,
            settings: Some(Settings {
                max_chunk_bytes: 0,
                dial_timeout: Some(prost_types::Duration {
                    seconds: 7,
                    nanos: 0,
                }),
                heartbeat_interval: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            }),
        };
        let ok = accept_welcome(welcome(PROTOCOL_VERSION, "abc")).unwrap();
        assert_eq!(ok.dial_timeout, Some(Duration::from_secs(7)));
        assert_eq!(ok.heartbeat_interval, Some(Duration::from_secs(5)));
        assert_eq!(ok.chunk_limit, MAX_CHUNK_BYTES);
        assert!(accept_welcome(welcome(PROTOCOL_VERSION + 1, "abc")).is_err());
        assert!(accept_welcome(welcome(PROTOCOL_VERSION, "")).is_err());
    }

    #[test]
    fn agent_keys_are_optional_but_must_be_long_enough() {
        let mut keyless = hello(&name(), "x", 65536, &key());
        keyless.agent_key = Default::default();
        assert_eq!(accept_hello(keyless).unwrap().agent_key, None);
        let mut short = hello(&name(), "x", 65536, &key());
        short.agent_key = vec![1; 8].into();
        assert!(matches!(accept_hello(short), Err(Error::Protocol { .. })));
    }
}
