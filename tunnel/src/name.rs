//! Remote names: DNS labels, so that a remote can later be reached as `NAME.DOMAIN`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The collection part of a remote's resource name, `remotes/{remote}`.
const COLLECTION: &str = "remotes/";

/// The longest name: a DNS label.
const MAX_LEN: usize = 63;

/// The name of a remote: 1 to 63 lowercase ASCII letters, digits and hyphens, neither starting
/// nor ending with a hyphen (a DNS label).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteName(String);

impl RemoteName {
    /// Checks and wraps a name such as `device-42`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        match invalid_reason(&name) {
            None => Ok(RemoteName(name)),
            Some(reason) => Err(Error::InvalidName {
                name,
                reason: reason.to_owned(),
            }),
        }
    }

    /// Parses a resource name, `remotes/{remote}`.
    pub fn from_resource_name(resource: &str) -> Result<Self, Error> {
        match resource.strip_prefix(COLLECTION) {
            Some(name) => RemoteName::new(name),
            None => Err(Error::InvalidName {
                name: resource.to_owned(),
                reason: "a resource name has the form remotes/{remote}".to_owned(),
            }),
        }
    }

    /// Derives a valid name from a host name: the first label, lowercased, with every other
    /// character turned into a hyphen. `None` when nothing usable is left.
    pub fn from_hostname(host: &str) -> Option<Self> {
        let label = host.split('.').next().unwrap_or_default();
        let mut name = String::with_capacity(label.len());
        for c in label.chars() {
            let c = c.to_ascii_lowercase();
            let c = if c.is_ascii_alphanumeric() { c } else { '-' };
            if !(c == '-' && name.ends_with('-')) {
                name.push(c);
            }
        }
        let name = name.trim_matches('-');
        let name = name.get(..MAX_LEN).unwrap_or(name).trim_end_matches('-');
        RemoteName::new(name).ok()
    }

    /// The name itself, `device-42`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource name, `remotes/device-42`.
    pub fn resource_name(&self) -> String {
        format!("{COLLECTION}{}", self.0)
    }
}

/// Why `name` is not a valid remote name, or `None` when it is.
fn invalid_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a name cannot be empty");
    }
    if name.len() > MAX_LEN {
        return Some("a name has at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("use only lowercase letters, digits and hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("a name cannot start or end with a hyphen");
    }
    None
}

impl FromStr for RemoteName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        RemoteName::new(name)
    }
}

impl fmt::Display for RemoteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RemoteName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["a", "device-42", "0", &"x".repeat(63)] {
            assert_eq!(RemoteName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("-a", "hyphen"),
            ("a-", "hyphen"),
            ("Device", "lowercase"),
            ("a.b", "lowercase"),
            ("a b", "lowercase"),
            ("ä", "lowercase"),
        ] {
            match RemoteName::new(name) {
                Err(Error::InvalidName { reason: got, .. }) => {
                    assert!(got.contains(reason), "{name:?}: {got}")
                }
                other => panic!("{name:?} gave {other:?}"),
            }
        }
        assert!(RemoteName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn resource_names_round_trip() {
        let name = RemoteName::from_resource_name("remotes/pi").unwrap();
        assert_eq!(name.as_str(), "pi");
        assert_eq!(name.resource_name(), "remotes/pi");
        assert!(RemoteName::from_resource_name("pi").is_err());
        assert!(RemoteName::from_resource_name("remotes/").is_err());
        assert!(RemoteName::from_resource_name("remotes/a/b").is_err());
    }

    #[test]
    fn derives_names_from_host_names() {
        let derive = |host: &str| RemoteName::from_hostname(host).map(|n| n.0);
        assert_eq!(derive("My_Laptop.local").as_deref(), Some("my-laptop"));
        assert_eq!(derive("--build__box--").as_deref(), Some("build-box"));
        assert_eq!(derive(&"h".repeat(80)).unwrap().len(), 63);
        assert_eq!(derive("..."), None);
        assert_eq!(derive("ünï").as_deref(), Some("n"));
        assert_eq!(derive("ñü"), None);
    }
}
