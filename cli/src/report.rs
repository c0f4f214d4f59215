//! How errors reach the user: one lowercase line, and a `hint:` line where one helps; and for
//! a relay certificate that is not trusted, what ssh says of a host key: the fingerprints, and
//! what to do.

use std::io;

use sesame_tunnel::tonic::Code;
use sesame_tunnel::{CertificateRefusal, Error, certificate_refusal};

/// What to print on stderr for `error`, ending with a newline.
pub(crate) fn report(error: &anyhow::Error) -> String {
    if let Some(refusal) = certificate_refusal(error.as_ref()) {
        return refused_certificate(refusal, relay_of(error).as_deref());
    }
    if broke_below_grpc(error) {
        return "error: the relay did not answer as a Sesame relay: the connection broke before \
                any answer came\n\
                hint: a relay serves TLS unless started with --insecure-plaintext: if the \
                address is http://, try https://; otherwise check its address and port\n"
            .to_owned();
    }
    let mut text = format!("error: {}\n", one_line(error));
    if let Some(hint) = hint(error) {
        text.push_str(&format!("hint: {hint}\n"));
    }
    text
}

/// Whether a call failed because the connection under it did (HTTP/2 or the transport, as
/// when a plaintext client meets a TLS relay), with only the library's words for it.
fn broke_below_grpc(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let status = match cause.downcast_ref::<Error>() {
            Some(Error::Status(status)) => Some(status),
            _ => cause.downcast_ref::<sesame_tunnel::tonic::Status>(),
        };
        status.is_some_and(|status| {
            let message = status.message();
            message == "transport error" || message.starts_with("h2 protocol error")
        })
    })
}

/// The relay an error is about, if it names one.
fn relay_of(error: &anyhow::Error) -> Option<String> {
    error
        .chain()
        .find_map(|cause| match cause.downcast_ref::<Error>()? {
            Error::RelayUnreachable { relay, .. } | Error::RelayIo { relay, .. } => {
                Some(relay.clone())
            }
            _ => None,
        })
}

/// The report of a refused relay certificate: what was presented, what was trusted, and how
/// to trust the right one.
fn refused_certificate(refusal: &CertificateRefusal, relay: Option<&str>) -> String {
    let url = relay.unwrap_or("RELAY_URL");
    match refusal {
        // Pinning would not fix these: the certificate itself, or the clock, is wrong.
        CertificateRefusal::Untrusted { presented, why }
            if why.contains("expired") || why.contains("not valid yet") =>
        {
            format!(
                "error: the relay at {url} is not trusted here: its certificate {why}\n\
                 \x20 its SHA-256 fingerprint: {presented}\n\
                 hint: the relay's operator must renew its certificate (or check this \
                 machine's clock)\n"
            )
        }
        CertificateRefusal::Untrusted { presented, why } if why.contains("does not name") => {
            format!(
                "error: the relay at {url} is not trusted here: its certificate {why}\n\
                 \x20 its SHA-256 fingerprint: {presented}\n\
                 hint: reach the relay by a name its certificate holds, or pin this \
                 certificate after checking it with the relay's operator: \
                 --fingerprint {presented}\n"
            )
        }
        CertificateRefusal::Untrusted { presented, why } => format!(
            "error: the relay at {url} is not trusted here: its certificate {why}\n\
             \x20 its SHA-256 fingerprint: {presented}\n\
             hint: check that fingerprint with the relay's operator (`sesame relay serve` \
             prints it at every start); if it is theirs, pin it:\n\
             \x20 sesame login {url} --fingerprint {presented}\n\
             \x20 (or pass --fingerprint {presented} to this command)\n"
        ),
        CertificateRefusal::Changed { pinned, presented } => format!(
            "error: THE RELAY'S CERTIFICATE HAS CHANGED\n\
             \x20 relay:     {url}\n\
             \x20 pinned:    {pinned}\n\
             \x20 presented: {presented}\n\
             Someone may be intercepting the connection, or the relay's certificate was \
             replaced (a new data directory, a new certificate). Nothing was sent to it.\n\
             hint: ask the relay's operator for its fingerprint; only if it is the presented \
             one, log in again:\n\
             \x20 sesame login {url} --fingerprint {presented}\n"
        ),
        _ => format!("error: cannot trust the relay at {url}: {refusal}\n"),
    }
}

/// Whether a connection failed over the relay's certificate.
fn mentions_certificate(error: &Error) -> bool {
    let line = sesame_tunnel::one_line(error);
    line.contains("certificate") || line.contains("fingerprint")
}

/// The error as one line: what failed, then its root cause, if it adds anything.
pub(crate) fn one_line(error: &anyhow::Error) -> String {
    sesame_tunnel::one_line(error.as_ref())
}

/// What to do about a refusal, by its code and what the relay said.
fn status_hint(code: Code, message: &str) -> Option<&'static str> {
    match code {
        // A token was given, and it is no good: logging in with it again will not help.
        Code::Unauthenticated
            if ["revoked", "expired", "not valid"]
                .iter()
                .any(|why| message.contains(why)) =>
        {
            Some(
                "ask the relay's administrator for a new token, then log in with it: \
                 `sesame login RELAY_URL --token TOKEN`",
            )
        }
        Code::Unauthenticated => Some(
            "log in with `sesame login RELAY_URL`, or pass --token (or SESAME_TOKEN) with a valid token",
        ),
        Code::PermissionDenied if message.contains("belongs to another token") => Some(
            "choose another name with --name: a name stays with the token that registered it \
             until that token is revoked or expires",
        ),
        Code::PermissionDenied => Some(
            "ask the relay's administrator for a token with that scope \
             (`sesame relay token create --scope ...`)",
        ),
        _ => None,
    }
}

