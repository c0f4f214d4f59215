//! What `sesame expose` accepts for each port: `PORT`, `HOST:PORT`, `PORT:PORT` or
//! `PORT:HOST:PORT`.

use std::fmt;
use std::str::FromStr;

use sesame_tunnel::Target;

/// One port to expose, and the target its connections go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExposeSpec {
    /// The port dialers ask for.
    pub port: u16,
    /// Where the agent connects for each dial.
    pub target: Target,
}

impl FromStr for ExposeSpec {
    type Err = String;

    /// - `8080`: port 8080, to `localhost:8080`;
    /// - `192.168.1.5:22` or `[::1]:22`: port 22, to that host;
    /// - `2222:22`: port 2222, to `localhost:22`;
    /// - `2222:192.168.1.5:22`: port 2222, to that host's port 22.
    fn from_str(text: &str) -> Result<Self, String> {
        let (exposed, target) = match text.split_once(':') {
            Some((first, rest))
                if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (Some(port(first)?), rest)
            }
            _ => (None, text),
        };
        let target = match target.rsplit_once(':') {
            None => Target::local(port(target)?),
            Some((host, target_port)) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("{text:?} names no host before the last ':'"));
                }
                if host.contains(':') && !target.starts_with('[') {
                    return Err(format!(
                        "write IPv6 addresses in brackets, as in [{host}]:{target_port}"
                    ));
                }
                Target::new(host, port(target_port)?)
            }
        };
        Ok(ExposeSpec {
            port: exposed.unwrap_or(target.port()),
            target,
        })
    }
}

fn port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "{text:?} is not a port: ports are numbers from 1 to 65535"
        )),
    }
}

impl fmt::Display for ExposeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {} -> {}", self.port, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(u16, String), String> {
        text.parse::<ExposeSpec>()
            .map(|spec| (spec.port, spec.target.to_string()))
    }

    #[test]
    fn the_four_forms() {
        assert_eq!(parse("8080").unwrap(), (8080, "localhost:8080".into()));
        assert_eq!(
            parse("192.168.1.5:22").unwrap(),
            (22, "192.168.1.5:22".into())
        );
        assert_eq!(parse("[::1]:22").unwrap(), (22, "[::1]:22".into()));
        assert_eq!(parse("2222:22").unwrap(), (2222, "localhost:22".into()));
        assert_eq!(
            parse("2222:db.lan:5432").unwrap(),
            (2222, "db.lan:5432".into())
        );
        assert_eq!(
            parse("2222:[fe80::1]:22").unwrap(),
            (2222, "[fe80::1]:22".into())
        );
    }

    #[test]
    fn clear_errors_for_the_rest() {
        for (text, why) in [
            ("0", "not a port"),
            ("70000", "not a port"),
            ("http", "not a port"),
            ("", "not a port"),
            ("host:", "not a port"),
            (":22", "no host"),
            ("1:2:3:4", "brackets"),
            ("99999:localhost:22", "not a port"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
