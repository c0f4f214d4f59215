//! Untrusted input: what an operator hands the relay and the clients to read, which may be
//! damaged, truncated or simply wrong: the TLS certificate chain and private key PEM files
//! (`sesame_relay::tls::ReloadingCertificate`), relay addresses (`RelayUrl`), remote names,
//! and the `sesame expose` port specs (`cli/src/spec.rs`, compiled in here as it is).
//!
//! The first byte picks how the rest is used: the PEM files are written to a temporary
//! directory (as one file holding both, or split in two at a point the second and third
//! bytes give) and loaded, then reloaded; the text goes to the parsers. Nothing may panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sesame_relay::tls::ReloadingCertificate;
use sesame_tunnel::{RelayUrl, RemoteName, Target};

/// `sesame expose`'s port specs, from the CLI crate, which is a binary and so not a
/// dependency one can have.
#[allow(dead_code)]
#[path = "../../../cli/src/spec.rs"]
mod spec;

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = sesame_fuzz::scratch_dir();
        Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => pem(rest, None),
        1 => {
            let Some((at, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let at = usize::from(u16::from_le_bytes(*at)) % (rest.len() + 1);
            pem(rest, Some(at));
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                parsers(text);
            }
        }
    }
});

/// Loads a certificate and key from `input`: one file holding both, or split at `split`.
fn pem(input: &[u8], split: Option<usize>) {
    let files = files();
    let (cert, key) = match split {
        None => (input, input),
        Some(at) => input.split_at(at),
    };
    std::fs::write(&files.cert, cert).expect("writing a temporary file");
    std::fs::write(&files.key, key).expect("writing a temporary file");
    match ReloadingCertificate::load(&files.cert, &files.key) {
        Ok(certificate) => {
            let _ = certificate.fingerprint();
            let _ = format!("{certificate:?}");
            // Unchanged files reload to the same certificate.
            assert!(!certificate.reload().expect("the same files load again"));
            let _ = certificate.server_config();
        }
        Err(error) => {
            let _ = sesame_tunnel::one_line(&error);
        }
    }
}

/// The text parsers.
fn parsers(text: &str) {
    if let Ok(url) = text.parse::<RelayUrl>() {
        // What an address prints as parses back to itself.
        let shown = url.to_string();
        assert_eq!(shown.parse::<RelayUrl>().as_ref(), Ok(&url), "{shown}");
        assert!(url.uri().port_u16().is_some_and(|port| port != 0));
    }
    if let Ok(name) = text.parse::<RemoteName>() {
        assert_eq!(name.as_str(), text);
    }
    if let Ok(spec) = text.parse::<spec::ExposeSpec>() {
        assert_ne!(spec.port, 0);
        assert_ne!(spec.target.port(), 0);
        let _: &Target = &spec.target;
        let _ = spec.to_string();
    }
}
