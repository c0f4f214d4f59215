//! A limit on failed authentications per source: after a burst of failures, a source is
//! refused outright until it has waited. A source is an IPv4 address, or an IPv6 /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tracing::debug;

use crate::admission::AddressKey;
use crate::config::FailureBudget;

/// The most sources tracked at once.
const MAX_TRACKED: usize = 65_536;

/// Counts failed authentications per source, as a token bucket per source.
#[derive(Debug)]
pub(crate) struct FailedAuthLimiter {
    budget: FailureBudget,
    capacity: usize,
    table: Mutex<Table>,
}

/// The sources being counted.
#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<AddressKey, Bucket>,
    /// While every tracked source is locked out: the soonest one of them is let in again.
    /// Until then a search for room would find none, so none is made.
    full_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Failures still allowed, fractional as the allowance refills.
    allowance: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, budget: FailureBudget, now: Instant) {
        let earned = now.duration_since(self.updated).as_secs_f64() / budget.refill.as_secs_f64();
        self.allowance = (self.allowance + earned).min(f64::from(budget.burst));
        self.updated = now;
    }
}

impl Table {
    /// Makes room for one more source if the table is full; says whether there is room.
    ///
    /// When the table fills, every source that is not locked out is forgotten at once: each
    /// gains at most the few failures it had not yet earned back, and the next scan of the
    /// whole table waits until it has filled again, so filling it costs the relay one scan
    /// per table's worth of new sources, not one per source. A source that is locked out is
    /// never forgotten to make room: an attacker who fills the table with sources of its own
    /// must not thereby let itself, or anyone, in again. The price, while the table is full of
    /// locked-out sources, is that a new source's failures go uncounted until one of them is
    /// let in again.
    fn make_room(&mut self, budget: FailureBudget, capacity: usize, now: Instant) -> bool {
        if self.buckets.len() < capacity {
            return true;
        }
        if self.full_until.is_some_and(|until| now < until) {
            return false;
        }
        self.buckets.retain(|_, bucket| {
            bucket.refill(budget, now);
            bucket.allowance < 1.0
        });
        self.full_until = None;
        if self.buckets.len() < capacity {
            return true;
        }
        // Every source is locked out: none is let in before the closest has waited.
        let closest = self
            .buckets
            .values()
            .map(|bucket| bucket.allowance)
            .max_by(f64::total_cmp);
        if let Some(allowance) = closest {
            self.full_until = Some(now + budget.refill.mul_f64(1.0 - allowance));
        }
        false
    }
}

impl FailedAuthLimiter {
    pub(crate) fn new(budget: FailureBudget) -> Self {
        Self::with_capacity(budget, MAX_TRACKED)
    }

