//! The descriptor budget: what the process's `RLIMIT_NOFILE` allows the data
//! path (proxy and agent-tunnel flows) to open, so that a flood of tunnels is
//! refused cleanly (503, counted) instead of running the process out of
//! descriptors (`EMFILE` on every accept, for every client, with a log flood).
//!
//! The limit is split at start into
//! - headroom the process needs whatever the load: stdio, the runtime's epoll
//!   and wake-up descriptors, the listeners, the event store's segments and
//!   journal, the access log, inspection spool files, DNS lookups in flight,
//!   upstream health checks, event-sink connections and idle pooled origin
//!   connections ([`HEADROOM_FIXED`] plus [`HEADROOM_SHARE`] of the limit,
//!   because the last few grow with the load);
//! - the API listener's own cap (`[api] max_connections`, one descriptor each),
//!   so that an API flood never eats the proxy's descriptors;
//! - the rest, the data path's budget: a semaphore of descriptor units that a
//!   flow takes before it opens the descriptors they stand for.
//!
//! What each flow kind takes:
//! - a proxy connection: its socket and one origin socket ([`PROXY_CONNECTION`]);
//!   a plain forward or an intercepted tunnel needs nothing more;
//! - a spliced CONNECT tunnel: two pipes more ([`SPLICE_PIPES`]), taken before
//!   the origin is contacted so that a refusal is a clean 503; a tunnel that
//!   may be decrypted carries them and gives them back once it is
//!   (`intercept::Tunnel::pipes`);
//! - an agent connection: its socket ([`AGENT_CONNECTION`]), and each of its
//!   CONNECT streams one origin socket ([`AGENT_STREAM`]; agent streams are
//!   copied, not spliced).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors a proxy client connection holds: its socket and its origin's.
pub const PROXY_CONNECTION: u32 = 2;
/// The two pipes (four descriptors) of a spliced tunnel, beyond its connection.
pub const SPLICE_PIPES: u32 = 4;
/// An agent's tunnel connection: one socket for all its streams.
pub const AGENT_CONNECTION: u32 = 1;
/// One CONNECT stream of an agent: its origin socket.
pub const AGENT_STREAM: u32 = 1;

/// Descriptors kept for the process whatever the load (stdio, runtime, listeners,
/// event store files, access log, health checks).
pub const HEADROOM_FIXED: u64 = 128;
/// Share of the limit kept for what grows with the load but is not a flow's own
/// (spool files, DNS lookups in flight, idle pooled origin connections, sinks).
pub const HEADROOM_SHARE: u64 = 10; // percent

/// The smallest data-path budget worth starting with: 16 proxy connections.
const MIN_DATA_PATH: u64 = 16 * PROXY_CONNECTION as u64;

/// How `RLIMIT_NOFILE` is split; computed once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The soft `RLIMIT_NOFILE` the process runs with.
    pub limit: u64,
    /// Kept for the process itself (see the module documentation).
    pub headroom: u64,
    /// Kept for the API listener (`[api] max_connections`).
    pub api: u64,
    /// Units of the data path's semaphore.
    pub data_path: u64,
}

/// The descriptor limit is too low for the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the open-files limit (RLIMIT_NOFILE) is {limit}: after {headroom} descriptors of \
         headroom and {api} for [api] max_connections, {data_path} are left for proxy and agent \
         flows, fewer than the {minimum} needed; raise the limit (LimitNOFILE= in the systemd \
         unit, `ulimit -n` in the shell) or lower [api] max_connections"
    )]
    LimitTooLow {
        limit: u64,
        headroom: u64,
        api: u64,
        data_path: u64,
        minimum: u64,
    },
    #[error(
        "[limits] max_connections = {configured} needs {needed} descriptors (each connection \
         holds its socket and an origin's), but the open-files limit (RLIMIT_NOFILE) is {limit} \
         and leaves {data_path} for proxy and agent flows (after {headroom} of headroom and {api} \
         for [api] max_connections), enough for {allowed}; raise the limit (LimitNOFILE= in the \
         systemd unit, `ulimit -n` in the shell) or lower [limits] max_connections to at most \
         {allowed} (or remove it: the default is what the limit allows)"
    )]
    MaxConnectionsTooHigh {
        configured: usize,
        needed: u64,
        limit: u64,
        headroom: u64,
        api: u64,
        data_path: u64,
        allowed: usize,
    },
}

