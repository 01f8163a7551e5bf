//! Clients that abort the handshake after seeing Rampart's certificate (alert unknown_ca /
//! bad_certificate, or a close before the first byte) are probably pinning. This module
//! recognises those failures, counts them per host, and — only when enabled — splices a
//! host for a while after repeated failures, never for hosts on the `never_bypass` list
//! or in one of the `never_bypass_categories` (the caller supplies a host's categories
//! from the policy: this crate knows no categories).
use crate::host_pattern::HostPatternSet;
use crate::TlsError;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Hosts whose counters are kept at most (least recently used dropped first).
const MAX_TRACKED_HOSTS: u64 = 10_000;

/// `[tls.pinned_clients]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PinnedClientSettings {
    /// Splice a host temporarily after `failures` rejections within `window`. Off by default.
    pub auto_bypass: bool,
    /// Rejections within `window` that start a bypass.
    pub failures: u32,
    /// Window in which rejections are counted (e.g. "10m").
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long an automatic bypass lasts (e.g. "1h").
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Host patterns that must always be inspected, whatever their clients do.
    pub never_bypass: Vec<String>,
    /// Policy categories (or custom categories, apps, lists) whose hosts must always be
    /// inspected; compared without ASCII case.
    pub never_bypass_categories: Vec<String>,
}

impl Default for PinnedClientSettings {
    fn default() -> Self {
        PinnedClientSettings {
            auto_bypass: false,
            failures: 3,
            window: Duration::from_secs(600),
            ttl: Duration::from_secs(3600),
            never_bypass: Vec::new(),
            never_bypass_categories: Vec::new(),
        }
    }
}

/// How a client rejected the intercepted handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRejection {
    /// The client sent a certificate-related alert (it does not trust our leaf).
    Alert(String),
    /// The client closed the connection during the handshake or before its first request.
    Closed,
}

impl ClientRejection {
    /// Recognises a pinning client from the error of the client-facing TLS accept.
    pub fn from_handshake_error(err: &std::io::Error) -> Option<Self> {
        use rustls::AlertDescription as A;
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::AlertReceived(
                    alert @ (A::UnknownCA
                    | A::BadCertificate
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::AccessDenied),
                ) => Some(ClientRejection::Alert(format!("{alert:?}"))),
                _ => None,
            };
        }
        match err.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted => Some(ClientRejection::Closed),
            _ => None,
        }
    }
}

/// What recording a rejection led to; the gateway turns each into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinnedOutcome {
    /// Counted; no bypass (disabled, or below the threshold).
    Recorded { failures_in_window: u32, total: u64 },
    /// This rejection started a temporary bypass (audit it).
    BypassStarted { ttl: Duration },
    /// The threshold was reached but the host must be inspected: `reason` names the
    /// setting and the pattern or category that matched.
    BypassRefused { reason: String },
}

/// Per-host rejection counters and active automatic bypasses.
pub struct PinnedClientTracker {
    settings: PinnedClientSettings,
    never: HostPatternSet,
    window: moka::sync::Cache<String, Arc<AtomicU64>>,
    totals: moka::sync::Cache<String, Arc<AtomicU64>>,
    bypassed: moka::sync::Cache<String, ()>,
}

impl std::fmt::Debug for PinnedClientTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedClientTracker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PinnedClientTracker {
    pub fn new(settings: &PinnedClientSettings) -> Result<Self, TlsError> {
        let never =
            HostPatternSet::parse("tls.pinned_clients.never_bypass", &settings.never_bypass)?;
        Ok(PinnedClientTracker {
            settings: settings.clone(),
            never,
            window: moka::sync::Cache::builder()
                .max_capacity(MAX_TRACKED_HOSTS)
                .time_to_live(settings.window)
                .build(),
            totals: moka::sync::Cache::new(MAX_TRACKED_HOSTS),
            bypassed: moka::sync::Cache::builder()
                .max_capacity(MAX_TRACKED_HOSTS)
                .time_to_live(settings.ttl)
                .build(),
        })
    }

    /// Counts one rejection for `host`.
    pub fn record_failure(&self, host: &str) -> PinnedOutcome {
        self.record_failure_in(host, &[])
    }