    /// A limiter that tracks at most `capacity` sources.
    fn with_capacity(budget: FailureBudget, capacity: usize) -> Self {
        FailedAuthLimiter {
            budget,
            capacity,
            table: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        f(&mut crate::lock(&self.table))
    }

    /// `RESOURCE_EXHAUSTED` if `address`'s source has used up its failures and must wait.
    pub(crate) fn check(&self, address: IpAddr) -> Result<(), Status> {
        let budget = self.budget;
        let source = AddressKey::from(address);
        self.with(|table| {
            let Some(bucket) = table.buckets.get_mut(&source) else {
                return Ok(());
            };
            bucket.refill(budget, Instant::now());
            if bucket.allowance >= 1.0 {
                return Ok(());
            }
            let wait = budget.refill.mul_f64(1.0 - bucket.allowance);
            Err(Status::resource_exhausted(format!(
                "too many failed authentications from {source}: try again in {}",
                sesame_tunnel::format_duration(wait.max(Duration::from_millis(1)))
            )))
        })
    }

    /// Counts a failed authentication from `address`, against its source.
    pub(crate) fn failed(&self, address: IpAddr) {
        let (budget, capacity) = (self.budget, self.capacity);
        let source = AddressKey::from(address);
        let now = Instant::now();
        self.with(|table| {
            if !table.buckets.contains_key(&source) && !table.make_room(budget, capacity, now) {
                debug!(%source, "every source tracked is locked out: this one is not counted");
                return;
            }
            let bucket = table.buckets.entry(source).or_insert(Bucket {
                allowance: f64::from(budget.burst),
                updated: now,
            });
            bucket.refill(budget, now);
            bucket.allowance -= 1.0;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Fails `times` authentications from `address`.
    fn fail(limiter: &FailedAuthLimiter, address: IpAddr, times: u32) {
        for _ in 0..times {
            limiter.failed(address);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_locks_one_address_out_for_a_while() {
        let limiter = FailedAuthLimiter::new(FailureBudget {
            burst: 3,
            refill: Duration::from_secs(10),
        });
        let attacker = address("192.0.2.1");
        let bystander = address("192.0.2.2");
        for _ in 0..3 {
            limiter.check(attacker).unwrap();
            limiter.failed(attacker);
        }
        let refused = limiter.check(attacker).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("192.0.2.1"),
            "{}",
            refused.message()
        );
        limiter.check(bystander).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        limiter.check(attacker).unwrap();
        limiter.failed(attacker);
        assert!(limiter.check(attacker).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_addresses_of_one_ipv6_network_share_one_budget() {
        let limiter = FailedAuthLimiter::new(FailureBudget {
            burst: 3,
            refill: Duration::from_secs(10),
        });
        // Each failure from another address of the same /64.
        for host in 1..=3 {
            let rotating = address(&format!("2001:db8:1:2::{host}"));
            limiter.check(rotating).unwrap();
            limiter.failed(rotating);
        }
        let refused = limiter
            .check(address("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .unwrap_err();
        assert!(
            refused.message().contains("2001:db8:1:2::/64"),
            "{}",
            refused.message()
        );
        limiter.check(address("2001:db8:1:3::1")).unwrap();

        // IPv4 clients of a dual-stack listener count as their IPv4 address, each apart.
        fail(&limiter, address("::ffff:192.0.2.1"), 3);
        assert!(limiter.check(address("192.0.2.1")).is_err());
        limiter.check(address("::ffff:192.0.2.2")).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn filling_the_table_with_locked_out_sources_unlocks_none() {
        let budget = FailureBudget {
            burst: 2,
            refill: Duration::from_secs(10),
        };
        let limiter = FailedAuthLimiter::with_capacity(budget, 4);
        let attacker = address("192.0.2.1");
        fail(&limiter, attacker, 2);
        assert!(limiter.check(attacker).is_err());

        // The rest of the table, then many more sources, each locked out.
        for host in 2..=100 {
            fail(&limiter, address(&format!("198.51.100.{host}")), 2);
        }
        assert!(limiter.check(attacker).is_err(), "the attacker is let in");
        for host in 2..=4 {
            let locked = address(&format!("198.51.100.{host}"));
            assert!(limiter.check(locked).is_err(), "{locked} is let in");
        }
        // What it costs: a source beyond the table is not counted while all are locked out.
        let newcomer = address("203.0.113.1");
        fail(&limiter, newcomer, 2);
        limiter.check(newcomer).unwrap();

        // Once the locked-out sources have earned a failure back, room is made again, and the
        // newcomer is counted.
        tokio::time::advance(budget.refill).await;
        fail(&limiter, newcomer, 2);
        assert!(
            limiter.check(newcomer).is_err(),
            "the newcomer is not counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn room_is_made_by_forgetting_a_source_that_is_not_locked_out() {
        let budget = FailureBudget {
            burst: 3,
            refill: Duration::from_secs(10),
        };
        let limiter = FailedAuthLimiter::with_capacity(budget, 2);
        let attacker = address("192.0.2.1");
        fail(&limiter, attacker, 3);
        // One mistyped token: not locked out, the closest to a full allowance.
        fail(&limiter, address("192.0.2.2"), 1);
        let newcomer = address("192.0.2.3");
        fail(&limiter, newcomer, 3);
        assert!(
            limiter.check(newcomer).is_err(),
            "the newcomer is not counted"
        );
        assert!(limiter.check(attacker).is_err(), "the attacker is let in");
    }
}
