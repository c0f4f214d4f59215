//! [`Token`]: the bearer token a client presents to a relay.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest token a client will send.
const MAX_TOKEN_LEN: usize = 256;

/// A bearer token, presented to the relay in each call's `authorization` metadata.
///
/// It is a secret: its `Debug` and `Display` show only that a token is there, so it cannot
/// leak into logs by accident; [`secret`](Token::secret) is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// The token's text, to send or to store.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl FromStr for Token {
    type Err = String;

    /// Any printable ASCII without spaces, up to 256 characters: whether the token is valid
    /// is the relay's to say.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the token is empty".to_owned());
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "the token is {} characters long; tokens have at most {MAX_TOKEN_LEN}",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is printable ASCII without spaces".to_owned());
        }
        Ok(Token(text.into()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret token>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_themselves() {
        let token: Token = " sesame_0123abcd_s3cr3t ".parse().unwrap();
        assert_eq!(token.secret(), "sesame_0123abcd_s3cr3t");
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{:?}", Some(&token)),
        ] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!("".parse::<Token>().unwrap_err().contains("empty"));
        assert!("a b".parse::<Token>().unwrap_err().contains("spaces"));
        assert!("é".parse::<Token>().unwrap_err().contains("ASCII"));
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(long.parse::<Token>().unwrap_err().contains("at most"));
    }
}