/// What to do when the relay cannot be reached, by why.
fn unreachable_hint(error: &Error) -> &'static str {
    let mut kinds = std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .filter_map(|cause| cause.downcast_ref::<io::Error>());
    let cause = sesame_tunnel::one_line(error).to_lowercase();
    if kinds.any(|e| e.kind() == io::ErrorKind::ConnectionRefused)
        || cause.ends_with("connection refused")
    {
        return "start one with `sesame relay serve`, or point --relay (or SESAME_RELAY) at yours";
    }
    if cause.contains("lookup") || cause.contains("name or service not known") {
        return "check the relay's address (--relay, SESAME_RELAY, or what `sesame login` stored)";
    }
    if cause.contains("timed out") || cause.contains("deadline") {
        return "check that the relay runs and that no firewall drops connections to its port";
    }
    "check the relay's address and port, and that a relay serves there"
}

/// What the user might do about `error`, if there is something to suggest.
pub(crate) fn hint(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<sesame_tunnel::tonic::Status>() {
            return status_hint(status.code(), status.message());
        }
        if let Some(error) = cause.downcast_ref::<Error>() {
            return match error {
                Error::Status(status) => status_hint(status.code(), status.message()),
                Error::RelayUnreachable { .. } if mentions_certificate(error) => Some(
                    "the relay's certificate is not trusted: check --fingerprint or --ca, and \
                     if it changed on purpose, log in again with `sesame login`",
                ),
                Error::BadTrust { .. } => Some(
                    "pass --fingerprint with the fingerprint the relay printed at start, or \
                     --ca with the authority that signed its certificate",
                ),
                Error::PlaintextToken { .. } => Some(
                    "name the relay with https:// (a relay serves TLS unless started with \
                     --insecure-plaintext, which it accepts on loopback only)",
                ),
                Error::RemoteNotFound { .. } => {
                    Some("`sesame ls` lists the remotes connected to the relay")
                }
                Error::PortNotExposed { .. } => {
                    Some("`sesame ls` shows the ports each remote exposes")
                }
                Error::NameInUse { .. } => {
                    Some("choose another name with --name, or stop the agent that holds this one")
                }
                Error::RelayUnreachable { .. } | Error::RelayIo { .. } => {
                    Some(unreachable_hint(error))
                }
                Error::TargetRefused { .. } => {
                    Some("is the service behind that port running on the remote's side?")
                }
                Error::Protocol { .. } => {
                    Some("the relay and this program may be incompatible versions")
                }
                _ => None,
            };
        }
        if let Some(error) = cause.downcast_ref::<io::Error>()
            && error.kind() == io::ErrorKind::AddrInUse
        {
            return Some("another program uses that address: pick another");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_line_keeps_the_message_and_the_root_cause() {
        let io = io::Error::from(io::ErrorKind::AddrInUse);
        let error = Err::<(), _>(io)
            .context("cannot listen on 127.0.0.1:7373")
            .unwrap_err();
        assert_eq!(
            one_line(&error),
            "cannot listen on 127.0.0.1:7373: address in use"
        );
        assert_eq!(
            hint(&error),
            Some("another program uses that address: pick another")
        );
    }

    #[test]
    fn typed_errors_get_their_hint() {
        let error = anyhow::Error::from(Error::RemoteNotFound { name: "pi".into() });
        assert_eq!(one_line(&error), r#"no remote named "pi""#);
        assert!(hint(&error).unwrap().contains("sesame ls"));
    }

    #[test]
    fn refused_certificates_show_the_fingerprints_and_what_to_do() {
        let pinned = sesame_tunnel::Fingerprint::of(b"pinned");
        let presented = sesame_tunnel::Fingerprint::of(b"presented");
        let url = "https://relay.example:7373";
        let changed = CertificateRefusal::Changed { pinned, presented };
        let text = refused_certificate(&changed, Some(url));
        assert!(
            text.starts_with("error: THE RELAY'S CERTIFICATE HAS CHANGED\n"),
            "{text}"
        );
        for part in [
            format!("pinned:    {pinned}"),
            format!("presented: {presented}"),
            format!("sesame login {url} --fingerprint {presented}"),
        ] {
            assert!(text.contains(&part), "{part} in\n{text}");
        }
        let why = "is not signed by an authority trusted here";
        let untrusted = CertificateRefusal::Untrusted { presented, why };
        let text = refused_certificate(&untrusted, Some(url));
        assert!(text.contains(&format!("its certificate {why}")), "{text}");
        assert!(
            text.contains(&format!("--fingerprint {presented}")),
            "{text}"
        );
        for library in [
            "unknownIssuer",
            "UnknownIssuer",
            "InvalidCertificate",
            "start one",
        ] {
            assert!(!text.contains(library), "{text}");
        }
        let expired = CertificateRefusal::Untrusted {
            presented,
            why: "has expired",
        };
        let text = refused_certificate(&expired, Some(url));
        assert!(text.contains("must renew its certificate"), "{text}");
        assert!(!text.contains("sesame login"), "pinning is no fix: {text}");
    }

    #[test]
    fn causes_read_as_short_phrases() {
        let refused = std::io::Error::other("tcp connect error: Connection refused (os error 111)");
        let error = Err::<(), _>(refused)
            .context("cannot reach relay at http://127.0.0.1:1")
            .unwrap_err();
        assert_eq!(
            one_line(&error),
            "cannot reach relay at http://127.0.0.1:1: connection refused"
        );
    }
}
