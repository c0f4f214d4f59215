//! The store on disk: reading `tokens.json` when the store opens, writing the state back
//! whole, and writing name claims a moment after they are made, together.
//!
//! Writes take turns under the store's `writing` lock, which also records which change the
//! file holds up to ([`Written`]). Each takes its snapshot under the state's lock and
//! releases that before writing and syncing the file: authentication needs the state's lock
//! on every call, and must not wait for the disk. Since each snapshot is taken after the
//! previous write ended, the last write holds the latest state.
//!
//! A write is skipped only when the file already holds the latest change. A write that
//! failed leaves the file behind, so the next one, whatever asks for it, writes again.
//!
//! A new token is the one change written before it is made in memory: a token the relay
//! would forget at its next start must not be handed out, nor accepted meanwhile.

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use super::file::{self, StoreFile, TokenEntry};
use super::state::{Live, State};
use super::{TOKENS_FILE, TokenInfo, TokenStore, TokenStoreError, lock};

/// How long name claims wait to be written together.
const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// What the store's data directory holds.
pub(super) struct Loaded {
    /// The store's file.
    pub(super) path: PathBuf,
    /// The state the file describes; empty if there was no file.
    pub(super) state: State,
    /// Whether there was no file: the store is new.
    pub(super) new: bool,
}

/// Which of the state's changes the file holds: known to whoever holds the store's `writing`
/// lock, which guards it.
pub(super) struct Written {
    /// The state's generation when the snapshot last written was taken.
    generation: u64,
}

impl Written {
    /// A file that holds the state just loaded from it. A store that had no file has no
    /// tokens either, and creating its first one writes it.
    pub(super) fn loaded() -> Self {
        Written { generation: 0 }
    }
}

/// Reads the store in `data_dir`, creating the directory (mode 0700) if it is missing.
pub(super) fn load(data_dir: &Path) -> Result<Loaded, TokenStoreError> {
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
    let corrupt = |reason| TokenStoreError::Corrupt {
        path: path.clone(),
        reason,
    };
    let (file, new) = match std::fs::read(&path) {
        Ok(text) => (file::parse(&text).map_err(corrupt)?, false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (StoreFile::default(), true),
        Err(error) => return Err(io(&path)(error)),
    };
    let now = std::time::SystemTime::now();
    let state = State::from_file(file.tokens, file.names, file.ports, now).map_err(corrupt)?;
    Ok(Loaded { path, state, new })
}

/// The file that describes `state`, with the token `new` added if there is one.
fn snapshot(state: &State, new: Option<&TokenEntry>) -> StoreFile {
    let mut tokens: Vec<TokenEntry> = state.entries().cloned().collect();
    if let Some(new) = new {
        // In order of id, as the state keeps them, so the file reads the same once the token
        // is in the state and the file is written again.
        let at = tokens.partition_point(|entry| entry.id < new.id);
        tokens.insert(at, new.clone());
    }
    StoreFile {
        version: file::version_for(!state.ports().is_empty()),
        tokens,
        names: state.names().clone(),
        ports: state.ports().clone(),
    }
}

impl TokenStore {
    /// Writes `state` if the file is behind it. `written` comes from the `writing` lock,
    /// which the caller holds; `state` is released before the file is written.
    pub(super) fn write_behind(
        &self,
        written: &mut Written,
        state: MutexGuard<'_, State>,
    ) -> Result<(), TokenStoreError> {
        let generation = state.generation();
        if written.generation == generation {
            return Ok(());
        }
        let file = snapshot(&state, None);
        drop(state);
        self.write_file(&file)?;
        written.generation = generation;
        Ok(())
    }

    /// Writes `state` with the token `live` added, then adds it to `state` and describes it.
    /// If the write fails, the token is dropped and `state` is left as it was. `written` comes
    /// from the `writing` lock, which the caller holds; `state` is released while the file is
    /// written.
    pub(super) fn write_new(
        &self,
        written: &mut Written,
        state: MutexGuard<'_, State>,
        live: Live,
    ) -> Result<TokenInfo, TokenStoreError> {
        let seen = state.generation();
        let file = snapshot(&state, Some(&live.entry));
        drop(state);
        self.write_file(&file)?;
        let mut state = lock(&self.state);
        // The file holds state `seen` with the token added: the state once the token is in,
        // unless names were claimed while the file was written. Then it is behind, and the
        // claims' own flush writes them.
        let current = state.generation() == seen;
        let id = live.entry.id.clone();
        state.insert(live);
        if current {
            written.generation = state.generation();
        }
        Ok(state.describe(&id).expect("just added"))
    }

    /// Writes the state as it is now, if the file is behind it.
    pub(super) fn write_latest(&self) -> Result<(), TokenStoreError> {
        let mut written = lock(&self.writing);
        self.write_behind(&mut written, lock(&self.state))
    }

    fn write_file(&self, file: &StoreFile) -> Result<(), TokenStoreError> {
        file::write(&self.path, file).map_err(|source| TokenStoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes name claims a moment from now, together with any that follow.
    pub(super) fn flush_soon(&self) {
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
}
