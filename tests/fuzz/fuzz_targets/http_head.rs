//! Untrusted input: everything an HTTP client on the internet sends on one connection to the
//! relay's public plaintext HTTP listener (its virtual hosts `NAME.DOMAIN`).
//!
//! Each input is a whole connection, served by the relay's own connection handling through
//! `sesame_relay::fuzzing::HttpFront` (feature `fuzzing`) over an in-memory stream: the
//! HTTP/1.1-or-HTTP/2 sniffing, hyper's parsing, the host lookup, the header rewriting and
//! the relay's error pages. `h1.relay.test` and `h2.relay.test` have routes (to services
//! that cannot be reached), `gone.relay.test` went offline. The first byte is never sent:
//! when it is odd the HTTP/2 preface is sent first, and unless its second bit is set the
//! client waits until the relay has acted on everything before it shuts its write side. The
//! runtime's clock is paused, so timeouts cost no real time.
//!
//! The same bytes, read as text, also go straight to the pure helpers: the first line as a
//! host to look up, the rest as `name: value` header lines to rewrite as a request's and a
//! response's. Nothing may panic or hang.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sesame_fuzz::{STEP, paused_runtime, play_client};
use sesame_relay::fuzzing::{DOMAIN, HttpFront, rewrite_request_headers, rewrite_response_headers};
use sesame_tunnel::RemoteName;
use tokio::runtime::Runtime;

struct Fixture {
    runtime: Runtime,
    front: HttpFront,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        runtime: paused_runtime(),
        front: HttpFront::default(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    helpers(&fixture.front, rest);
    fixture.runtime.block_on(connection(
        &fixture.front,
        mode & 1 == 1,
        mode & 2 == 0,
        rest,
    ));
});

async fn connection(front: &HttpFront, preface: bool, settle: bool, input: &[u8]) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let serve = front.serve_connection(server);
    // The connection is served here rather than spawned: when the time is up, it goes.
    let _ = tokio::time::timeout(STEP, async {
        tokio::join!(serve, play_client(client, preface, settle, input))
    })
    .await;
}

/// The pure helpers, on the input as text.
fn helpers(front: &HttpFront, input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let mut lines = text.split("\r\n");
    let host = lines.next().unwrap_or_default();
    if let Some(name) = front.remote_of(host) {
        // Only a single label under the domain names a remote.
        assert_eq!(RemoteName::new(name.as_str()).ok(), Some(name.clone()));
        let host = host.to_ascii_lowercase();
        assert!(host.starts_with(&format!("{name}.{DOMAIN}")), "{host:?}");
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let mut response = headers.clone();
    let upgrade = rewrite_request_headers(&mut headers, host, input.len() % 2 == 0);
    for hop in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
    ] {
        assert!(!headers.contains_key(hop), "{hop} was forwarded");
    }
    assert_eq!(headers.contains_key("upgrade"), upgrade);
    assert!(headers.contains_key("x-forwarded-for"));
    assert!(headers.contains_key("x-forwarded-proto"));
    rewrite_response_headers(&mut response);
    for hop in ["connection", "keep-alive", "upgrade", "transfer-encoding"] {
        assert!(!response.contains_key(hop), "{hop} was passed back");
    }
}
