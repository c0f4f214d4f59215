//! The store in memory: its tokens, which token owns which remote name, the public TCP ports
//! held for tokens, and the changes made to them. Nothing here reads or writes the disk, takes a lock or waits; the store calls
//! these under its lock, and `persist` writes what they leave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::file::{PortEntry, TokenEntry};
use super::{TokenInfo, TokenStoreError, secret};
use crate::auth::{PortClaim, Scope};

/// The tokens a store holds and the names they own.
pub(super) struct State {
    /// By id.
    tokens: BTreeMap<String, Live>,
    /// Remote name to the id of the token that owns it.
    names: BTreeMap<String, String>,
    /// Public TCP port to the token it is held for.
    ports: BTreeMap<u16, PortEntry>,
    /// Counts the changes made since the store opened, so that persistence can tell whether
    /// the file holds the latest of them.
    generation: u64,
}

/// A token in memory: its entry in the file, and what checking a caller needs at hand.
pub(super) struct Live {
    /// What the file keeps of it.
    pub(super) entry: TokenEntry,
    /// `entry.scopes`, parsed once rather than on every call.
    pub(super) scopes: Arc<[Scope]>,
    /// `entry.sha256`, decoded.
    pub(super) hash: [u8; 32],
    /// Cancelled when the token is revoked or expires, which ends what its callers have open.
    pub(super) ended: CancellationToken,
    /// Whether a task already waits to cancel `ended` when the token expires.
    pub(super) expiry_armed: bool,
}

/// What came of claiming a remote name for a token.
pub(super) enum Claim {
    /// The token already owned it: nothing changed.
    Owned,
    /// The token owns it now.
    Claimed,
    /// Another token, still valid, owns it.
    Taken,
    /// The token owns as many names as it may.
    TooMany(usize),
}

/// What came of claiming a public TCP port for a token.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PortClaimed {
    /// The token holds it now (or held it already).
    Held,
    /// It is held for another token, or for another port of the same token.
    Taken,
    /// The token holds as many ports as it may.
    TooMany(usize),
}

/// Unix seconds, the file's resolution.
pub(super) fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The time `seconds` after the Unix epoch.
pub(super) fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Refuses a token nobody could use or read: without scopes, or with a label that is not a
/// short line of text.
pub(super) fn check_new(scopes: &[Scope], label: &str) -> Result<(), TokenStoreError> {
    if scopes.is_empty() {
        return Err(TokenStoreError::Invalid(
            "a token needs at least one scope: admin, expose:PATTERN or connect:PATTERN".to_owned(),
        ));
    }
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(TokenStoreError::Invalid(
            "a label is at most 200 printable characters".to_owned(),
        ));
    }
    Ok(())
}

impl Live {
    /// A token read from the file; refused, with the reason, if the file's entry is malformed.
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

    /// Whether the token's time is up.
    pub(super) fn expired(&self, now: SystemTime) -> bool {
        self.entry.expires.is_some_and(|at| from_unix(at) <= now)
    }

    /// Whether the token still counts: neither revoked nor expired.
    pub(super) fn usable(&self, now: SystemTime) -> bool {
        self.entry.revoked.is_none() && !self.expired(now)
    }
}

impl State {
    /// The state the file's tokens, names and ports describe, as of `now`; the reason if one
    /// of them is malformed. Names and ports of tokens that no longer count are dropped, and
    /// every port's remote is taken to have gone away now, when the relay that had it stopped.
    pub(super) fn from_file(
        tokens: Vec<TokenEntry>,
        names: BTreeMap<String, String>,
        mut ports: BTreeMap<u16, PortEntry>,
        now: SystemTime,
    ) -> Result<Self, String> {
        let tokens = tokens
            .into_iter()
            .map(|entry| Ok((entry.id.clone(), Live::from_entry(entry)?)))
            .collect::<Result<_, String>>()?;
        for entry in ports.values_mut() {
            entry.released.get_or_insert(unix(now));
        }
        let mut state = State {
            tokens,
            names,
            ports,
            generation: 0,
        };
        state.forget_unusable(now);
        Ok(state)
    }

