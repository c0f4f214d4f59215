//! The errors of the protocol core, and how they travel as gRPC statuses.
//!
//! Every error the relay or an agent reports to a peer is a [`tonic::Status`] whose details
//! carry a `google.rpc.ErrorInfo` with a machine-readable reason (`REMOTE_NOT_FOUND`, ...) in
//! the [`ERROR_DOMAIN`] domain. [`Error::from_status`] turns such a status back into the
//! matching variant, so a client matches on [`Error`] rather than parsing messages.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of the reasons Sesame reports.
pub const ERROR_DOMAIN: &str = "sesame.dev";

/// What can go wrong between agents, dialers and the relay.
///
/// Messages are lowercase and name what failed; the CLI prints them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connected remote has this name.
    #[error("no remote named {name:?}")]
    RemoteNotFound {
        /// The name asked for.
        name: String,
    },
    /// The remote is connected but does not expose this port.
    #[error("remote {name:?} does not expose port {port}")]
    PortNotExposed {
        /// The remote's name.
        name: String,
        /// The port asked for.
        port: u16,
    },
    /// The remote's agent could not connect to the target behind the port.
    #[error("target refused: {reason}")]
    TargetRefused {
        /// What the agent saw, for example `localhost:8080: connection refused`.
        reason: String,
    },
    /// Another session holds this remote name.
    #[error("remote name {name:?} is already in use by another agent")]
    NameInUse {
        /// The name asked for.
        name: String,
    },
    /// The name is not a valid remote name.
    #[error("invalid remote name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// This session already exposes the port.
    #[error("port {port} is already exposed in this session")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// The two sides share no protocol version, or one broke the protocol.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What went wrong.
        reason: String,
    },
    /// The relay could not be reached at all.
    #[error("cannot reach relay at {relay}")]
    RelayUnreachable {
        /// The relay's address.
        relay: String,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The relay's certificate cannot be checked as asked (an unusable CA file, no system
    /// authorities, a plaintext relay where a certificate was expected).
    #[error("cannot verify relay {relay}: {reason}")]
    BadTrust {
        /// The relay's address.
        relay: String,
        /// Why not.
        reason: String,
    },
    /// A token was to go to a relay over plaintext (`http://`) that is not on this machine,
    /// where anyone on the network between could read it and use it. Nothing was sent: the
    /// relay's address must be `https://` (relays serve TLS by default).
    #[error(
        "refusing to send a token over plaintext to {relay}: only a relay on this machine \
         (loopback) may be reached over http:// with one; use https://"
    )]
    PlaintextToken {
        /// The relay's address.
        relay: String,
    },
    /// A connection to the relay failed outside gRPC (while probing its certificate).
    #[error("cannot reach relay at {relay}")]
    RelayIo {
        /// The relay's address.
        relay: String,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{what} timed out after {}", format_duration(*.after))]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The agent session has ended; the reason says why.
    #[error("session closed: {reason}")]
    SessionClosed {
        /// Why the session ended.
        reason: String,
    },
    /// Any other status from a peer.
    #[error("{}", describe(.0))]
    Status(Status),
}

/// A machine-readable reason, carried in `google.rpc.ErrorInfo.reason`.
mod reason {
    pub(super) const REMOTE_NOT_FOUND: &str = "REMOTE_NOT_FOUND";
    pub(super) const PORT_NOT_EXPOSED: &str = "PORT_NOT_EXPOSED";
    pub(super) const TARGET_REFUSED: &str = "TARGET_REFUSED";
    pub(super) const NAME_IN_USE: &str = "NAME_IN_USE";
    pub(super) const INVALID_NAME: &str = "INVALID_NAME";
    pub(super) const PROTOCOL: &str = "PROTOCOL";
}