impl DescriptorPlan {
    /// Splits `limit` (the soft `RLIMIT_NOFILE`) with `api_connections` kept
    /// for the API listener.
    pub fn new(limit: u64, api_connections: u64) -> Result<Self, BudgetError> {
        let headroom = HEADROOM_FIXED + limit * HEADROOM_SHARE / 100;
        let data_path = limit
            .saturating_sub(headroom)
            .saturating_sub(api_connections);
        if data_path < MIN_DATA_PATH {
            return Err(BudgetError::LimitTooLow {
                limit,
                headroom,
                api: api_connections,
                data_path,
                minimum: MIN_DATA_PATH,
            });
        }
        Ok(DescriptorPlan {
            limit,
            headroom,
            api: api_connections,
            data_path,
        })
    }

    /// The plan for the limit the process runs with now.
    pub fn current(api_connections: u64) -> Result<Self, BudgetError> {
        Self::new(current_limit(), api_connections)
    }

    /// The most proxy connections the data path's budget holds: the default of
    /// `[limits] max_connections`.
    pub fn max_connections(&self) -> usize {
        usize::try_from(self.data_path / PROXY_CONNECTION as u64).unwrap_or(usize::MAX)
    }

    /// `[limits] max_connections` as configured (`None`: the default), checked
    /// against what the limit allows.
    pub fn check_max_connections(&self, configured: Option<usize>) -> Result<usize, BudgetError> {
        let allowed = self.max_connections();
        match configured {
            None => Ok(allowed),
            Some(configured) if configured <= allowed => Ok(configured),
            Some(configured) => Err(BudgetError::MaxConnectionsTooHigh {
                configured,
                needed: configured as u64 * PROXY_CONNECTION as u64,
                limit: self.limit,
                headroom: self.headroom,
                api: self.api,
                data_path: self.data_path,
                allowed,
            }),
        }
    }
}

/// The soft `RLIMIT_NOFILE` now (after `raise_fd_limit`); 1024, the usual
/// default, when it cannot be read. An unlimited limit counts as 2^20.
pub fn current_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.min(1 << 20),
        Err(_) => 1024,
    }
}

/// The data path's semaphore of descriptor units, shared by the proxy and
/// agent-tunnel listeners for the life of the process.
#[derive(Debug, Clone)]
pub struct FdBudget {
    units: Arc<Semaphore>,
    plan: DescriptorPlan,
}

/// Descriptor units held by a flow; they return to the budget on drop, after
/// the descriptors they stand for are closed (drop order: declare it first).
#[derive(Debug)]
pub struct Descriptors {
    _permit: OwnedSemaphorePermit,
}

impl FdBudget {
    pub fn new(plan: DescriptorPlan) -> Self {
        let units = usize::try_from(plan.data_path)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        FdBudget {
            units: Arc::new(Semaphore::new(units)),
            plan,
        }
    }

    pub fn plan(&self) -> DescriptorPlan {
        self.plan
    }

    /// Takes `units` descriptors' worth of budget now, or `None` when the
    /// budget is spent (the caller refuses the flow; it never waits).
    pub fn try_take(&self, units: u32) -> Option<Descriptors> {
        self.units
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|permit| Descriptors { _permit: permit })
    }

    /// Units free now (for tests and the metrics gauge).
    pub fn available(&self) -> usize {
        self.units.available_permits()
    }
}