    /// Drops the names and ports of tokens that are revoked, expired or unknown; says whether
    /// there were any.
    pub(super) fn forget_unusable(&mut self, now: SystemTime) -> bool {
        let tokens = &self.tokens;
        let usable = |id: &String| tokens.get(id).is_some_and(|t| t.usable(now));
        let (names, ports) = (self.names.len(), self.ports.len());
        self.names.retain(|_, owner| usable(owner));
        self.ports.retain(|_, held| usable(&held.token));
        let changed = names != self.names.len() || ports != self.ports.len();
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// How many changes were made since the store opened.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The tokens as the file keeps them, by id.
    pub(super) fn entries(&self) -> impl Iterator<Item = &TokenEntry> {
        self.tokens.values().map(|live| &live.entry)
    }

    /// Remote name to the id of the token that owns it.
    pub(super) fn names(&self) -> &BTreeMap<String, String> {
        &self.names
    }

    /// Public TCP port to the token it is held for.
    pub(super) fn ports(&self) -> &BTreeMap<u16, PortEntry> {
        &self.ports
    }

    /// A new token, not yet added: its id is unique among the tokens here, so it must be added
    /// before any other new token is drawn. Returns it and its secret, which is kept nowhere.
    pub(super) fn new_token(
        &self,
        scopes: Vec<Scope>,
        label: String,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> (Live, String) {
        let (id, secret) = loop {
            let (id, secret) = secret::generate();
            if !self.tokens.contains_key(&id) {
                break (id, secret);
            }
        };
        let hash = secret::hash(&secret);
        let entry = TokenEntry {
            id,
            label,
            scopes: scopes.iter().map(Scope::to_string).collect(),
            sha256: secret::hex(&hash),
            created: unix(now),
            // At least a second, the file's resolution, so a short ttl does not end at once.
            expires: ttl.map(|ttl| unix(now + ttl).max(unix(now) + 1)),
            revoked: None,
        };
        let live = Live {
            entry,
            scopes: scopes.into(),
            hash,
            ended: CancellationToken::new(),
            expiry_armed: false,
        };
        (live, secret)
    }

    /// Adds a token made by [`new_token`](Self::new_token).
    pub(super) fn insert(&mut self, live: Live) {
        self.tokens.insert(live.entry.id.clone(), live);
        self.generation += 1;
    }

    /// Revokes a token at `now`, ends what it has open and frees its names. Revoking a revoked
    /// token changes nothing.
    pub(super) fn revoke(&mut self, id: &str, now: SystemTime) -> Result<(), TokenStoreError> {
        let live = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| TokenStoreError::UnknownToken { id: id.to_owned() })?;
        if live.entry.revoked.is_some() {
            return Ok(());
        }
        live.entry.revoked = Some(unix(now));
        live.ended.cancel();
        self.names.retain(|_, owner| owner != id);
        self.ports.retain(|_, held| held.token != id);
        self.generation += 1;
        Ok(())
    }

    /// The token with this id, if any.
    pub(super) fn live_mut(&mut self, id: &str) -> Option<&mut Live> {
        self.tokens.get_mut(id)
    }

    /// Gives `name` to the token `id` unless another token that still counts owns it, or `id`
    /// owns `max_names` already: a name belongs to the first token that registers it, until
    /// that token is revoked or expires.
    pub(super) fn claim(
        &mut self,
        name: &str,
        id: &str,
        max_names: usize,
        now: SystemTime,
    ) -> Claim {
        match self.names.get(name) {
            Some(owner) if owner == id => return Claim::Owned,
            Some(owner) if self.tokens.get(owner).is_some_and(|t| t.usable(now)) => {
                return Claim::Taken;
            }
            // Nobody owns it, or its owner is revoked or expired: it is free.
            _ => {}
        }
        // Counted only for a name new to the token: once per registration of a new name.
        let owned = self.names.values().filter(|owner| *owner == id).count();
        if owned >= max_names {
            return Claim::TooMany(owned);
        }
        self.names.insert(name.to_owned(), id.to_owned());
        self.generation += 1;
        Claim::Claimed
    }

    /// Whether `entry` still holds its port for its token at `now`: the token counts, and
    /// its remote has the port or went away less than `hold` ago.
    fn still_held(&self, entry: &PortEntry, hold: Duration, now: SystemTime) -> bool {
        let usable = self.tokens.get(&entry.token).is_some_and(|t| t.usable(now));
        let within = entry
            .released
            .is_none_or(|at| from_unix(at).checked_add(hold).is_none_or(|end| end > now));
        usable && within
    }

    /// Whether `claim.port` may be held for the token `id`: not if it is held for another
    /// token (or, asked for as any free port, for another port of the same token), or if `id`
    /// holds as many ports as the claim allows (not counting a port held for the same remote
    /// port, which the claim would replace).
    pub(super) fn check_port(
        &self,
        claim: &PortClaim<'_>,
        id: &str,
        now: SystemTime,
    ) -> PortClaimed {
        let name = claim.name.as_str();
        let same = |held: &PortEntry| {
            held.token == id && held.name == name && held.remote_port == claim.remote_port
        };
        match self.ports.get(&claim.port) {
            Some(held) if same(held) => return PortClaimed::Held,
            // Held for another token; or for another remote port of the same token, which only
            // an explicit claim moves.
            Some(held)
                if self.still_held(held, claim.hold, now)
                    && (held.token != id || !claim.explicit) =>
            {
                return PortClaimed::Taken;
            }
            _ => {}
        }
        let holds = self
            .ports
            .iter()
            .filter(|&(&port, held)| {
                port != claim.port
                    && held.token == id
                    && !same(held)
                    && self.still_held(held, claim.hold, now)
            })
            .count();
        if holds >= claim.max_per_token {
            return PortClaimed::TooMany(holds);
        }
        PortClaimed::Held
    }

    /// Holds `claim.port` for the token `id`, as [`check_port`](Self::check_port) allows; the
    /// port the same remote port was held on before, if another, is held no longer.
    pub(super) fn claim_port(
        &mut self,
        claim: &PortClaim<'_>,
        id: &str,
        now: SystemTime,
    ) -> PortClaimed {
        let outcome = self.check_port(claim, id, now);
        if outcome != PortClaimed::Held {
            return outcome;
        }
        let entry = PortEntry {
            token: id.to_owned(),
            name: claim.name.to_string(),
            remote_port: claim.remote_port,
            released: None,
        };
        if self.ports.get(&claim.port) == Some(&entry) {
            return outcome;
        }
        self.ports.retain(|_, held| {
            !(held.token == entry.token
                && held.name == entry.name
                && held.remote_port == entry.remote_port)
        });
        self.ports.insert(claim.port, entry);
        self.generation += 1;
        outcome
    }

    /// Starts the hold of `port` for token `id`, whose remote had it and went away, at `now`.
    /// Says whether anything changed.
    pub(super) fn release_port(&mut self, id: &str, port: u16, now: SystemTime) -> bool {
        match self.ports.get_mut(&port) {
            Some(held) if held.token == id && held.released.is_none() => {
                held.released = Some(unix(now));
                self.generation += 1;
                true
            }
            _ => false,
        }
    }

    /// The port held for token `id` that `remote_port` of `name` had last.
    pub(super) fn held_port(&self, id: &str, name: &str, remote_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(_, held)| {
                held.token == id && held.name == name && held.remote_port == remote_port
            })
            .map(|(&port, _)| port)
    }

    /// Every token, revoked ones included, by id.
    pub(super) fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .keys()
            .filter_map(|id| self.describe(id))
            .collect()
    }

    /// The token with this id, as the store describes it.
    pub(super) fn describe(&self, id: &str) -> Option<TokenInfo> {
        let live = self.tokens.get(id)?;
        Some(TokenInfo {
            id: id.to_owned(),
            label: live.entry.label.clone(),
            scopes: live.scopes.to_vec(),
            created: from_unix(live.entry.created),
            expires: live.entry.expires.map(from_unix),
            revoked: live.entry.revoked.map(from_unix),
            owned_names: self
                .names
                .iter()
                .filter(|(_, owner)| owner.as_str() == id)
                .map(|(name, _)| name.clone())
                .collect(),
        })
    }

    /// Moves every expiry into the past: expiry has a resolution of one second, too coarse to
    /// wait for in a test.
    #[cfg(test)]
    pub(super) fn expire_all(&mut self) {
        let past = unix(SystemTime::now()) - 1;
        for live in self.tokens.values_mut() {
            if let Some(expires) = live.entry.expires.as_mut() {
                *expires = past;
            }
        }
    }
}
