//! A limit on failed authentications per source address: after a burst of failures, an
//! address is refused outright until it has waited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::config::FailureBudget;

/// The most addresses tracked at once; beyond it, addresses back to a full allowance are
/// forgotten first.
const MAX_TRACKED: usize = 65_536;

/// Counts failed authentications per address, as a token bucket per address.
#[derive(Debug)]
pub(crate) struct FailedAuthLimiter {
    budget: FailureBudget,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
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

impl FailedAuthLimiter {
    pub(crate) fn new(budget: FailureBudget) -> Self {
        FailedAuthLimiter {
            budget,
            addresses: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<IpAddr, Bucket>) -> T) -> T {
        f(&mut crate::lock(&self.addresses))
    }

    /// `RESOURCE_EXHAUSTED` if `address` has used up its failures and must wait.
    pub(crate) fn check(&self, address: IpAddr) -> Result<(), Status> {
        let budget = self.budget;
        self.with(|addresses| {
            let Some(bucket) = addresses.get_mut(&address) else {
                return Ok(());
            };
            bucket.refill(budget, Instant::now());
            if bucket.allowance >= 1.0 {
                return Ok(());
            }
            let wait = budget.refill.mul_f64(1.0 - bucket.allowance);
            Err(Status::resource_exhausted(format!(
                "too many failed authentications from {address}: try again in {}",
                sesame_tunnel::format_duration(wait.max(Duration::from_millis(1)))
            )))
        })
    }

    /// Counts a failed authentication from `address`.
    pub(crate) fn failed(&self, address: IpAddr) {
        let budget = self.budget;
        let now = Instant::now();
        self.with(|addresses| {
            if addresses.len() >= MAX_TRACKED && !addresses.contains_key(&address) {
                addresses.retain(|_, bucket| {
                    bucket.refill(budget, now);
                    bucket.allowance < f64::from(budget.burst)
                });
                if addresses.len() >= MAX_TRACKED {
                    addresses.clear();
                }
            }
            let bucket = addresses.entry(address).or_insert(Bucket {
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

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_locks_one_address_out_for_a_while() {
        let limiter = FailedAuthLimiter::new(FailureBudget {
            burst: 3,
            refill: Duration::from_secs(10),
        });
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let bystander: IpAddr = "192.0.2.2".parse().unwrap();
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
}
