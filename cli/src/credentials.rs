//! What `sesame login` keeps: per relay, how to trust its certificate (`config.json`) and its
//! token (the system keyring, or `credentials.json`, readable by the user alone, where no
//! keyring service runs). And how a command decides which relay, trust and token to use.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sesame_tunnel::{DEFAULT_RELAY, Fingerprint, RelayAccess, RelayUrl, Token, Trust};

use crate::args::ClientFlags;

/// The keyring service the tokens are stored under; the relay's URL is the user name.
const KEYRING_SERVICE: &str = "sesame";

/// Where the settings live, unless `SESAME_CONFIG_DIR` says otherwise.
fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SESAME_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("dev", "sesame", "sesame")
        .map(|dirs| dirs.config_dir().to_owned())
        .context("cannot tell where this user's configuration goes (no home directory)")
}

/// `config.json`: which relay is the default, and how each relay is trusted.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Config {
    /// The relay commands use when neither --relay nor SESAME_RELAY names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_relay: Option<String>,
    /// Per relay URL.
    #[serde(default)]
    pub relays: BTreeMap<String, RelayEntry>,
}

/// How one relay is trusted.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct RelayEntry {
    /// The pinned certificate fingerprint, for a self-signed relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The certificate authorities to verify it with, PEM: the contents of the file that
    /// `login --ca` was given, as they were then. Kept rather than the file's path, so that
    /// whoever can replace that file later cannot change which relays this user trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// A CA file to verify it with, read at every command: what `login --ca` stored before it
    /// kept the certificates themselves.
    ///
    /// Such an entry is still honoured as it was, with a warning to log in again, rather than
    /// turned into `ca_certificates` on the spot: the file's contents now are not what the user
    /// checked at login, and keeping them for good at some later command, unasked, would make
    /// whatever the file holds at that moment trusted for good. Logging in again is the moment
    /// the user vouches for the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// Where a token was stored.
#[derive(Debug)]
pub(crate) enum Stored {
    /// In the system keyring.
    Keyring,
    /// In this file, because the keyring could not be used (the reason).
    File(PathBuf, String),
}

/// The user's stored settings and tokens.
pub(crate) struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// The store of the user running this.
    pub(crate) fn open() -> anyhow::Result<Self> {
        Ok(Credentials { dir: config_dir()? })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    /// The settings; empty when none were saved.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        read_json(&self.config_path())
    }

    /// Saves the settings.
    pub(crate) fn save_config(&self, config: &Config) -> anyhow::Result<()> {
        write_private(&self.dir, &self.config_path(), config)
    }

    /// Stores `token` for `relay`: in the keyring if one answers, else in the file.
    pub(crate) fn store_token(&self, relay: &RelayUrl, token: &Token) -> anyhow::Result<Stored> {
        let reason = match keyring_set(relay, token) {
            Ok(()) => {
                // A token left in the file from an earlier login would outlive this one.
                self.remove_file_token(relay)?;
                return Ok(Stored::Keyring);
            }
            Err(reason) => reason,
        };
        let path = self.tokens_path();
        let mut tokens: BTreeMap<String, String> = read_json(&path)?;
        tokens.insert(relay.to_string(), token.secret().to_owned());
        write_private(&self.dir, &path, &tokens)?;
        Ok(Stored::File(path, reason))
    }

    /// The token stored for `relay`, from the keyring or the file.
    pub(crate) fn token(&self, relay: &RelayUrl) -> anyhow::Result<Option<Token>> {
        if let Some(token) = keyring_get(relay) {
            return Ok(Some(token));
        }
        let tokens: BTreeMap<String, String> = read_json(&self.tokens_path())?;
        match tokens.get(&relay.to_string()) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e| {
                anyhow::anyhow!("the token stored in {}: {e}", self.tokens_path().display())
            }),
        }
    }

    /// Forgets `relay`'s token (keyring and file) and settings; says what there was.
    pub(crate) fn forget(&self, relay: &RelayUrl) -> anyhow::Result<Vec<String>> {
        let mut forgotten = Vec::new();
        if keyring_delete(relay) {
            forgotten.push("its token in the system keyring".to_owned());
        }
        if self.remove_file_token(relay)? {
            forgotten.push(format!("its token in {}", self.tokens_path().display()));
        }
        let mut config = self.config()?;
        let key = relay.to_string();
        let had_entry = config.relays.remove(&key).is_some();
        let was_default = config.default_relay.as_deref() == Some(key.as_str());
        if was_default {
            config.default_relay = None;
        }
        if had_entry || was_default {
            self.save_config(&config)?;
            forgotten.push("how to trust its certificate".to_owned());
        }
        Ok(forgotten)
    }

    fn remove_file_token(&self, relay: &RelayUrl) -> anyhow::Result<bool> {
        let path = self.tokens_path();
        let mut tokens: BTreeMap<String, String> = read_json(&path)?;
        if tokens.remove(&relay.to_string()).is_none() {
            return Ok(false);
        }
        write_private(&self.dir, &path, &tokens)?;
        Ok(true)
    }
}

