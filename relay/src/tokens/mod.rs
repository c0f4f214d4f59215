//! [`TokenStore`]: the bearer tokens a relay accepts, kept hashed in its data directory, and
//! which token owns which remote name.

mod file;
mod secret;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sesame_tunnel::RemoteName;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

use crate::auth::{Authorize, Caller, Scope, bearer_token};
use file::{StoreFile, TokenEntry};

/// The store's file in the data directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// How long name claims wait to be written together.
const FLUSH_DELAY: Duration = Duration::from_millis(100);

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
    /// Held while the file is written, and taken before `inner`: each write takes its snapshot
    /// under it, so writes never share the temporary file and the last one is the latest state.
    writing: Mutex<()>,
    inner: Mutex<Inner>,
    flush_pending: AtomicBool,
    this: Weak<TokenStore>,
}

struct Inner {
    tokens: BTreeMap<String, Live>,
    names: BTreeMap<String, String>,
}

struct Live {
    entry: TokenEntry,
    scopes: Arc<[Scope]>,
    hash: [u8; 32],
    ended: CancellationToken,
    expiry_armed: bool,
}

/// A store just opened, and the admin token it made if it was new.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<TokenStore>,
    /// The secret of the admin token created because the store did not exist: shown once.
    pub new_admin_token: Option<String>,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

