//! [`TokenStore`]: the bearer tokens a relay accepts, kept hashed in its data directory, and
//! which token owns which remote name.
//!
//! The store is in three parts: `state`, the tokens and names in memory and the changes made
//! to them; `persist`, which reads and writes them in the data directory (`file` is the
//! file's format); and `authorize`, which checks callers against them. This module holds
//! the store itself and its locks.

mod authorize;
mod file;
mod persist;
mod secret;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tonic::Status;

use crate::auth::Scope;
use crate::lock;
use persist::Written;
use state::State;

/// The store's file in the data directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// Why the store could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenStoreError {
    /// The file or directory could not be read or written.
    #[error("cannot use the token store {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a token store this relay can read.
    #[error("the token store {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No token has this id.
    #[error("no token has the id {id:?}")]
    UnknownToken {
        /// The id asked for.
        id: String,
    },
    /// A request the store refuses (no scopes, say).
    #[error("{0}")]
    Invalid(String),
}

impl From<TokenStoreError> for Status {
    fn from(error: TokenStoreError) -> Self {
        match error {
            TokenStoreError::UnknownToken { .. } => Status::not_found(error.to_string()),
            TokenStoreError::Invalid(reason) => Status::invalid_argument(reason),
            other => Status::internal(sesame_tunnel::one_line(&other)),
        }
    }
}

/// A token as the store describes it: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The public id, part of the token itself.
    pub id: String,
    /// A description for people.
    pub label: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created: SystemTime,
    /// When it stops being valid.
    pub expires: Option<SystemTime>,
    /// When it was revoked.
    pub revoked: Option<SystemTime>,
    /// The remote names it owns.
    pub owned_names: Vec<String>,
}

/// The tokens a relay accepts. Opened from a data directory; changes are written there at
/// once (token changes) or within a moment (name claims).
pub struct TokenStore {
    path: PathBuf,
    /// Held while the file is written, and taken before `state`: writes take turns, never
    /// share the temporary file, and each knows what the file already holds.
    writing: Mutex<Written>,
    /// The tokens and names. Held briefly, never while the disk is written: every call's
    /// authentication takes it.
    state: Mutex<State>,
    /// Whether a write of name claims is already on its way.
    flush_pending: AtomicBool,
    /// The store itself, for the task that writes name claims later.
    this: Weak<TokenStore>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are kept hashed, but even their hashes stay out of logs.
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A store just opened, and the admin token it made if it was new.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<TokenStore>,
    /// The secret of the admin token created because the store did not exist: shown once.
    pub new_admin_token: Option<String>,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self.new_admin_token.as_ref().map(|_| "<hidden>");
        f.debug_struct("OpenedStore")
            .field("store", &self.store)
            .field("new_admin_token", &secret)
            .finish()
    }
}