/// Whether the keyring is to be left alone (`SESAME_KEYRING=off`).
fn keyring_disabled() -> bool {
    std::env::var("SESAME_KEYRING").is_ok_and(|value| value == "off")
}

/// Runs a keyring call on a thread of its own: the Secret Service client runs its own event
/// loop, which may not run inside this program's.
fn on_keyring_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(f).join().ok()
}

fn keyring_set(relay: &RelayUrl, token: &Token) -> Result<(), String> {
    if keyring_disabled() {
        return Err("SESAME_KEYRING=off".to_owned());
    }
    let (user, secret) = (relay.to_string(), token.secret().to_owned());
    on_keyring_thread(move || {
        let entry = keyring::Entry::new(KEYRING_SERVICE, &user).map_err(|e| e.to_string())?;
        entry.set_password(&secret).map_err(|e| e.to_string())?;
        // Read it back: some backends accept a secret and keep nothing.
        match entry.get_password() {
            Ok(read) if read == secret => Ok(()),
            Ok(_) => Err("the keyring returned another secret".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .unwrap_or_else(|| Err("the keyring client failed".to_owned()))
}

fn keyring_get(relay: &RelayUrl) -> Option<Token> {
    if keyring_disabled() {
        return None;
    }
    let user = relay.to_string();
    on_keyring_thread(move || {
        keyring::Entry::new(KEYRING_SERVICE, &user)
            .and_then(|entry| entry.get_password())
            .ok()
    })
    .flatten()
    .and_then(|text| text.parse().ok())
}

fn keyring_delete(relay: &RelayUrl) -> bool {
    if keyring_disabled() {
        return false;
    }
    let user = relay.to_string();
    on_keyring_thread(move || {
        keyring::Entry::new(KEYRING_SERVICE, &user)
            .and_then(|entry| entry.delete_credential())
            .is_ok()
    })
    .unwrap_or(false)
}

fn read_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text)
            .with_context(|| format!("{} is not valid: fix or delete it", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes JSON whole, readable by the user alone (0600, in a 0700 directory).
fn write_private<T: Serialize>(dir: &Path, path: &Path, value: &T) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The relay, trust and token a command uses: flags and environment first, then what
/// `login` stored, then the defaults.
pub(crate) fn resolve(cli: &ClientFlags) -> anyhow::Result<RelayAccess> {
    let credentials = Credentials::open()?;
    let config = credentials.config()?;
    let url = match &cli.relay {
        Some(url) => url.clone(),
        None => config
            .default_relay
            .as_deref()
            .unwrap_or(DEFAULT_RELAY)
            .parse()
            .map_err(anyhow::Error::msg)?,
    };
    let stored = config
        .relays
        .get(&url.to_string())
        .cloned()
        .unwrap_or_default();
    let trust = match (&cli.fingerprint, &cli.ca, &stored) {
        (Some(fingerprint), _, _) => Trust::Pinned(*fingerprint),
        (None, Some(ca), _) => trust_ca(ca)?,
        (
            None,
            None,
            RelayEntry {
                fingerprint: Some(pin),
                ..
            },
        ) => Trust::Pinned(
            pin.parse::<Fingerprint>()
                .map_err(anyhow::Error::msg)
                .context("the stored fingerprint is not valid: log in again")?,
        ),
        (
            None,
            None,
            RelayEntry {
                ca_certificates: Some(pem),
                ..
            },
        ) => Trust::authorities_from_pem(pem.as_bytes())
            .map_err(anyhow::Error::msg)
            .context("the stored CA certificates are not valid: log in again with --ca")?,
        (None, None, RelayEntry { ca: Some(ca), .. }) => {
            eprintln!(
                "warning: {url} is trusted through the CA file {}, read anew by every command, \
                 so whoever can replace that file decides which relays are trusted; log in \
                 again with `sesame login {url} --ca FILE` to keep the certificates themselves",
                ca.display()
            );
            trust_ca(ca)?
        }
        _ => Trust::SystemRoots,
    };
    let token = match &cli.token {
        Some(token) => Some(token.clone()),
        None => credentials.token(&url)?,
    };
    Ok(RelayAccess::new(url, trust, token))
}

/// Trusts the authorities in a CA file.
fn trust_ca(path: &Path) -> anyhow::Result<Trust> {
    read_ca(path).map(|(trust, _)| trust)
}

/// Reads a CA file once: the authorities it holds, and its text, to keep as it is now.
pub(crate) fn read_ca(path: &Path) -> anyhow::Result<(Trust, String)> {
    let cannot_use = || format!("cannot use {} as a CA file", path.display());
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let trust = Trust::authorities_from_pem(&pem)
        .map_err(anyhow::Error::msg)
        .with_context(cannot_use)?;
    let text = String::from_utf8(pem)
        .map_err(|_| anyhow::anyhow!("it holds more than PEM text"))
        .with_context(cannot_use)?;
    Ok((trust, text))
}