impl Live {
    fn from_entry(entry: TokenEntry) -> Result<Self, String> {
        let scopes = entry
            .scopes
            .iter()
            .map(|scope| scope.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?;
        let hash = secret::from_hex(&entry.sha256)
            .ok_or_else(|| format!("token {:?} has a malformed hash", entry.id))?;
        let ended = CancellationToken::new();
        if entry.revoked.is_some() {
            ended.cancel();
        }
        Ok(Live {
            entry,
            scopes: scopes.into(),
            hash,
            ended,
            expiry_armed: false,
        })
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.entry.expires.is_some_and(|at| from_unix(at) <= now)
    }

    fn usable(&self, now: SystemTime) -> bool {
        self.entry.revoked.is_none() && !self.expired(now)
    }
}

impl TokenStore {
    /// Opens the store in `data_dir`, creating the directory (mode 0700) and, on first use, the
    /// store with one `admin` token, whose secret is returned to be shown once.
    pub fn open(data_dir: &Path) -> Result<OpenedStore, TokenStoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TokenStoreError::Io { path, source }
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(data_dir).map_err(io(data_dir))?;
        let path = data_dir.join(TOKENS_FILE);
        let (file, new) = match std::fs::read(&path) {
            Ok(text) => {
                let file = file::parse(&text).map_err(|reason| TokenStoreError::Corrupt {
                    path: path.clone(),
                    reason,
                })?;
                (file, false)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (
                StoreFile {
                    version: file::VERSION,
                    ..StoreFile::default()
                },
                true,
            ),
            Err(error) => return Err(io(&path)(error)),
        };
        let mut tokens = BTreeMap::new();
        for entry in file.tokens {
            let live = Live::from_entry(entry).map_err(|reason| TokenStoreError::Corrupt {
                path: path.clone(),
                reason,
            })?;
            tokens.insert(live.entry.id.clone(), live);
        }
        let store = Arc::new_cyclic(|this| TokenStore {
            path,
            writing: Mutex::new(()),
            inner: Mutex::new(Inner {
                tokens,
                names: file.names,
            }),
            flush_pending: AtomicBool::new(false),
            this: this.clone(),
        });
        let new_admin_token = if new {
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The right to write the file; taken before [`lock`](Self::lock) by whoever writes.
    fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a token; returns it and its secret, which the store does not keep.
    pub fn create(
        &self,
        scopes: Vec<Scope>,
        label: String,
        ttl: Option<Duration>,
    ) -> Result<(TokenInfo, String), TokenStoreError> {
        if scopes.is_empty() {
            return Err(TokenStoreError::Invalid(
                "a token needs at least one scope: admin, expose:PATTERN or connect:PATTERN"
                    .to_owned(),
            ));
        }
        if label.chars().count() > 200 || label.chars().any(char::is_control) {
            return Err(TokenStoreError::Invalid(
                "a label is at most 200 printable characters".to_owned(),
            ));
        }
        let now = SystemTime::now();
        let _writing = self.writing();
        let mut inner = self.lock();
        let (id, secret) = loop {
            let (id, secret) = secret::generate();
            if !inner.tokens.contains_key(&id) {
                break (id, secret);
            }
        };
        let entry = TokenEntry {
            id: id.clone(),
            label,
            scopes: scopes.iter().map(Scope::to_string).collect(),
            sha256: secret::hex(&secret::hash(&secret)),
            created: unix(now),
            expires: ttl.map(|ttl| unix(now + ttl).max(unix(now) + 1)),
            revoked: None,
        };
        let live = Live::from_entry(entry).map_err(TokenStoreError::Invalid)?;
        inner.tokens.insert(id.clone(), live);
        self.write(&inner)?;
        let info = describe(&inner, &id).expect("just inserted");
        Ok((info, secret))
    }

    /// Every token, revoked ones included, by id.
    pub fn list(&self) -> Vec<TokenInfo> {
        let inner = self.lock();
        inner
            .tokens
            .keys()
            .filter_map(|id| describe(&inner, id))
            .collect()
    }

    /// One token.
    pub fn get(&self, id: &str) -> Option<TokenInfo> {
        describe(&self.lock(), id)
    }

    /// Revokes a token: calls with it fail from now on, and what it has open ends. The names
    /// it owned are free again. Revoking a revoked token changes nothing.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenStoreError> {
        let _writing = self.writing();
        let mut inner = self.lock();
        let live = inner
            .tokens
            .get_mut(id)
            .ok_or_else(|| TokenStoreError::UnknownToken { id: id.to_owned() })?;
        if live.entry.revoked.is_none() {
            live.entry.revoked = Some(unix(SystemTime::now()));
            live.ended.cancel();
            inner.names.retain(|_, owner| owner != id);
            self.write(&inner)?;
        }
        Ok(describe(&inner, id).expect("present"))
    }

    /// Writes `inner`; the caller holds [`writing`](Self::writing).
    fn write(&self, inner: &Inner) -> Result<(), TokenStoreError> {
        self.write_file(&snapshot(inner))
    }

    /// Writes the state as it is now, without holding the state's lock while writing.
    fn write_latest(&self) -> Result<(), TokenStoreError> {
        let _writing = self.writing();
        let file = snapshot(&self.lock());
        self.write_file(&file)
    }

    fn write_file(&self, file: &StoreFile) -> Result<(), TokenStoreError> {
        file::write(&self.path, file).map_err(|source| TokenStoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes name claims a moment from now, together with any that follow.
    fn flush_soon(&self) {
        if self.flush_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.flush_pending.store(false, Ordering::Release);
            if let Err(error) = this.write_latest() {
                warn!(error = %sesame_tunnel::one_line(&error), "could not save name owners");
            }
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(FLUSH_DELAY).await;
            this.flush_pending.store(false, Ordering::Release);
            let writer = this.clone();
            let written = tokio::task::spawn_blocking(move || writer.write_latest()).await;
            if !matches!(written, Ok(Ok(()))) {
                warn!(path = %this.path.display(), "could not save which token owns which name");
            }
        });
    }

    /// Cancels the token's `ended` when it expires, once per token.
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
}

fn snapshot(inner: &Inner) -> StoreFile {
    StoreFile {
        version: file::VERSION,
        tokens: inner
            .tokens
            .values()
            .map(|live| live.entry.clone())
            .collect(),
        names: inner.names.clone(),
    }
}

fn describe(inner: &Inner, id: &str) -> Option<TokenInfo> {
    let live = inner.tokens.get(id)?;
    Some(TokenInfo {
        id: id.to_owned(),
        label: live.entry.label.clone(),
        scopes: live.scopes.to_vec(),
        created: from_unix(live.entry.created),
        expires: live.entry.expires.map(from_unix),
        revoked: live.entry.revoked.map(from_unix),
        owned_names: inner
            .names
            .iter()
            .filter(|(_, owner)| owner.as_str() == id)
            .map(|(name, _)| name.clone())
            .collect(),
    })
}

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
        let mut inner = self.lock();
        let live = inner.tokens.get_mut(id).ok_or_else(invalid)?;
        if !secret::same_hash(&live.hash, &hash) {
            return Err(invalid());
        }
        if live.entry.revoked.is_some() {
            return Err(Status::unauthenticated("the token was revoked"));
        }
        if live.expired(SystemTime::now()) {
            return Err(Status::unauthenticated("the token has expired"));
        }
        Self::arm_expiry(live);
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
        let now = SystemTime::now();
        let mut inner = self.lock();
        let owner = inner.names.get(name.as_str()).cloned();
        match owner {
            Some(owner) if owner == id => return Ok(()),
            Some(owner) if inner.tokens.get(&owner).is_some_and(|t| t.usable(now)) => {
                return Err(Status::permission_denied(format!(
                    "the name {:?} belongs to another token: only the token that registered it \
                     first may use it",
                    name.as_str()
                )));
            }
            // Nobody owns it, or its owner is revoked or expired: it is free.
            _ => {}
        }
        inner.names.insert(name.to_string(), id.to_owned());
        drop(inner);
        self.flush_soon();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
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
        // Expiry has a resolution of one second: move it into the past.
        let mut inner = store.lock();
        for live in inner.tokens.values_mut() {
            if let Some(expires) = live.entry.expires.as_mut() {
                *expires = unix(SystemTime::now()) - 1;
            }
        }
        drop(inner);
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
        store.claim_name(&first_caller, &name).unwrap();
        store.claim_name(&first_caller, &name).unwrap();
        let refused = store.claim_name(&second_caller, &name).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(store.get(&first.id).unwrap().owned_names, ["laptop"]);
        store.revoke(&first.id).unwrap();
        store.claim_name(&second_caller, &name).unwrap();
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
