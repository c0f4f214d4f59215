//! The store as the relay's [`Authorize`]: it checks the bearer token of every call, and
//! gives each remote name to the first token that registers it.
//!
//! Both run on every call, so they take the state's lock alone, which is never held while
//! the file is written: creating or revoking a token does not hold up callers.

use std::time::SystemTime;

use sesame_tunnel::RemoteName;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::state::{Claim, Live, from_unix};
use super::{TokenStore, lock, secret};
use crate::auth::{Authorize, Caller, bearer_token};

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
        arm_expiry(live);
        Ok(Caller::new(
            id.to_owned(),
            live.scopes.clone(),
            live.ended.clone(),
        ))
    }

    fn claim_name(&self, caller: &Caller, name: &RemoteName) -> Result<(), Status> {
        let Some(id) = caller.token() else {
            return Ok(());
        };
        let mut state = lock(&self.state);
        match state.claim(name.as_str(), id, SystemTime::now()) {
            Claim::Owned => Ok(()),
            Claim::Taken => Err(Status::permission_denied(format!(
                "the name {:?} belongs to another token: only the token that registered it \
                 first may use it",
                name.as_str()
            ))),
            Claim::Claimed => {
                drop(state);
                self.flush_soon();
                Ok(())
            }
        }
    }
}

/// Cancels the token's `ended` when it expires, once per token, so that what its callers
/// have open ends then and not at their next call.
fn arm_expiry(live: &mut Live) {
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
    });
}
