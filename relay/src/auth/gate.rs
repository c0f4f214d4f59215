//! [`Gate`]: the check every call to the relay passes first.

use std::sync::Arc;

use sesame_tunnel::RemoteName;
use tonic::{Request, Status};

use super::throttle::FailedAuthLimiter;
use super::{Authorize, Caller};
use crate::config::FailureBudget;
use crate::metrics::Metrics;

/// Authenticates calls with an [`Authorize`], refusing addresses that failed too often.
pub(crate) struct Gate {
    auth: Arc<dyn Authorize>,
    failures: FailedAuthLimiter,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// Checks calls with `auth`, locks out addresses beyond `budget`, and counts refusals in
    /// `metrics`.
    pub(crate) fn new(
        auth: Arc<dyn Authorize>,
        budget: FailureBudget,
        metrics: Arc<Metrics>,
    ) -> Self {
        Gate {
            auth,
            failures: FailedAuthLimiter::new(budget),
            metrics,
        }
    }

    /// Who made a call. An address that failed too often is refused before its token is
    /// looked at; each `UNAUTHENTICATED` counts against its address (for IPv6, against its
    /// /64 network).
    pub(crate) fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let address = request.remote_addr().map(|addr| addr.ip());
        if let Some(address) = address
            && let Err(locked_out) = self.failures.check(address)
        {
            self.metrics.throttled();
            return Err(locked_out);
        }
        let result = self.auth.authenticate(request.metadata());
        if let Err(status) = &result
            && status.code() == tonic::Code::Unauthenticated
        {
            self.metrics.auth_failed();
            if let Some(address) = address {
                self.failures.failed(address);
                tracing::info!(%address, reason = status.message(), "refused a call");
            }
        }
        result
    }

    /// Lets `caller` register `name`, as [`Authorize::claim_name`] decides.
    pub(crate) fn claim_name(
        &self,
        caller: &Caller,
        name: &RemoteName,
        max_per_token: usize,
    ) -> Result<(), Status> {
        self.auth.claim_name(caller, name, max_per_token)
    }
}
