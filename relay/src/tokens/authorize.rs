//! The store as the relay's [`Authorize`]: it checks the bearer token of every call, gives
//! each remote name to the first token that registers it, and holds public TCP ports for the
//! tokens whose remotes had them.
//!
//! Both run on every call, so they take the state's lock alone, which is never held while
//! the file is written: creating or revoking a token does not hold up callers.

use std::time::SystemTime;

use sesame_tunnel::RemoteName;
use tonic::Status;
use tonic::metadata::MetadataMap;

use std::sync::Weak;

use super::state::{Claim, Live, PortClaimed, from_unix};
use super::{TokenStore, lock, secret};
use crate::auth::{Authorize, Caller, PortClaim, bearer_token};

impl Authorize for TokenStore {
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let Some(presented) = bearer_token(metadata)? else {
            return Err(Status::unauthenticated(
                "this relay needs a token: send `authorization: Bearer TOKEN`",
            ));
        };
        let invalid = || Status::unauthenticated("the token is not valid on this relay");
        let id = secret::id_of(presented).ok_or_else(invalid)?;
        let hash = secret::hash(presented);
        let mut state = lock(&self.state);
        let live = state.live_mut(id).ok_or_else(invalid)?;
        if !secret::same_hash(&live.hash, &hash) {
            return Err(invalid());
        }
        if live.entry.revoked.is_some() {
            return Err(Status::unauthenticated("the token was revoked"));
        }
        if live.expired(SystemTime::now()) {
            return Err(Status::unauthenticated("the token has expired"));
        }
        arm_expiry(live, self.this.clone());
        Ok(Caller::new(
            id.to_owned(),
            live.scopes.clone(),
            live.ended.clone(),
        ))
    }

    fn claim_name(
        &self,
        caller: &Caller,
        name: &RemoteName,
        max_per_token: usize,
    ) -> Result<(), Status> {
        let Some(id) = caller.token() else {
            return Ok(());
        };
        let mut state = lock(&self.state);
        match state.claim(name.as_str(), id, max_per_token, SystemTime::now()) {
            Claim::Owned => Ok(()),
            Claim::Taken => Err(Status::permission_denied(format!(
                "the name {:?} belongs to another token: only the token that registered it \
                 first may use it",
                name.as_str()
            ))),
            Claim::TooMany(owned) => Err(Status::resource_exhausted(format!(
                "this token already owns {owned} remote names, the relay's limit per token: \
                 a name stays with its token until the token is revoked or expires"
            ))),
            Claim::Claimed => {
                drop(state);
                self.flush_soon();
                Ok(())
            }
        }
    }

    fn check_port(&self, caller: &Caller, claim: &PortClaim<'_>) -> Result<(), Status> {
        let Some(id) = caller.token() else {
            return Ok(());
        };
        let outcome = lock(&self.state).check_port(claim, id, SystemTime::now());
        port_outcome(outcome, claim)
    }

    fn claim_port(&self, caller: &Caller, claim: &PortClaim<'_>) -> Result<(), Status> {
        let Some(id) = caller.token() else {
            return Ok(());
        };
        let mut state = lock(&self.state);
        let generation = state.generation();
        let outcome = state.claim_port(claim, id, SystemTime::now());
        let changed = state.generation() != generation;
        drop(state);
        if changed {
            self.flush_soon();
        }
        port_outcome(outcome, claim)
    }

    fn release_port(&self, token: &str, port: u16) {
        let released = lock(&self.state).release_port(token, port, SystemTime::now());
        if released {
            self.flush_soon();
        }
    }

    fn held_port(&self, caller: &Caller, name: &RemoteName, remote_port: u16) -> Option<u16> {
        let id = caller.token()?;
        lock(&self.state).held_port(id, name.as_str(), remote_port)
    }
}

/// What a port claim's outcome means to the remote that asked.
fn port_outcome(outcome: PortClaimed, claim: &PortClaim<'_>) -> Result<(), Status> {
    let port = claim.port;
    let hold = sesame_tunnel::format_duration(claim.hold);
    match outcome {
        PortClaimed::Held => Ok(()),
        PortClaimed::Taken => Err(Status::already_exists(format!(
            "TCP port {port} is held for another remote: a port stays with the token whose \
             remote had it, for {hold} after that remote went away; ask for another port, or \
             for none to get any free one"
        ))),
        PortClaimed::TooMany(holds) => Err(Status::resource_exhausted(format!(
            "this token already holds {holds} public TCP ports, the relay's limit per token \
             (a port stays held for {hold} after its remote went away)"
        ))),
    }
}

/// Cancels the token's `ended` when it expires, once per token, so that what its callers
/// have open ends then and not at their next call; then frees the names and ports it held.
fn arm_expiry(live: &mut Live, store: Weak<TokenStore>) {
    let Some(expires) = live.entry.expires else {
        return;
    };
    if live.expiry_armed {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    live.expiry_armed = true;
    let left = from_unix(expires)
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let ended = live.ended.clone();
    runtime.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(left) => ended.cancel(),
            () = ended.cancelled() => {}
        }
        if let Some(store) = store.upgrade() {
            store.forget_unusable();
        }
    });
}
