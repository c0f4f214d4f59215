//! Scopes: what a token may do, `admin`, `expose:PATTERN` or `connect:PATTERN`.

use std::fmt;
use std::str::FromStr;

/// The longest pattern: a name is at most 63 characters, and `*` may stand between them.
const MAX_PATTERN_LEN: usize = 127;

/// One permission of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything: any name, any remote, and managing tokens.
    Admin,
    /// Registering remotes whose names match the pattern.
    Expose(Pattern),
    /// Dialing remotes whose names match the pattern.
    Connect(Pattern),
}

/// A remote name in which `*` matches any run of characters (`laptop-*`, `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Matches `*` wildcards by backtracking to the last star only: linear in practice, and at
/// worst `pattern × name`, both short.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= MAX_PATTERN_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
        if !valid {
            return Err(format!(
                "{text:?} is not a name pattern: lowercase letters, digits, hyphens and `*`"
            ));
        }
        Ok(Pattern(text.to_owned()))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        match text.split_once(':') {
            Some(("expose", pattern)) => Ok(Scope::Expose(pattern.parse()?)),
            Some(("connect", pattern)) => Ok(Scope::Connect(pattern.parse()?)),
            _ => Err(format!(
                "{text:?} is not a scope: use admin, expose:PATTERN or connect:PATTERN"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Expose(pattern) => write!(f, "expose:{pattern}"),
            Scope::Connect(pattern) => write!(f, "connect:{pattern}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        pattern.parse::<Pattern>().unwrap().matches(name)
    }

    #[test]
    fn patterns_match_names() {
        assert!(matches("*", "anything"));
        assert!(matches("laptop", "laptop"));
        assert!(!matches("laptop", "laptop-2"));
        assert!(matches("laptop-*", "laptop-2"));
        assert!(matches("laptop-*", "laptop-"));
        assert!(!matches("laptop-*", "laptop"));
        assert!(matches("*-db", "prod-db"));
        assert!(!matches("*-db", "prod-dbx"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("**", ""));
        assert!(!matches(&"a*".repeat(40), &"a".repeat(39)));
    }

    #[test]
    fn scopes_round_trip_and_bad_ones_are_named() {
        for text in ["admin", "expose:*", "connect:laptop-*", "expose:db"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "root",
            "expose:",
            "expose:Laptop",
            "connect:a b",
            "dial:*",
        ] {
            let error = bad.parse::<Scope>().unwrap_err();
            assert!(
                error.contains("scope") || error.contains("pattern"),
                "{bad}: {error}"
            );
        }
    }
}