impl Error {
    /// The gRPC status code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Error::RemoteNotFound { .. } | Error::PortNotExposed { .. } => Code::NotFound,
            Error::TargetRefused { .. } | Error::RelayUnreachable { .. } => Code::Unavailable,
            Error::RelayIo { .. } => Code::Unavailable,
            Error::BadTrust { .. } | Error::PlaintextToken { .. } => Code::FailedPrecondition,
            Error::SessionClosed { .. } => Code::Unavailable,
            Error::NameInUse { .. } | Error::PortInUse { .. } => Code::AlreadyExists,
            Error::InvalidName { .. } => Code::InvalidArgument,
            Error::Protocol { .. } => Code::FailedPrecondition,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Status(status) => status.code(),
        }
    }

    /// A protocol violation by a peer.
    pub fn protocol(reason: impl Into<String>) -> Self {
        Error::Protocol {
            reason: reason.into(),
        }
    }

    /// Turns a status received from a peer back into the error it stands for.
    pub fn from_status(status: Status) -> Self {
        let details = status.get_error_details();
        let Some(info) = details
            .error_info()
            .filter(|info| info.domain == ERROR_DOMAIN)
        else {
            return Error::Status(status);
        };
        let field = |key: &str| info.metadata.get(key).cloned().unwrap_or_default();
        let port = || field("port").parse::<u16>().ok();
        match info.reason.as_str() {
            reason::REMOTE_NOT_FOUND => Error::RemoteNotFound {
                name: field("remote"),
            },
            reason::PORT_NOT_EXPOSED => match port() {
                Some(port) => Error::PortNotExposed {
                    name: field("remote"),
                    port,
                },
                None => Error::Status(status),
            },
            reason::TARGET_REFUSED => Error::TargetRefused {
                reason: field("reason"),
            },
            reason::NAME_IN_USE => Error::NameInUse {
                name: field("remote"),
            },
            reason::INVALID_NAME => Error::InvalidName {
                name: field("remote"),
                reason: field("reason"),
            },
            reason::PROTOCOL => Error::Protocol {
                reason: field("reason"),
            },
            _ => Error::Status(status),
        }
    }

    /// The `ErrorInfo` reason and metadata of this error, if it has a reason of its own.
    fn error_info(&self) -> Option<(&'static str, HashMap<String, String>)> {
        let map = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect()
        };
        Some(match self {
            Error::RemoteNotFound { name } => {
                (reason::REMOTE_NOT_FOUND, map(&[("remote", name.clone())]))
            }
            Error::PortNotExposed { name, port } => (
                reason::PORT_NOT_EXPOSED,
                map(&[("remote", name.clone()), ("port", port.to_string())]),
            ),
            Error::TargetRefused { reason } => {
                (reason::TARGET_REFUSED, map(&[("reason", reason.clone())]))
            }
            Error::NameInUse { name } => (reason::NAME_IN_USE, map(&[("remote", name.clone())])),
            Error::InvalidName { name, reason } => (
                reason::INVALID_NAME,
                map(&[("remote", name.clone()), ("reason", reason.clone())]),
            ),
            Error::Protocol { reason } => (reason::PROTOCOL, map(&[("reason", reason.clone())])),
            _ => return None,
        })
    }

    /// The status this error travels as, with its reason in the details.
    pub fn to_status(&self) -> Status {
        if let Error::Status(status) = self {
            return status.clone();
        }
        match self.error_info() {
            Some((reason, metadata)) => Status::with_error_details(
                self.code(),
                self.to_string(),
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
            ),
            None => Status::new(self.code(), self.to_string()),
        }
    }
}

impl Error {
    /// The `google.rpc.Status` this error travels as inside a message (a dial failure).
    /// [`status_from_rpc`] reads it back.
    ///
    /// Internal: for the relay and agents of this project, not a stable API.
    #[doc(hidden)]
    pub fn to_rpc_status(&self) -> sesame_proto::RpcStatus {
        let status = self.to_status();
        // A status's details, when present, are an encoded `google.rpc.Status` whose own
        // details hold the reason.
        let details = match status.details() {
            [] => Vec::new(),
            encoded => <sesame_proto::RpcStatus as prost::Message>::decode(encoded)
                .map(|decoded| decoded.details)
                .unwrap_or_default(),
        };
        sesame_proto::RpcStatus {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details,
        }
    }
}

/// The longest message kept from a status a peer sent inside a message, in characters.
const MAX_RPC_MESSAGE_CHARS: usize = 1024;

/// The most bytes of details (such as a reason) kept from a status a peer sent inside a
/// message; larger details are dropped whole.
const MAX_RPC_DETAILS_BYTES: usize = 4096;