impl TokenStore {
    /// Opens the store in `data_dir`, creating the directory (mode 0700) and, on first use, the
    /// store with one `admin` token, whose secret is returned to be shown once.
    pub fn open(data_dir: &Path) -> Result<OpenedStore, TokenStoreError> {
        let loaded = persist::load(data_dir)?;
        let store = Arc::new_cyclic(|this| TokenStore {
            path: loaded.path,
            writing: Mutex::new(Written::loaded()),
            state: Mutex::new(loaded.state),
            flush_pending: AtomicBool::new(false),
            this: this.clone(),
        });
        let new_admin_token = if loaded.new {
            let (_, secret) = store.create(vec![Scope::Admin], "admin".to_owned(), None)?;
            Some(secret)
        } else {
            None
        };
        Ok(OpenedStore {
            store,
            new_admin_token,
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a token; returns it and its secret, which the store does not keep.
    ///
    /// The token is saved before it is returned or accepted: if the file cannot be written,
    /// there is no token, and the error is returned.
    pub fn create(
        &self,
        scopes: Vec<Scope>,
        label: String,
        ttl: Option<Duration>,
    ) -> Result<(TokenInfo, String), TokenStoreError> {
        state::check_new(&scopes, &label)?;
        let now = SystemTime::now();
        let mut written = lock(&self.writing);
        let state = lock(&self.state);
        // Only tokens being created add tokens, and `writing` is held until this one is in:
        // no other can draw the same id meanwhile.
        let (live, secret) = state.new_token(scopes, label, ttl, now);
        let info = self.write_new(&mut written, state, live)?;
        Ok((info, secret))
    }

    /// Every token, revoked ones included, by id.
    pub fn list(&self) -> Vec<TokenInfo> {
        lock(&self.state).list()
    }

    /// One token.
    pub fn get(&self, id: &str) -> Option<TokenInfo> {
        lock(&self.state).describe(id)
    }

    /// Writes what changed since the file was last written, at once: name claims and port
    /// holds are otherwise written a moment after they change. For a relay that stops.
    pub fn save(&self) -> Result<(), TokenStoreError> {
        self.write_latest()
    }

    /// Drops the names and ports of tokens that were revoked or have expired, and saves that
    /// soon.
    fn forget_unusable(&self) {
        if lock(&self.state).forget_unusable(SystemTime::now()) {
            self.flush_soon();
        }
    }

    /// Revokes a token: calls with it fail from now on, and what it has open ends. The names
    /// it owned, and the ports held for it, are free again. Revoking a revoked token changes nothing.
    ///
    /// If the file cannot be written, the token stays revoked until the relay stops, and the
    /// error is returned: the revocation is not saved. Revoking the token again writes the
    /// file, and succeeds only once the revocation is on disk.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenStoreError> {
        let mut written = lock(&self.writing);
        let mut state = lock(&self.state);
        state.revoke(id, SystemTime::now())?;
        let info = state.describe(id).expect("present");
        // Even when the token was revoked already: the file may be behind because writing
        // that revocation failed.
        self.write_behind(&mut written, state)?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use sesame_tunnel::RemoteName;
    use tonic::metadata::MetadataMap;

    use super::*;
    use crate::auth::{Authorize, PortClaim};

    fn metadata(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Makes every write of the store's file in `dir` fail until the returned path is
    /// removed: a directory stands where the file's temporary copy is written. (Tests run as
    /// root, whom a read-only directory does not stop.)
    fn block_writes(dir: &Path) -> PathBuf {
        let temporary = dir.join(format!("{TOKENS_FILE}.tmp"));
        std::fs::create_dir(&temporary).unwrap();
        temporary
    }

    #[test]
    fn name_claims_written_during_token_changes_neither_fail_nor_undo_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let changing = AtomicBool::new(true);
        std::thread::scope(|scope| {
            // What a flush of name claims does, again and again, while tokens change.
            let flushes = scope.spawn(|| {
                let mut count = 0;
                while changing.load(Ordering::Acquire) && count < 10_000 {
                    store.write_latest().unwrap();
                    count += 1;
                }
                count
            });
            for _ in 0..100 {
                let (info, _) = store
                    .create(scopes(&["connect:*"]), String::new(), None)
                    .unwrap();
                store.revoke(&info.id).unwrap();
            }
            changing.store(false, Ordering::Release);
            assert!(flushes.join().unwrap() > 0);
        });
        let reopened = TokenStore::open(dir.path()).unwrap().store;
        assert_eq!(
            reopened.list(),
            store.list(),
            "the file holds the latest state"
        );
        assert_eq!(store.list().len(), 101);
    }

    #[test]
    fn a_revocation_that_could_not_be_written_is_written_when_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (info, token) = store
            .create(scopes(&["connect:*"]), String::new(), None)
            .unwrap();
        let on_disk = || {
            let reopened = TokenStore::open(dir.path()).unwrap().store;
            reopened.get(&info.id).unwrap().revoked
        };

        let blocked = block_writes(dir.path());
        let error = store.revoke(&info.id).unwrap_err();
        assert!(matches!(error, TokenStoreError::Io { .. }), "{error}");
        let status = store.authenticate(&metadata(&token)).unwrap_err();
        assert!(
            status.message().contains("revoked"),
            "refused at once all the same"
        );
        assert_eq!(on_disk(), None);
        assert!(
            store.revoke(&info.id).is_err(),
            "a retry writes the file again, so it fails while the file cannot be written"
        );

        std::fs::remove_dir(&blocked).unwrap();
        let revoked = store.revoke(&info.id).unwrap().revoked;
        assert!(revoked.is_some());
        assert_eq!(on_disk(), revoked, "the retry saved the first revocation");

        let _blocked = block_writes(dir.path());
        store
            .revoke(&info.id)
            .expect("with the revocation saved, revoking again has nothing to write");
    }

    #[test]
    fn a_token_that_could_not_be_written_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let before = store.list();

        let blocked = block_writes(dir.path());
        let error = store
            .create(scopes(&["connect:*"]), "laptop".into(), None)
            .unwrap_err();
        assert!(matches!(error, TokenStoreError::Io { .. }), "{error}");
        assert_eq!(
            store.list(),
            before,
            "the store holds no token it did not save"
        );

        std::fs::remove_dir(&blocked).unwrap();
        let (info, token) = store
            .create(scopes(&["connect:*"]), "laptop".into(), None)
            .unwrap();
        let reopened = TokenStore::open(dir.path()).unwrap().store;
        assert_eq!(reopened.list(), store.list());
        assert_eq!(store.list().len(), before.len() + 1);
        let caller = reopened.authenticate(&metadata(&token)).unwrap();
        assert_eq!(caller.token(), Some(info.id.as_str()));
    }

    #[tokio::test]
    async fn the_first_start_makes_an_admin_token_and_later_starts_keep_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let opened = TokenStore::open(dir.path()).unwrap();
        let admin = opened
            .new_admin_token
            .expect("a new store makes an admin token");
        let caller = opened.store.authenticate(&metadata(&admin)).unwrap();
        assert_eq!(caller.scopes(), &[Scope::Admin]);
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&admin), "the secret is never stored");
        drop(opened.store);

        let again = TokenStore::open(dir.path()).unwrap();
        assert!(again.new_admin_token.is_none());
        again.store.authenticate(&metadata(&admin)).unwrap();
    }

    #[tokio::test]
    async fn wrong_revoked_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (info, token) = store
            .create(scopes(&["expose:laptop"]), "laptop".into(), None)
            .unwrap();
        let caller = store.authenticate(&metadata(&token)).unwrap();
        assert_eq!(caller.token(), Some(info.id.as_str()));

        let unauthenticated = |token: &str| {
            let status = store.authenticate(&metadata(token)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token}");
            status.message().to_owned()
        };
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(unauthenticated(&forged).contains("not valid"));
        assert!(
            unauthenticated("sesame_ffffffff_00000000000000000000000000000000")
                .contains("not valid")
        );
        assert!(unauthenticated("garbage").contains("not valid"));
        assert!(
            store
                .authenticate(&MetadataMap::new())
                .unwrap_err()
                .message()
                .contains("needs a token")
        );

        store.revoke(&info.id).unwrap();
        assert!(
            caller.ended().unwrap().is_cancelled(),
            "live calls hear of it"
        );
        assert!(unauthenticated(&token).contains("revoked"));
        let reopened = TokenStore::open(dir.path()).unwrap().store;
        let status = reopened.authenticate(&metadata(&token)).unwrap_err();
        assert!(status.message().contains("revoked"), "revocation is kept");

        let (_, short) = store
            .create(
                scopes(&["connect:*"]),
                String::new(),
                Some(Duration::from_millis(1)),
            )
            .unwrap();
        lock(&store.state).expire_all();
        assert!(unauthenticated(&short).contains("expired"));
    }

    #[tokio::test]
    async fn a_name_belongs_to_the_first_token_until_it_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (first, first_token) = store
            .create(scopes(&["expose:*"]), "a".into(), None)
            .unwrap();
        let (_, second_token) = store
            .create(scopes(&["expose:*"]), "b".into(), None)
            .unwrap();
        let first_caller = store.authenticate(&metadata(&first_token)).unwrap();
        let second_caller = store.authenticate(&metadata(&second_token)).unwrap();
        let name = RemoteName::new("laptop").unwrap();
        store.claim_name(&first_caller, &name, 10).unwrap();
        store.claim_name(&first_caller, &name, 10).unwrap();
        let refused = store.claim_name(&second_caller, &name, 10).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(store.get(&first.id).unwrap().owned_names, ["laptop"]);
        store.revoke(&first.id).unwrap();
        store.claim_name(&second_caller, &name, 10).unwrap();
    }

    #[tokio::test]
    async fn a_token_owns_a_limited_number_of_names_and_expired_tokens_own_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let (_, greedy) = store
            .create(scopes(&["expose:cam-*"]), String::new(), None)
            .unwrap();
        let greedy = store.authenticate(&metadata(&greedy)).unwrap();
        for n in 0..3 {
            let name = RemoteName::new(format!("cam-{n}")).unwrap();
            store.claim_name(&greedy, &name, 3).unwrap();
        }
        let fourth = RemoteName::new("cam-3").unwrap();
        let refused = store.claim_name(&greedy, &fourth, 3).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("3 remote names"), "{refused:?}");
        // A name it owns is still its own.
        let owned = RemoteName::new("cam-0").unwrap();
        store.claim_name(&greedy, &owned, 3).unwrap();

        // Names of a token that expired are dropped, from memory and from the file.
        let (short, secret) = store
            .create(
                scopes(&["expose:*"]),
                String::new(),
                Some(Duration::from_secs(60)),
            )
            .unwrap();
        let short_caller = store.authenticate(&metadata(&secret)).unwrap();
        let name = RemoteName::new("brief").unwrap();
        store.claim_name(&short_caller, &name, 3).unwrap();
        lock(&store.state).expire_all();
        store.forget_unusable();
        assert!(store.get(&short.id).unwrap().owned_names.is_empty());
        store.write_latest().unwrap();
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains("brief"), "{text}");
        assert!(text.contains("cam-2"), "{text}");
    }

    #[tokio::test]
    async fn a_port_stays_held_for_its_token_for_the_hold_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        let caller = |store: &TokenStore| {
            let (_, secret) = store
                .create(scopes(&["expose:*"]), String::new(), None)
                .unwrap();
            store.authenticate(&metadata(&secret)).unwrap()
        };
        let (owner, thief) = (caller(&store), caller(&store));
        let (pi, evil) = (
            RemoteName::new("pi").unwrap(),
            RemoteName::new("evil").unwrap(),
        );
        let claim = |port, name, explicit, hold| PortClaim {
            port,
            name,
            remote_port: 22,
            explicit,
            hold,
            max_per_token: 2,
        };
        let day = Duration::from_secs(86_400);
        store
            .claim_port(&owner, &claim(20022, &pi, true, day))
            .unwrap();
        let taken = store.claim_port(&thief, &claim(20022, &evil, true, day));
        assert_eq!(taken.unwrap_err().code(), tonic::Code::AlreadyExists);
        // The owner's remote goes away: the port stays held, across a restart too.
        store.release_port(owner.token().unwrap(), 20022);
        store.write_latest().unwrap();
        let reopened = TokenStore::open(dir.path()).unwrap().store;
        for store in [&store, &reopened] {
            let taken = store.claim_port(&thief, &claim(20022, &evil, true, day));
            assert!(taken.is_err(), "held after the remote went away");
            assert_eq!(store.held_port(&owner, &pi, 22), Some(20022));
        }
        // Once the hold is over, anyone may have it.
        reopened
            .claim_port(&thief, &claim(20022, &evil, true, Duration::ZERO))
            .unwrap();
        // A remote port that moves to another port holds only the new one.
        store
            .claim_port(&owner, &claim(20023, &pi, true, day))
            .unwrap();
        assert_eq!(store.held_port(&owner, &pi, 22), Some(20023));
        // A token holds a limited number of ports, held ones included.
        let other_port = |port, remote_port| PortClaim {
            remote_port,
            ..claim(port, &pi, true, day)
        };
        store.claim_port(&owner, &other_port(20024, 80)).unwrap();
        store.release_port(owner.token().unwrap(), 20024);
        let third = store.claim_port(&owner, &other_port(20025, 443));
        assert_eq!(third.unwrap_err().code(), tonic::Code::ResourceExhausted);
        // Moving one of them is no new port.
        store.claim_port(&owner, &other_port(20026, 80)).unwrap();
        // Revoking the token frees its ports at once.
        assert!(
            store
                .claim_port(&thief, &claim(20023, &evil, true, day))
                .is_err()
        );
        store.revoke(owner.token().unwrap()).unwrap();
        store
            .claim_port(&thief, &claim(20023, &evil, true, day))
            .unwrap();
    }

    #[test]
    fn tokens_need_scopes_and_sane_labels() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap().store;
        assert!(store.create(Vec::new(), String::new(), None).is_err());
        assert!(
            store
                .create(scopes(&["admin"]), "a\nb".into(), None)
                .is_err()
        );
        assert!(matches!(
            store.revoke("00000000"),
            Err(TokenStoreError::UnknownToken { .. })
        ));
    }

    #[test]
    fn a_corrupt_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENS_FILE), "{").unwrap();
        let error = TokenStore::open(dir.path()).err().unwrap();
        assert!(error.to_string().contains(TOKENS_FILE), "{error}");
    }
}
