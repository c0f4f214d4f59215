//! [`Reconnect`]: when an agent that lost its relay tries again, and which failures are
//! worth another try.

use std::time::Duration;

use tonic::Code;

use crate::Error;

/// How an agent reconnects after losing its relay: capped exponential backoff with jitter.
///
/// The n-th attempt in a row waits a random time between half and all of
/// `initial_delay * 2^n`, never more than `max_delay`. Jitter keeps a fleet of agents from
/// reconnecting in lockstep when their relay comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The delay before the first attempt.
    pub initial_delay: Duration,
    /// The longest delay between attempts. A session that lasted at least this long starts
    /// again from `initial_delay` when it is lost.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl Reconnect {
    /// Backoff from `initial_delay` up to `max_delay`.
    pub fn new(initial_delay: Duration, max_delay: Duration) -> Self {
        Reconnect {
            initial_delay,
            max_delay: max_delay.max(initial_delay),
        }
    }

    /// The wait before attempt `failures + 1`, with `jitter` in `0.0..=1.0` choosing where in
    /// the upper half of the step it falls.
    pub(super) fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let step = self
            .initial_delay
            .saturating_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// A random jitter for [`delay`](Self::delay).
    pub(super) fn jitter() -> f64 {
        let mut bytes = [0; 4];
        // Without randomness the delays are merely in lockstep: still correct.
        let _ = getrandom::fill(&mut bytes);
        f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
    }
}

/// Whether trying again cannot help: the relay refused this agent for what it is (its name,
/// its version, its credentials), not for a passing condition.
pub(super) fn is_permanent(error: &Error) -> bool {
    match error {
        Error::NameInUse { .. } | Error::InvalidName { .. } | Error::Protocol { .. } => true,
        Error::Status(status) => matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::Aborted
                | Code::Unimplemented
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let policy = Reconnect::new(Duration::from_millis(500), Duration::from_secs(30));
        let full: Vec<_> = (0..9).map(|n| policy.delay(n, 1.0).as_millis()).collect();
        assert_eq!(
            full,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(Reconnect::default().max_delay, Duration::from_secs(15));
        assert_eq!(policy.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(policy.delay(u32::MAX, 0.5), Duration::from_millis(22_500));
        let jitter = Reconnect::jitter();
        assert!((0.0..=1.0).contains(&jitter));
    }

    #[test]
    fn only_refusals_of_the_agent_itself_are_permanent() {
        let name_taken = Error::NameInUse { name: "pi".into() };
        assert!(is_permanent(&name_taken));
        assert!(is_permanent(&Error::Status(Status::permission_denied(
            "no"
        ))));
        assert!(!is_permanent(&Error::Status(Status::unavailable("later"))));
        let timeout = Error::Timeout {
            what: "the session handshake",
            after: Duration::from_secs(1),
        };
        assert!(!is_permanent(&timeout));
    }
}
