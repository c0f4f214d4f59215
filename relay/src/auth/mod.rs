//! Who may do what: every call is authenticated to a [`Caller`], whose scopes are checked
//! before the call acts.
//!
//! [`Authorize`] is the pluggable part: [`TokenStore`](crate::tokens::TokenStore) checks
//! bearer tokens; [`AllowAll`] lets everyone in, for a relay embedded where only trusted code
//! reaches it. `Gate` runs the check, and refuses addresses that failed too often
//! (`throttle`).

mod gate;
mod scope;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use sesame_tunnel::RemoteName;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub(crate) use gate::Gate;
pub use scope::{Pattern, Scope};

/// What a call asks the relay to do.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Register a remote under this name (an agent's session).
    Register(&'a RemoteName),
    /// Open a connection to this remote.
    Dial(&'a RemoteName),
    /// Manage the relay's tokens.
    Admin,
}

/// Who made a call: the token it presented and what that token may do.
#[derive(Clone, Debug)]
pub struct Caller {
    token: Option<String>,
    scopes: Arc<[Scope]>,
    ended: Option<CancellationToken>,
}

impl Caller {
    /// A caller presenting token `id` with these scopes; `ended` is cancelled when the token is
    /// revoked or expires, ending what the caller has open.
    pub fn new(id: String, scopes: Arc<[Scope]>, ended: CancellationToken) -> Self {
        Caller {
            token: Some(id),
            scopes,
            ended: Some(ended),
        }
    }

    /// A caller who may do anything, without a token: what [`AllowAll`] authenticates.
    pub fn anyone() -> Self {
        Caller {
            token: None,
            scopes: Arc::new([Scope::Admin]),
            ended: None,
        }
    }

    /// The id of the caller's token; `None` without one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The caller's scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Cancelled when the caller's token is revoked or expires; `None` for a caller whose
    /// access never ends.
    pub fn ended(&self) -> Option<&CancellationToken> {
        self.ended.as_ref()
    }

    /// Whether the caller may do `action`: `PERMISSION_DENIED`, naming the scope it lacks, if
    /// not.
    pub fn check(&self, action: Action<'_>) -> Result<(), Status> {
        if self.allows(action) {
            return Ok(());
        }
        let (needed, what) = match action {
            Action::Register(name) => (
                format!("expose:{name}"),
                format!("expose {:?}", name.as_str()),
            ),
            Action::Dial(name) => (
                format!("connect:{name}"),
                format!("connect to {:?}", name.as_str()),
            ),
            Action::Admin => ("admin".to_owned(), "manage tokens".to_owned()),
        };
        Err(Status::permission_denied(format!(
            "this token may not {what}: that needs a scope like {needed}, and it has {}",
            self.describe_scopes()
        )))
    }

    /// Whether the caller may see a remote in lists: it may expose or connect to it.
    pub fn may_see(&self, name: &RemoteName) -> bool {
        self.allows(Action::Dial(name)) || self.allows(Action::Register(name))
    }

    fn allows(&self, action: Action<'_>) -> bool {
        self.scopes.iter().any(|scope| match (scope, action) {
            (Scope::Admin, _) => true,
            (Scope::Expose(pattern), Action::Register(name)) => pattern.matches(name.as_str()),
            (Scope::Connect(pattern), Action::Dial(name)) => pattern.matches(name.as_str()),
            _ => false,
        })
    }

    fn describe_scopes(&self) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(Scope::to_string).collect();
        if scopes.is_empty() {
            "none".to_owned()
        } else {
            scopes.join(", ")
        }
    }
}

/// A public TCP port that a remote asks for.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct PortClaim<'a> {
    /// The relay's port.
    pub port: u16,
    /// The remote.
    pub name: &'a RemoteName,
    /// The remote's port that it publishes.
    pub remote_port: u16,
    /// Whether the remote asked for this port by number, rather than for any free one.
    pub explicit: bool,
    /// How long a port stays held for its token once its remote went away.
    pub hold: Duration,
    /// The most ports one token may hold.
    pub max_per_token: usize,
}

