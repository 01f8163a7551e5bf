//! Failed-login limiting: per source address and per user name, with
//! exponential backoff. After `max_failures` failures a key is refused for
//! `initial`, and each further failure doubles that up to `max`; a key's
//! failures are forgotten after `window` without one. While a key is refused
//! its attempts are answered without any password verification, so a guessing
//! client costs the gateway next to nothing.
//!
//! Unknown user names are tracked exactly like known ones: whether a name is
//! throttled must not tell an attacker whether it exists.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys remembered at most (each a few dozen bytes); a spray of random user
/// names evicts the least useful entries instead of growing memory.
const CAPACITY: u64 = 65_536;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Source(IpAddr),
    User(Arc<str>),
}

impl LimitKey {
    /// The `scope` label of `rampart_auth_throttled_total`.
    pub fn scope(&self) -> &'static str {
        match self {
            LimitKey::Source(_) => "source",
            LimitKey::User(_) => "user",
        }
    }
}

/// The `[proxy] auth_*` backoff settings of one configuration generation.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub max_failures: u32,
    pub initial: Duration,
    pub max: Duration,
    pub window: Duration,
}

impl BackoffPolicy {
    /// The refusal period after `failures` failures, if any.
    fn delay(&self, failures: u32) -> Option<Duration> {
        if self.max_failures == 0 || failures < self.max_failures {
            return None;
        }
        // Capped exponent: 2^20 times any sane initial delay exceeds any sane max.
        let doublings = (failures - self.max_failures).min(20);
        Some(self.initial.saturating_mul(1 << doublings).min(self.max))
    }
}

#[derive(Debug)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts of the whole process; outlives configuration reloads.
pub struct FailureLimiter {
    records: moka::sync::Cache<LimitKey, Arc<Mutex<Record>>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl FailureLimiter {
    pub fn new() -> Self {
        FailureLimiter {
            records: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                // Longer than any window worth configuring; the window itself is
                // checked on each access so a reload can change it.
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// How long `key` is still refused, if it is.
    pub fn blocked(&self, key: &LimitKey, now: Instant) -> Option<Duration> {
        let record = self.records.get(key)?;
        let record = record.lock().unwrap_or_else(|p| p.into_inner());
        let until = record.blocked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Counts a failure of `key`; returns the refusal period it starts, if any.
    pub fn record_failure(
        &self,
        key: LimitKey,
        policy: &BackoffPolicy,
        now: Instant,
    ) -> Option<Duration> {
        let record = self.records.get_with(key, || {
            Arc::new(Mutex::new(Record {
                failures: 0,
                last_failure: now,
                blocked_until: None,
            }))
        });
        let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(record.last_failure) > policy.window {
            record.failures = 0;
            record.blocked_until = None;
        }
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        let delay = policy.delay(record.failures)?;
        record.blocked_until = Some(now + delay);
        Some(delay)
    }

    /// Forgets `key`'s failures (a user who proved their password).
    pub fn forget(&self, key: &LimitKey) {
        self.records.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            max_failures: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            window: Duration::from_secs(60),
        }
    }

    fn source() -> LimitKey {
        LimitKey::Source("192.0.2.7".parse().unwrap())
    }

    #[test]
    fn backoff_starts_after_max_failures_and_doubles_up_to_the_cap() {
        let limiter = FailureLimiter::new();
        let t0 = Instant::now();
        assert_eq!(limiter.record_failure(source(), &policy(), t0), None);
        assert_eq!(limiter.record_failure(source(), &policy(), t0), None);
        assert_eq!(limiter.blocked(&source(), t0), None);
        let delays: Vec<_> = (0..5)
            .map(|_| limiter.record_failure(source(), &policy(), t0))
            .collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(delays, vec![secs(1), secs(2), secs(4), secs(5), secs(5)]);
        assert_eq!(limiter.blocked(&source(), t0), secs(5));
        assert_eq!(
            limiter.blocked(&source(), t0 + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let limiter = FailureLimiter::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.record_failure(source(), &policy(), t0);
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limiter.record_failure(source(), &policy(), later), None);
    }

    #[test]
    fn keys_are_independent_and_forget_clears_one() {
        let limiter = FailureLimiter::new();
        let t0 = Instant::now();
        let alice = LimitKey::User("alice".into());
        for _ in 0..3 {
            limiter.record_failure(alice.clone(), &policy(), t0);
        }
        assert!(limiter.blocked(&alice, t0).is_some());
        assert!(limiter.blocked(&source(), t0).is_none());
        limiter.forget(&alice);
        assert!(limiter.blocked(&alice, t0).is_none());
    }

    #[test]
    fn zero_max_failures_disables_the_limit() {
        let limiter = FailureLimiter::new();
        let off = BackoffPolicy {
            max_failures: 0,
            ..policy()
        };
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.record_failure(source(), &off, t0), None);
        }
    }
}
