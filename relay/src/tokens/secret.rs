//! Token secrets: how they are drawn, where their public id is, and how they are hashed and
//! compared.

use sha2::{Digest, Sha256};

/// Every token begins with this, so that secret scanners and people recognise one.
pub(crate) const PREFIX: &str = "sesame_";

/// The public id: 8 hex digits (32 bits), unique among a relay's tokens.
const ID_BYTES: usize = 4;

/// The secret part: 128 random bits, as the issue of guessing demands.
const SECRET_BYTES: usize = 16;

/// A new token: its id, and the whole secret `sesame_{id}_{32 hex digits}`.
pub(crate) fn generate() -> (String, String) {
    let mut id = [0; ID_BYTES];
    let mut secret = [0; SECRET_BYTES];
    getrandom::fill(&mut id).expect("the system's random source works");
    getrandom::fill(&mut secret).expect("the system's random source works");
    let id = hex(&id);
    let secret = format!("{PREFIX}{id}_{}", hex(&secret));
    (id, secret)
}

/// The public id a presented token claims; `None` if it has not the form of one.
pub(crate) fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexadecimal = |s: &str, len: usize| {
        s.len() == 2 * len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (hexadecimal(id, ID_BYTES) && hexadecimal(secret, SECRET_BYTES)).then_some(id)
}

/// What the relay keeps of a token: its SHA-256. A token is 128 random bits, so a fast hash
/// is enough: there is no dictionary to try.
pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two hashes in time that does not depend on where they differ.
pub(crate) fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_id_and_128_random_bits() {
        let (id, token) = generate();
        assert_eq!(id_of(&token), Some(id.as_str()));
        assert_eq!(token.len(), PREFIX.len() + 8 + 1 + 32);
        let (_, other) = generate();
        assert_ne!(token, other);
        for bad in [
            "",
            "sesame_",
            "sesame_0123abcd",
            "sesame_0123abcd_",
            "sesame_0123ABCD_00000000000000000000000000000000",
            "sesame_0123abcd_0000000000000000000000000000000",
            "other_0123abcd_00000000000000000000000000000000",
        ] {
            assert_eq!(id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn hashes_compare_and_round_trip() {
        let a = hash("a");
        assert!(same_hash(&a, &hash("a")));
        assert!(!same_hash(&a, &hash("b")));
        assert_eq!(from_hex(&hex(&a)), Some(a));
        assert_eq!(from_hex("zz"), None);
    }
}
