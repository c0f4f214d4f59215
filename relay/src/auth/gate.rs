//! [`Gate`]: the check every call to the relay passes first.

use std::sync::Arc;

use sesame_tunnel::RemoteName;
use tonic::{Request, Status};

use super::throttle::FailedAuthLimiter;
use super::{Authorize, Caller};
use crate::config::FailureBudget;

/// Authenticates calls with an [`Authorize`], refusing addresses that failed too often.
pub(crate) struct Gate {
    auth: Arc<dyn Authorize>,
    failures: FailedAuthLimiter,
}

impl Gate {
    pub(crate) fn new(auth: Arc<dyn Authorize>, budget: FailureBudget) -> Self {
        Gate {
            auth,
            failures: FailedAuthLimiter::new(budget),
        }
    }

    /// Who made a call. An address that failed too often is refused before its token is
    /// looked at; each `UNAUTHENTICATED` counts against its address (for IPv6, against its
    /// /64 network).
    pub(crate) fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let address = request.remote_addr().map(|addr| addr.ip());
        if let Some(address) = address {
            self.failures.check(address)?;
        }
        let result = self.auth.authenticate(request.metadata());
        if let (Err(status), Some(address)) = (&result, address)
            && status.code() == tonic::Code::Unauthenticated
        {
            self.failures.failed(address);
            tracing::info!(%address, reason = status.message(), "refused a call");
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