    /// Counts one rejection for `host`, which belongs to `categories` (names from the
    /// policy: categories, custom categories, apps, lists).
    pub fn record_failure_in(&self, host: &str, categories: &[&str]) -> PinnedOutcome {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let total = self
            .totals
            .get_with_by_ref(&key, || Arc::new(AtomicU64::new(0)))
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // The window counter expires `window` after its first failure.
        let in_window = self
            .window
            .get_with_by_ref(&key, || Arc::new(AtomicU64::new(0)))
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let in_window = u32::try_from(in_window).unwrap_or(u32::MAX);
        if !self.settings.auto_bypass || in_window < self.settings.failures {
            return PinnedOutcome::Recorded {
                failures_in_window: in_window,
                total,
            };
        }
        if let Some(p) = self.never.find(&key) {
            return PinnedOutcome::BypassRefused {
                reason: format!("tls.pinned_clients.never_bypass {p}"),
            };
        }
        if let Some(category) = categories.iter().find(|c| {
            self.settings
                .never_bypass_categories
                .iter()
                .any(|n| n.eq_ignore_ascii_case(c))
        }) {
            return PinnedOutcome::BypassRefused {
                reason: format!("tls.pinned_clients.never_bypass_categories {category}"),
            };
        }
        if self.bypassed.contains_key(&key) {
            return PinnedOutcome::Recorded {
                failures_in_window: in_window,
                total,
            };
        }
        self.bypassed.insert(key.clone(), ());
        self.window.invalidate(&key);
        PinnedOutcome::BypassStarted {
            ttl: self.settings.ttl,
        }
    }

    /// Whether `host` is currently spliced by an automatic bypass.
    pub fn is_bypassed(&self, host: &str) -> bool {
        if !self.settings.auto_bypass {
            return false;
        }
        let host = host.trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.bypassed.contains_key(&host.to_ascii_lowercase())
        } else {
            self.bypassed.contains_key(host)
        }
    }

    /// Rejections ever recorded for `host` (while it stays among the tracked hosts).
    pub fn total_failures(&self, host: &str) -> u64 {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        self.totals
            .get(&key)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(auto: bool) -> PinnedClientSettings {
        PinnedClientSettings {
            auto_bypass: auto,
            failures: 3,
            window: Duration::from_secs(60),
            ttl: Duration::from_millis(300),
            never_bypass: vec![".bank.example".into()],
            never_bypass_categories: vec!["Finance".into()],
        }
    }

    #[test]
    fn failures_are_counted_without_bypass_when_disabled() {
        let t = PinnedClientTracker::new(&settings(false)).unwrap();
        for _ in 0..5 {
            t.record_failure("app.example");
        }
        assert_eq!(t.total_failures("APP.example"), 5);
        assert!(!t.is_bypassed("app.example"));
    }

    #[test]
    fn third_failure_starts_a_bypass_that_expires() {
        let t = PinnedClientTracker::new(&settings(true)).unwrap();
        assert!(matches!(
            t.record_failure("app.example"),
            PinnedOutcome::Recorded {
                failures_in_window: 1,
                ..
            }
        ));
        t.record_failure("app.example");
        assert_eq!(
            t.record_failure("app.example"),
            PinnedOutcome::BypassStarted {
                ttl: Duration::from_millis(300)
            }
        );
        assert!(t.is_bypassed("App.Example"));
        std::thread::sleep(Duration::from_millis(400));
        assert!(!t.is_bypassed("app.example"));
    }

    #[test]
    fn must_inspect_hosts_are_never_bypassed() {
        let t = PinnedClientTracker::new(&settings(true)).unwrap();
        for _ in 0..2 {
            t.record_failure("www.bank.example");
        }
        assert_eq!(
            t.record_failure("www.bank.example"),
            PinnedOutcome::BypassRefused {
                reason: "tls.pinned_clients.never_bypass .bank.example".into()
            }
        );
        assert!(!t.is_bypassed("www.bank.example"));
    }

    #[test]
    fn hosts_in_must_inspect_categories_are_never_bypassed() {
        let t = PinnedClientTracker::new(&settings(true)).unwrap();
        for _ in 0..2 {
            t.record_failure_in("pay.example", &["shopping", "finance"]);
        }
        assert_eq!(
            t.record_failure_in("pay.example", &["shopping", "finance"]),
            PinnedOutcome::BypassRefused {
                reason: "tls.pinned_clients.never_bypass_categories finance".into()
            }
        );
        assert!(!t.is_bypassed("pay.example"));
        for _ in 0..3 {
            t.record_failure_in("shop.example", &["shopping"]);
        }
        assert!(t.is_bypassed("shop.example"));
    }

    #[test]
    fn unknown_ca_alert_and_early_close_are_rejections() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(
            ClientRejection::from_handshake_error(&alert),
            Some(ClientRejection::Alert("UnknownCA".into()))
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            ClientRejection::from_handshake_error(&eof),
            Some(ClientRejection::Closed)
        );
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        );
        assert_eq!(ClientRejection::from_handshake_error(&other), None);
    }
}
