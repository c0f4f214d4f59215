//! The token store's file, `tokens.json` in the relay's data directory: token hashes, scopes,
//! the names each token owns and the public TCP ports held for it. Written whole to a temporary file, then renamed, readable
//! by the relay's user alone.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The format's version; a file of a later version is refused, not guessed at. Version 2
/// added held ports: a file that holds none is written as version 1, which relays from before
/// read too.
pub(crate) const VERSION: u32 = 2;

/// The version of a file that holds `ports` or not.
pub(crate) fn version_for(holds_ports: bool) -> u32 {
    if holds_ports { VERSION } else { 1 }
}

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    pub(crate) version: u32,
    pub(crate) tokens: Vec<TokenEntry>,
    /// Remote name to the id of the token that owns it.
    pub(crate) names: BTreeMap<String, String>,
    /// Public TCP port to the token it is held for. Absent from files of relays that held
    /// none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) ports: BTreeMap<u16, PortEntry>,
}

/// A public TCP port held for a token: which of its remotes' ports had it, and since when it
/// is free of them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortEntry {
    /// The id of the token.
    pub(crate) token: String,
    /// The remote that had the port.
    pub(crate) name: String,
    /// The remote's port it published.
    pub(crate) remote_port: u16,
    /// Unix seconds when the remote went away; `None` while it has the port.
    #[serde(default)]
    pub(crate) released: Option<u64>,
}

/// One token, without its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenEntry {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) label: String,
    pub(crate) scopes: Vec<String>,
    /// SHA-256 of the secret, hex.
    pub(crate) sha256: String,
    /// Unix seconds.
    pub(crate) created: u64,
    #[serde(default)]
    pub(crate) expires: Option<u64>,
    #[serde(default)]
    pub(crate) revoked: Option<u64>,
}

/// Parses the file's text.
pub(crate) fn parse(text: &[u8]) -> Result<StoreFile, String> {
    let file: StoreFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if !(1..=VERSION).contains(&file.version) {
        return Err(format!(
            "it has format version {}, and this relay reads versions 1 to {VERSION}",
            file.version
        ));
    }
    Ok(file)
}

/// Writes the file whole, readable by its owner alone.
pub(crate) fn write(path: &Path, file: &StoreFile) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    text.push(b'\n');
    crate::private_file::write(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut file = StoreFile {
            version: VERSION,
            ..StoreFile::default()
        };
        file.tokens.push(TokenEntry {
            id: "0123abcd".into(),
            label: "laptop".into(),
            scopes: vec!["expose:laptop".into()],
            sha256: "00".repeat(32),
            created: 1,
            expires: Some(2),
            revoked: None,
        });
        file.names.insert("laptop".into(), "0123abcd".into());
        file.ports.insert(
            20022,
            PortEntry {
                token: "0123abcd".into(),
                name: "laptop".into(),
                remote_port: 22,
                released: Some(3),
            },
        );
        write(&path, &file).unwrap();
        assert_eq!(parse(&std::fs::read(&path).unwrap()).unwrap(), file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            parse(b"{\"version\":3,\"tokens\":[],\"names\":{}}")
                .unwrap_err()
                .contains("version 3")
        );
        assert_eq!(
            version_for(false),
            1,
            "readable by relays from before ports"
        );
        assert_eq!(version_for(true), VERSION);
        assert!(parse(b"not json").is_err());
        let older = parse(b"{\"version\":1,\"tokens\":[],\"names\":{}}").unwrap();
        assert!(older.ports.is_empty(), "files without ports still read");
        assert!(parse(b"{\"version\":1,\"tokens\":[],\"names\":{},\"extra\":1}").is_err());
    }
}
