//! Who may do what: the one place every call is checked before it acts.

use sesame_tunnel::RemoteName;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// What a call asks the relay to do.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Register a remote under this name (an agent's session).
    Register(&'a RemoteName),
    /// Open a connection to this remote.
    Dial(&'a RemoteName),
    /// Read the list of remotes, or one of them.
    Read,
}

/// Decides whether a call may go ahead, from its metadata (where a bearer token would be).
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` to allow; an `UNAUTHENTICATED` or `PERMISSION_DENIED` status to refuse.
    fn authorize(&self, metadata: &MetadataMap, action: Action<'_>) -> Result<(), Status>;
}

/// Allows every call: for a relay that only trusted parties can reach (its default, bound to
/// loopback). `docs/architecture.md` says what that means.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn authorize(&self, _metadata: &MetadataMap, _action: Action<'_>) -> Result<(), Status> {
        Ok(())
    }
}
