//! Untrusted input: the relay's token store file (`tokens.json` in its data directory), which
//! may be damaged, truncated or edited by hand; the bearer tokens and `authorization` headers
//! callers send; and the scopes an administrator asks for.
//!
//! The input is written as `tokens.json` and the store opened from it; a store that opens is
//! listed, and each line of the input is presented to it as a token, and parsed as a scope
//! (whose text must parse back to itself) and an `authorization` header. Nothing may panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sesame_relay::auth::{Authorize, Scope, bearer_token};
use sesame_relay::tokens::{TOKENS_FILE, TokenStore};
use tonic::metadata::{MetadataMap, MetadataValue};

fn data_dir() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = sesame_fuzz::scratch_dir();
        let path = dir.path().to_owned();
        (dir, path)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(sesame_fuzz::paused_runtime)
}

fuzz_target!(|data: &[u8]| {
    let (_, dir) = data_dir();
    let file = dir.join(TOKENS_FILE);
    if data.is_empty() {
        // An empty input stands for no file: a new store with an admin token.
        let _ = std::fs::remove_file(&file);
    } else {
        std::fs::write(&file, data).expect("the store file is written");
    }
    let text = String::from_utf8_lossy(data);
    runtime().block_on(async {
        if let Ok(opened) = TokenStore::open(dir) {
            let store = opened.store;
            let _ = store.list();
            for line in text.lines().take(16) {
                let mut metadata = MetadataMap::new();
                if let Ok(value) = MetadataValue::try_from(format!("Bearer {line}")) {
                    metadata.insert("authorization", value);
                    if let Ok(caller) = store.authenticate(&metadata) {
                        assert!(
                            caller.token().is_some(),
                            "a caller of the store has a token"
                        );
                    }
                }
                let _ = store.get(line);
            }
            if let Some(admin) = opened.new_admin_token {
                let mut metadata = MetadataMap::new();
                let value = MetadataValue::try_from(format!("Bearer {admin}")).unwrap();
                metadata.insert("authorization", value);
                assert!(
                    store.authenticate(&metadata).is_ok(),
                    "a new admin token works"
                );
            }
        }
    });
    for line in text.lines().take(16) {
        if let Ok(scope) = line.parse::<Scope>() {
            let shown = scope.to_string();
            assert_eq!(shown.parse::<Scope>().unwrap(), scope, "{shown}");
        }
        let mut metadata = MetadataMap::new();
        if let Ok(value) = MetadataValue::try_from(line) {
            metadata.insert("authorization", value);
            let _ = bearer_token(&metadata);
        }
    }
});