/// Refuses a CONNECT the budget cannot hold (its pipes or its origin socket)
/// with a clean 503, counted in `rampart_connections_rejected_total` under
/// `listener` with reason `fd_budget`, and logged as a flow with that reason.
pub fn refuse_connect(
    shared: &crate::proxy::Shared,
    listener: &'static str,
    log: crate::flow::Flow,
) -> http::Response<crate::proxy::body::ProxyBody> {
    static WARNING: RateLimitedWarning = RateLimitedWarning::new();
    shared
        .metrics
        .connections_rejected
        .get_or_create(&crate::metrics::RejectedLabels {
            listener: listener.into(),
            reason: "fd_budget".into(),
        })
        .inc();
    if let Some(held_back) = WARNING.check() {
        tracing::warn!(
            listener,
            held_back,
            target = %log.record.target,
            "CONNECT refused, the descriptor budget is spent (raise LimitNOFILE / ulimit -n; \
             see docs/configuration.md)"
        );
    }
    let mut response = crate::proxy::error_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "the proxy is at its descriptor limit (fd_budget); retry later",
        log,
        Some("fd_budget"),
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// At most one warning per this interval and kind; the others are counted in it.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// One warning per [`WARN_EVERY`], carrying how many were held back: a flood of
/// refusals or accept errors is one line per interval, never a line each.
#[derive(Debug, Default)]
pub struct RateLimitedWarning {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedWarning {
    pub const fn new() -> Self {
        RateLimitedWarning {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_headroom_and_the_api_share_out_of_the_data_path() {
        let plan = DescriptorPlan::new(20_000, 512).unwrap();
        assert_eq!(plan.headroom, 128 + 2_000);
        assert_eq!(plan.data_path, 20_000 - 2_128 - 512);
        assert_eq!(plan.max_connections(), (20_000 - 2_128 - 512) / 2);
        // The spliced tunnels that fit are a third of the connections: the
        // budget, not EMFILE, refuses the rest.
        assert_eq!(
            plan.data_path / (PROXY_CONNECTION + SPLICE_PIPES) as u64,
            17_360 / 6
        );
    }

    #[test]
    fn max_connections_defaults_to_what_the_limit_allows_and_above_it_is_an_error() {
        let plan = DescriptorPlan::new(512, 32).unwrap();
        let allowed = plan.max_connections();
        assert_eq!(plan.check_max_connections(None), Ok(allowed));
        assert_eq!(plan.check_max_connections(Some(allowed)), Ok(allowed));
        let error = plan
            .check_max_connections(Some(20_000))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[limits] max_connections = 20000"),
            "{error}"
        );
        assert!(error.contains("RLIMIT_NOFILE) is 512"), "{error}");
        assert!(error.contains("LimitNOFILE="), "{error}");
        assert!(error.contains(&format!("at most {allowed}")), "{error}");
    }

    #[test]
    fn a_limit_that_leaves_no_data_path_is_an_error_naming_the_fix() {
        let error = DescriptorPlan::new(600, 512).unwrap_err().to_string();
        assert!(error.contains("RLIMIT_NOFILE) is 600"), "{error}");
        assert!(error.contains("[api] max_connections"), "{error}");
    }

    #[test]
    fn budget_refuses_without_waiting_and_units_return_on_drop() {
        let budget = FdBudget::new(DescriptorPlan::new(512, 32).unwrap());
        let total = budget.available();
        let mut held = Vec::new();
        while let Some(units) = budget.try_take(PROXY_CONNECTION + SPLICE_PIPES) {
            held.push(units);
        }
        assert_eq!(held.len(), total / 6);
        assert!(budget.try_take(PROXY_CONNECTION + SPLICE_PIPES).is_none());
        held.pop();
        assert!(budget.try_take(PROXY_CONNECTION + SPLICE_PIPES).is_some());
        held.clear();
        assert_eq!(budget.available(), total);
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_held_back() {
        let warning = RateLimitedWarning::new();
        assert_eq!(warning.check(), Some(0));
        assert_eq!(warning.check(), None);
        assert_eq!(warning.check(), None);
        warning.state.lock().unwrap().0 = Some(Instant::now() - WARN_EVERY);
        assert_eq!(warning.check(), Some(2));
    }
}
