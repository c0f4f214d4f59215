//! Who gets in: connections per client address, and TLS handshakes, of which one address may
//! run only a few and all addresses together a bounded number, the oldest shed first. A flood
//! of silent connections then costs its sender its own oldest attempts, never another
//! client's way in.
//!
//! Addresses are counted as [`AddressKey`]s: an IPv4 address whole, an IPv6 address by its
//! /64, which one subscriber usually holds whole and can rotate through at will.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::lock;

/// A client address as limits count it: an IPv4 address whole, an IPv6 address by its /64. A
/// host usually has a whole /64 to itself (SLAAC, privacy addresses) and can pick any address
/// in it, so counting its addresses one by one would give it 2^64 budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AddressKey(IpAddr);

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`: it is that
        // IPv4 address, not one /64 that every IPv4 client would share.
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddressKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !u128::from(u64::MAX);
                AddressKey(IpAddr::V6(Ipv6Addr::from(network)))
            }
        }
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts open connections per client address, up to a limit.
#[derive(Debug)]
pub(crate) struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<AddressKey, usize>>,
}

/// One of an address's connections, given back when dropped.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    table: Arc<PerAddress>,
    key: AddressKey,
}

impl PerAddress {
    /// At most `limit` connections per address.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::default(),
        })
    }

    /// A slot for a connection from `ip`; `None` if the address has all it may have.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = AddressKey::from(ip);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }

    /// How many connections `ip`'s address has open.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = lock(&self.open);
        open.get(&AddressKey::from(ip)).copied().unwrap_or_default()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The TLS handshakes under way on one listener: at most `per_address` from one address and
/// `total` in all. A new handshake beyond either limit sheds the oldest that holds it back.
#[derive(Debug)]
pub(crate) struct Handshakes {
    total: usize,
    per_address: usize,
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    /// Handshakes by age: a counter that only grows orders them.
    by_age: BTreeMap<u64, (AddressKey, CancellationToken)>,
    per_address: HashMap<AddressKey, usize>,
    next: u64,
}

impl Running {
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (key, shed) = self.by_age.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&key);
            }
        }
        Some(shed)
    }
}

/// A handshake let in: [`shed`](Self::shed) is cancelled if a newer one takes its place.
/// Dropping it ends its turn.
#[derive(Debug)]
pub(crate) struct Handshake {
    handshakes: Arc<Handshakes>,
    id: u64,
    shed: CancellationToken,
}

impl Handshake {
    /// Cancelled when this handshake is shed for a newer one: it should stop at once.
    pub(crate) fn shed(&self) -> &CancellationToken {
        &self.shed
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        lock(&self.handshakes.running).remove(self.id);
    }
}

impl Handshakes {
    /// At most `total` handshakes at once, and `per_address` from one address (each at least
    /// one).
    pub(crate) fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            total: total.max(1),
            per_address: per_address.max(1),
            running: Mutex::default(),
        })
    }

    /// Lets a handshake from `ip` begin, shedding the address's oldest if it has as many
    /// under way as it may, and then the oldest of all if the listener has.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Handshake {
        let key = AddressKey::from(ip);
        let mut running = lock(&self.running);
        if running.per_address.get(&key).copied().unwrap_or_default() >= self.per_address {
            let oldest = running
                .by_age
                .iter()
                .find(|(_, (held, _))| *held == key)
                .map(|(&id, _)| id);
            if let Some(shed) = oldest.and_then(|id| running.remove(id)) {
                shed.cancel();
            }
        }
        if running.by_age.len() >= self.total
            && let Some(oldest) = running.by_age.keys().next().copied()
            && let Some(shed) = running.remove(oldest)
        {
            shed.cancel();
        }
        let id = running.next;
        running.next += 1;
        let shed = CancellationToken::new();
        running.by_age.insert(id, (key, shed.clone()));
        *running.per_address.entry(key).or_default() += 1;
        Handshake {
            handshakes: self.clone(),
            id,
            shed,
        }
    }
}

/// A connection that holds its address's slot for as long as it lives.
#[derive(Debug)]
pub(crate) struct Admitted<IO> {
    io: IO,
    _slot: Option<AddressSlot>,
}

impl<IO> Admitted<IO> {
    /// `io`, holding `slot` until it is dropped.
    pub(crate) fn new(io: IO, slot: Option<AddressSlot>) -> Self {
        Admitted { io, _slot: slot }
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |text| AddressKey::from(ip(text));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[test]
    fn an_address_has_a_limited_number_of_connections_and_gets_them_back() {
        let table = PerAddress::new(2);
        let (a, b) = (ip("2001:db8::1"), ip("2001:db8::2"));
        let first = table.take(a).unwrap();
        let _second = table.take(b).unwrap();
        assert!(table.take(a).is_none(), "one /64, one budget");
        assert!(table.take(ip("192.0.2.1")).is_some());
        drop(first);
        assert_eq!(table.open(a), 1);
        assert!(table.take(a).is_some());
    }

    #[test]
    fn a_flood_sheds_its_own_oldest_handshakes_and_then_the_oldest_of_all() {
        let handshakes = Handshakes::new(4, 2);
        let attacker = ip("192.0.2.66");
        let early = handshakes.admit(ip("192.0.2.1"));
        let floods: Vec<_> = (0..10).map(|_| handshakes.admit(attacker)).collect();
        // The attacker's own oldest went; the bystander's handshake stands.
        assert!(floods[..8].iter().all(|h| h.shed().is_cancelled()));
        assert!(floods[8..].iter().all(|h| !h.shed().is_cancelled()));
        assert!(!early.shed().is_cancelled());
        // Many addresses together fill the listener: the oldest of all goes first.
        let others: Vec<_> = (2..4)
            .map(|n| handshakes.admit(ip(&format!("192.0.2.{n}"))))
            .collect();
        assert!(early.shed().is_cancelled());
        assert!(others.iter().all(|h| !h.shed().is_cancelled()));
        // A handshake that ends makes room without shedding anyone.
        drop(others);
        let late = handshakes.admit(ip("192.0.2.9"));
        assert!(floods[8..].iter().all(|h| !h.shed().is_cancelled()));
        assert!(!late.shed().is_cancelled());
    }
}
