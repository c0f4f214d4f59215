//! The PROXY protocol header (version 2) that tells a local target who the client is.
//!
//! A connection that reaches a target through a tunnel comes, as far as the target can see,
//! from the agent next to it. Sent first on that connection, a PROXY protocol header carries
//! the public client's address and the address it connected to, so a target that accepts the
//! header (HAProxy, nginx's `proxy_protocol`, and many others) logs and filters on the real
//! client. The format is section 2.2 of HAProxy's
//! [specification](https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

/// The twelve bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2 (high nibble), command `PROXY` (low nibble): the connection was relayed on
/// behalf of another node.
const VERSION_2_PROXY: u8 = 0x21;
/// Address family `AF_INET` (high nibble), transport `STREAM` (low nibble): TCP over IPv4.
const TCP_OVER_IPV4: u8 = 0x11;
/// Address family `AF_INET6` (high nibble), transport `STREAM` (low nibble): TCP over IPv6.
const TCP_OVER_IPV6: u8 = 0x21;
/// Two IPv4 addresses and two ports.
const IPV4_ADDRESSES_LEN: u16 = 4 + 4 + 2 + 2;
/// Two IPv6 addresses and two ports.
const IPV6_ADDRESSES_LEN: u16 = 16 + 16 + 2 + 2;

/// The PROXY protocol version 2 header for a TCP connection from `source` (the public client)
/// to `destination` (the address the client connected to), to be written to the local target
/// before any of the client's bytes, so the target sees the public client's address rather
/// than the agent's.
///
/// Both addresses are sent as IPv4 when both are IPv4, and as IPv6 otherwise, an IPv4 address
/// then becoming its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`). The header carries no TLVs.
///
/// ```
/// use std::net::SocketAddr;
///
/// let client: SocketAddr = "192.0.2.1:56324".parse().unwrap();
/// let public: SocketAddr = "198.51.100.7:443".parse().unwrap();
/// let header = sesame_relay::proxy_protocol::v2_header(client, public);
/// assert!(header.starts_with(&sesame_relay::proxy_protocol::SIGNATURE));
/// assert_eq!(header.len(), 16 + 12);
/// ```
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Bytes {
    let mut header = BytesMut::with_capacity(SIGNATURE.len() + 4 + usize::from(IPV6_ADDRESSES_LEN));
    header.put_slice(&SIGNATURE);
    header.put_u8(VERSION_2_PROXY);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(source_ip), IpAddr::V4(destination_ip)) => {
            header.put_u8(TCP_OVER_IPV4);
            header.put_u16(IPV4_ADDRESSES_LEN);
            header.put_slice(&source_ip.octets());
            header.put_slice(&destination_ip.octets());
        }
        (source_ip, destination_ip) => {
            header.put_u8(TCP_OVER_IPV6);
            header.put_u16(IPV6_ADDRESSES_LEN);
            header.put_slice(&as_ipv6(source_ip).octets());
            header.put_slice(&as_ipv6(destination_ip).octets());
        }
    }
    header.put_u16(source.port());
    header.put_u16(destination.port());
    header.freeze()
}

