//! The headers a reverse proxy changes: hop-by-hop headers go, forwarding headers come.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection rather than the message: they are not forwarded
/// (RFC 9110, section 7.6.1), and HTTP/2 forbids them.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the message asks to switch protocols (a WebSocket handshake, say): it carries
/// `Connection: upgrade` and an `Upgrade` header.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` stay, for a protocol switch to pass through; a `TE:
/// trailers` always stays, as gRPC needs it.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"));
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Tells the service who the client is: appends the client to `X-Forwarded-For` and
/// `Forwarded`, and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, proto: &str, host: &str) {
    let xff = header::HeaderName::from_static("x-forwarded-for");
    let forwarded_for = match headers.get(&xff).and_then(|value| value.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(xff, value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    if let Ok(value) = HeaderValue::from_str(host) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), value);
    }
    // RFC 7239: IPv6 addresses are bracketed and quoted; the host is quoted.
    let node = match client {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let host = host.replace(['"', '\\'], "");
    let element = format!("for={node};host=\"{host}\";proto={proto}");
    let forwarded = match headers
        .get(header::FORWARDED)
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "te"]);
        assert_eq!(map[header::TE], "trailers");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map[header::UPGRADE], "websocket");
        assert_eq!(map[header::CONNECTION], "upgrade");
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut map = headers(&[("x-forwarded-for", "203.0.113.7")]);
        add_forwarding(
            &mut map,
            "192.0.2.1".parse().unwrap(),
            "https",
            "pi.example.com",
        );
        assert_eq!(map["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "pi.example.com");
        assert_eq!(
            map[header::FORWARDED],
            "for=192.0.2.1;host=\"pi.example.com\";proto=https"
        );
        let mut map = HeaderMap::new();
        add_forwarding(
            &mut map,
            "::1".parse().unwrap(),
            "http",
            "pi.example.com:8080",
        );
        assert_eq!(
            map[header::FORWARDED],
            "for=\"[::1]\";host=\"pi.example.com:8080\";proto=http"
        );
    }
}