/// Decides who a call comes from, who owns which name, and for whom public TCP ports are
/// held. The defaults let anyone have any free name or port, and hold nothing.
pub trait Authorize: Send + Sync + 'static {
    /// The caller, from the call's metadata (`authorization: Bearer TOKEN`); `UNAUTHENTICATED`
    /// when the token is missing, unknown, revoked or expired.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status>;

    /// Lets `caller` register `name`, recording it as the name's owner if nobody owns it yet;
    /// `PERMISSION_DENIED` when another token owns it, `RESOURCE_EXHAUSTED` when the caller's
    /// token already owns `max_per_token` names.
    fn claim_name(
        &self,
        caller: &Caller,
        name: &RemoteName,
        max_per_token: usize,
    ) -> Result<(), Status> {
        let _ = (caller, name, max_per_token);
        Ok(())
    }

    /// Whether a remote of `caller` may publish on `claim.port`, as
    /// [`claim_port`](Self::claim_port) would decide, without holding it.
    fn check_port(&self, caller: &Caller, claim: &PortClaim<'_>) -> Result<(), Status> {
        let _ = (caller, claim);
        Ok(())
    }

    /// Lets a remote of `caller` publish on `claim.port`, holding the port for the caller's
    /// token (and no longer the port the same remote port was held on before, if another); `ALREADY_EXISTS` when it is held for another token (or, asked for as any free
    /// port, for another remote port of the same token), `RESOURCE_EXHAUSTED` when the token
    /// holds as many ports as it may.
    fn claim_port(&self, caller: &Caller, claim: &PortClaim<'_>) -> Result<(), Status> {
        let _ = (caller, claim);
        Ok(())
    }

    /// Tells that the remote of token `token` that had `port` went away: the port stays held
    /// for the token for the claim's hold time from now.
    fn release_port(&self, token: &str, port: u16) {
        let _ = (token, port);
    }

    /// The port held for `caller`'s token that `remote_port` of `name` had last, if it is
    /// still held.
    fn held_port(&self, caller: &Caller, name: &RemoteName, remote_port: u16) -> Option<u16> {
        let _ = (caller, name, remote_port);
        None
    }
}

/// Lets everyone do everything: for a relay embedded where only trusted code can reach it
/// (tests, or behind an authenticating proxy). `sesame relay serve` always checks tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn authenticate(&self, _metadata: &MetadataMap) -> Result<Caller, Status> {
        Ok(Caller::anyone())
    }
}

/// The bearer token in a call's metadata: `None` without an `authorization` header, an error
/// for one that is not `Bearer TOKEN`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let malformed = || Status::unauthenticated("the authorization header is not `Bearer TOKEN`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(malformed());
    }
    Ok(Some(token.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &[&str]) -> Caller {
        let scopes: Vec<Scope> = scopes.iter().map(|s| s.parse().unwrap()).collect();
        Caller::new("t".into(), scopes.into(), CancellationToken::new())
    }

    #[test]
    fn scopes_decide_and_refusals_say_what_is_missing() {
        let name = RemoteName::new("laptop-2").unwrap();
        let other = RemoteName::new("prod-db").unwrap();
        let agent = caller(&["expose:laptop-*"]);
        assert!(agent.check(Action::Register(&name)).is_ok());
        let refused = agent.check(Action::Dial(&name)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("connect:laptop-2"),
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains("expose:laptop-*"),
            "{}",
            refused.message()
        );
        assert!(agent.check(Action::Register(&other)).is_err());
        assert!(agent.check(Action::Admin).is_err());
        assert!(agent.may_see(&name) && !agent.may_see(&other));
        let admin = caller(&["admin"]);
        assert!(admin.check(Action::Admin).is_ok() && admin.may_see(&other));
        assert!(
            caller(&[])
                .check(Action::Dial(&name))
                .unwrap_err()
                .message()
                .contains("none")
        );
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer_token(&metadata).unwrap(), None);
        metadata.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), Some("abc"));
        metadata.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            metadata.insert("authorization", bad.parse().unwrap());
            assert_eq!(
                bearer_token(&metadata).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
    }
}