/// A `google.rpc.Status` a peer sent inside a message (a dial failure, an expose failure),
/// as the [`Status`] it stands for, with its encoded self as the details so that
/// [`Error::from_status`] finds its reason. The inverse of [`Error::to_rpc_status`].
///
/// What the peer chose is made safe to pass on: a failure that says `OK` becomes `UNKNOWN`,
/// so it cannot read as success; the message is cut to 1024 characters; details over
/// 4096 bytes are dropped, as part of them would not decode.
///
/// Internal: for the relay and agents of this project, not a stable API.
#[doc(hidden)]
pub fn status_from_rpc(status: sesame_proto::RpcStatus) -> Status {
    let code = match Code::from_i32(status.code) {
        Code::Ok => Code::Unknown,
        code => code,
    };
    let message: String = status.message.chars().take(MAX_RPC_MESSAGE_CHARS).collect();
    let details_len: usize = status
        .details
        .iter()
        .map(|any| any.type_url.len() + any.value.len())
        .sum();
    let details = sesame_proto::RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: if details_len <= MAX_RPC_DETAILS_BYTES {
            status.details
        } else {
            Vec::new()
        },
    };
    let details = prost::Message::encode_to_vec(&details);
    Status::with_details(code, message, details.into())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Status(status) => status,
            other => other.to_status(),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::from_status(status)
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        let kind = match error.code() {
            Code::NotFound => io::ErrorKind::NotFound,
            Code::Unavailable => io::ErrorKind::ConnectionRefused,
            Code::DeadlineExceeded => io::ErrorKind::TimedOut,
            Code::Cancelled | Code::Aborted => io::ErrorKind::ConnectionReset,
            Code::InvalidArgument => io::ErrorKind::InvalidInput,
            Code::AlreadyExists => io::ErrorKind::AddrInUse,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Describes a status without a reason of its own: its message, or its code when empty.
fn describe(status: &Status) -> String {
    match status.message() {
        "" => code_name(status.code()).to_owned(),
        message => message.to_owned(),
    }
}

/// The lowercase name of a gRPC status code, as in the gRPC specification.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// An I/O error as a short lowercase phrase: `connection refused`, not
/// `Connection refused (os error 111)`.
///
/// Internal: a text helper for the relay and CLI of this project, not a stable API.
pub fn io_reason(error: &io::Error) -> String {
    short_phrase(&error.to_string())
}

/// A message as a short lowercase phrase: without an ` (os error N)` suffix, and with its
/// first letter lowercased.
fn short_phrase(message: &str) -> String {
    let message = message.split(" (os error").next().unwrap_or(message);
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An error as one line: what failed, then its root cause as a short phrase when that adds
/// something: `cannot reach relay at http://relay:7373: connection refused`.
///
/// Internal: a text helper for the relay and CLI of this project, not a stable API.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let first = error.to_string();
    let root = root_cause(error).to_string();
    if first.contains(&root) {
        return first;
    }
    format!("{first}: {}", short_cause(&root))
}

/// The innermost cause of `error` as a short phrase: `connection refused`, not
/// `tcp connect error: Connection refused (os error 111)`.
pub(crate) fn root_cause_phrase(error: &(dyn std::error::Error + 'static)) -> String {
    short_cause(&root_cause(error).to_string())
}

fn root_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut root = error;
    while let Some(source) = root.source() {
        root = source;
    }
    root
}

/// What the libraries below say, for the few messages whose words mean nothing to a user of
/// Sesame, in words that do.
const PLAIN_WORDS: [(&str, &str); 3] = [
    ("deadline has elapsed", "no answer in time"),
    (
        "received corrupt message of type InvalidContentType",
        "the server there does not speak TLS",
    ),
    (
        "peer closed connection without sending TLS close_notify",
        "the relay closed the connection (it stopped, or something between cut it)",
    ),
];

/// The last part of a nested message (`a: b: cause`) as a short phrase, in plain words.
fn short_cause(cause: &str) -> String {
    if let Some((_, plain)) = PLAIN_WORDS.iter().find(|(said, _)| cause.contains(said)) {
        return (*plain).to_owned();
    }
    short_phrase(cause.rsplit(": ").next().unwrap_or(cause))
}

/// Formats a duration the way people say it: `10s`, `1.5s`, `250ms`.
///
/// Internal: a text helper for the relay and CLI of this project, not a stable API.
pub fn format_duration(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        let secs = duration.as_secs_f64();
        if secs.fract() == 0.0 {
            format!("{secs:.0}s")
        } else {
            format!("{secs:.1}s")
        }
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(error: Error) -> Error {
        Error::from_status(Status::from(error))
    }

    #[test]
    fn reasons_survive_the_trip_through_a_status() {
        let status = Status::from(Error::RemoteNotFound {
            name: "device-42".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), r#"no remote named "device-42""#);

        match round_trip(Error::PortNotExposed {
            name: "pi".into(),
            port: 22,
        }) {
            Error::PortNotExposed { name, port } => assert_eq!((name.as_str(), port), ("pi", 22)),
            other => panic!("unexpected {other:?}"),
        }
        match round_trip(Error::TargetRefused {
            reason: "localhost:8080: connection refused".into(),
        }) {
            Error::TargetRefused { reason } => {
                assert_eq!(reason, "localhost:8080: connection refused")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            round_trip(Error::NameInUse { name: "x".into() }),
            Error::NameInUse { name } if name == "x"
        ));
    }

    #[test]
    fn rpc_statuses_keep_code_message_and_reason() {
        let plain = Error::Status(Status::unavailable("busy")).to_rpc_status();
        assert_eq!(
            (plain.code, plain.message.as_str()),
            (Code::Unavailable as i32, "busy")
        );
        assert!(plain.details.is_empty());
        let refused = Error::TargetRefused { reason: "x".into() }.to_rpc_status();
        assert_eq!(refused.code, Code::Unavailable as i32);
        assert_eq!(refused.details.len(), 1, "the ErrorInfo");
    }

    #[test]
    fn rpc_statuses_read_back_as_the_errors_they_carry() {
        let refused = Error::TargetRefused {
            reason: "localhost:8080: connection refused".into(),
        };
        let status = status_from_rpc(refused.to_rpc_status());
        assert_eq!(status.code(), Code::Unavailable);
        assert!(matches!(
            Error::from_status(status),
            Error::TargetRefused { reason } if reason == "localhost:8080: connection refused"
        ));
        let plain = status_from_rpc(Error::Status(Status::unavailable("busy")).to_rpc_status());
        assert_eq!((plain.code(), plain.message()), (Code::Unavailable, "busy"));
        assert!(matches!(Error::from_status(plain), Error::Status(_)));
    }

    #[test]
    fn rpc_statuses_from_peers_are_bounded_and_never_ok() {
        let ok = status_from_rpc(sesame_proto::RpcStatus::default());
        assert_eq!(ok.code(), Code::Unknown);
        let unknown_code = status_from_rpc(sesame_proto::RpcStatus {
            code: 1000,
            ..Default::default()
        });
        assert_eq!(unknown_code.code(), Code::Unknown);

        let mut huge = Error::TargetRefused {
            reason: "x".repeat(MAX_RPC_DETAILS_BYTES),
        }
        .to_rpc_status();
        huge.message = "é".repeat(MAX_RPC_MESSAGE_CHARS + 1);
        let status = status_from_rpc(huge);
        assert_eq!(status.message().chars().count(), MAX_RPC_MESSAGE_CHARS);
        // The reason did not fit: what is left is a status without one.
        assert!(matches!(Error::from_status(status), Error::Status(_)));
    }

    #[test]
    fn foreign_or_plain_statuses_stay_statuses() {
        let plain = Error::from_status(Status::unavailable("relay shut down"));
        assert_eq!(plain.to_string(), "relay shut down");
        assert_eq!(
            Error::Status(Status::cancelled("")).to_string(),
            "cancelled"
        );
        assert_eq!(plain.code(), Code::Unavailable);

        let foreign = Status::with_error_details(
            Code::NotFound,
            "nope",
            ErrorDetails::with_error_info("REMOTE_NOT_FOUND", "example.com", HashMap::new()),
        );
        assert!(matches!(Error::from_status(foreign), Error::Status(_)));
    }

    #[test]
    fn io_errors_keep_the_meaning() {
        let refused: io::Error = Error::TargetRefused { reason: "x".into() }.into();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let reset: io::Error = Error::Status(Status::cancelled("gone")).into();
        assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn io_errors_read_as_short_phrases() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(io_reason(&refused), "connection refused");
        let custom = io::Error::other("Timed out");
        assert_eq!(io_reason(&custom), "timed out");
    }

    #[test]
    fn library_phrases_read_in_plain_words() {
        let eof = io::Error::other(
            "peer closed connection without sending TLS close_notify: \
             https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let said = root_cause_phrase(&eof);
        assert!(
            said.starts_with("the relay closed the connection"),
            "{said}"
        );
        let late = io::Error::other("deadline has elapsed");
        assert_eq!(root_cause_phrase(&late), "no answer in time");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