/// An IPv6 address as it is, an IPv4 one as its IPv4-mapped IPv6 form.
fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

    use super::*;

    /// Reads a version 2 `PROXY` header for TCP back into its two addresses, checking every
    /// field and that nothing follows the addresses.
    fn parse(header: &[u8]) -> Result<(SocketAddr, SocketAddr), String> {
        let rest = header
            .strip_prefix(&SIGNATURE)
            .ok_or("no PROXY protocol v2 signature")?;
        let [version_command, family, len_high, len_low, addresses @ ..] = rest else {
            return Err(format!("{} bytes after the signature", rest.len()));
        };
        if *version_command != 0x21 {
            return Err(format!("version and command {version_command:#04x}"));
        }
        let len = usize::from(u16::from_be_bytes([*len_high, *len_low]));
        if addresses.len() != len {
            return Err(format!(
                "length {len}, but {} bytes follow",
                addresses.len()
            ));
        }
        let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
        match (family, len) {
            (0x11, 12) => {
                let ip = |at: usize| {
                    Ipv4Addr::from(<[u8; 4]>::try_from(&addresses[at..at + 4]).unwrap())
                };
                Ok((
                    SocketAddrV4::new(ip(0), port(8)).into(),
                    SocketAddrV4::new(ip(4), port(10)).into(),
                ))
            }
            (0x21, 36) => {
                let ip = |at: usize| {
                    Ipv6Addr::from(<[u8; 16]>::try_from(&addresses[at..at + 16]).unwrap())
                };
                Ok((
                    SocketAddrV6::new(ip(0), port(32), 0, 0).into(),
                    SocketAddrV6::new(ip(16), port(34), 0, 0).into(),
                ))
            }
            (family, len) => Err(format!("family {family:#04x} with length {len}")),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_header_is_byte_for_byte_the_spec() {
        let header = v2_header(addr("192.0.2.1:56324"), addr("198.51.100.7:443"));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // signature
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes of addresses
            192, 0, 2, 1, // source address
            198, 51, 100, 7, // destination address
            0xDC, 0x04, // source port 56324
            0x01, 0xBB, // destination port 443
        ];
        assert_eq!(&header[..], expected);
    }

    #[test]
    fn ipv6_header_is_byte_for_byte_the_spec() {
        let header = v2_header(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:8443"));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // signature
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, // version 2, PROXY
            0x21, // AF_INET6, STREAM
            0x00, 0x24, // 36 bytes of addresses
            // source address
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            // destination address
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
            0x9C, 0x40, // source port 40000
            0x20, 0xFB, // destination port 8443
        ];
        assert_eq!(&header[..], expected);
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6_with_the_ipv4_address_mapped() {
        let header = v2_header(addr("192.0.2.1:56324"), addr("[2001:db8::2]:443"));
        assert_eq!(header[13], 0x21, "family byte: AF_INET6, STREAM");
        assert_eq!(&header[14..16], &[0x00, 0x24]);
        assert_eq!(
            &header[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1],
            "the IPv4 source as ::ffff:192.0.2.1"
        );
        assert_eq!(
            parse(&header).unwrap(),
            (addr("[::ffff:192.0.2.1]:56324"), addr("[2001:db8::2]:443"))
        );

        let header = v2_header(addr("[2001:db8::1]:40000"), addr("198.51.100.7:443"));
        assert_eq!(
            parse(&header).unwrap(),
            (
                addr("[2001:db8::1]:40000"),
                addr("[::ffff:198.51.100.7]:443")
            )
        );
    }

    #[test]
    fn headers_parse_back_to_their_addresses() {
        let pairs = [
            ("192.0.2.1:56324", "198.51.100.7:443"),
            ("0.0.0.0:1", "255.255.255.255:65535"),
            ("127.0.0.1:0", "127.0.0.1:8080"),
            ("[::1]:65535", "[::]:1"),
            ("[2001:db8:85a3::8a2e:370:7334]:443", "[fe80::1]:22"),
            ("[::ffff:10.0.0.1]:1234", "[::ffff:10.0.0.2]:80"),
        ];
        for (source, destination) in pairs {
            let (source, destination) = (addr(source), addr(destination));
            let header = v2_header(source, destination);
            assert_eq!(
                parse(&header),
                Ok((source, destination)),
                "{source} -> {destination}"
            );
        }
    }

    #[test]
    fn the_parser_refuses_what_is_not_a_header() {
        let header = v2_header(addr("192.0.2.1:56324"), addr("198.51.100.7:443"));
        assert!(parse(&header[..header.len() - 1]).is_err(), "truncated");
        assert!(parse(&header[1..]).is_err(), "no signature");
        let mut wrong_version = header.to_vec();
        wrong_version[12] = 0x20;
        assert!(parse(&wrong_version).is_err(), "LOCAL command");
    }
}
