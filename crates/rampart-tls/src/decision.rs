//! Decrypt or do-not-decrypt, per connection.
//!
//! Until the policy engine's decryption stage lands, [`HostListDecider`] answers from the
//! configured `tls.do_not_decrypt` patterns, a built-in list of well-known
//! certificate-pinned apps, and the pinned-client auto-bypass. The gateway only sees the
//! [`DecryptionDecider`] trait, so the policy stage can replace it without touching the
//! data path. Do-not-decrypt connections are spliced untouched and still logged.
use crate::host_pattern::{HostPattern, HostPatternSet};
use crate::pinned_clients::PinnedClientTracker;
use crate::TlsError;
use std::fmt;
use std::sync::Arc;

/// Apps known to pin their certificates (interception breaks them), with their hosts.
/// Patterns use the [`crate::host_pattern`] syntax: `.d` = d and subdomains.
pub const BUILTIN_PINNED_APPS: &[(&str, &str)] = &[
    ("Dropbox", ".dropbox.com"),
    ("Dropbox", ".dropboxapi.com"),
    ("Apple push", ".push.apple.com"),
    ("Apple activation", "albert.apple.com"),
    ("Apple activation", "gs.apple.com"),
    ("Apple activation", "humb.apple.com"),
    ("Apple software update", "mesu.apple.com"),
    ("iCloud", ".icloud.com"),
    ("iCloud", ".apple-cloudkit.com"),
    ("Signal", ".signal.org"),
    ("Signal", ".whispersystems.org"),
    ("WhatsApp", ".whatsapp.net"),
    ("WhatsApp", ".whatsapp.com"),
    ("Zoom", ".zoom.us"),
    ("Webex", ".webex.com"),
    ("TeamViewer", ".teamviewer.com"),
    ("Windows Update", ".windowsupdate.com"),
    ("Windows Update", ".update.microsoft.com"),
    ("Windows Update", ".delivery.mp.microsoft.com"),
    ("Firefox update", "aus5.mozilla.org"),
];

/// Why a connection is (not) decrypted; shown in access logs and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptReason {
    /// Nothing matched: decrypt.
    Default,
    /// The host belongs to a built-in certificate-pinned app.
    PinnedApp { app: &'static str, pattern: String },
    /// The host matched `tls.do_not_decrypt`.
    Configured { pattern: String },
    /// Clients for this host kept rejecting Rampart's certificate; temporarily spliced.
    PinnedClientAutoBypass,
}

impl fmt::Display for DecryptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptReason::Default => f.write_str("default"),
            DecryptReason::PinnedApp { app, pattern } => {
                write!(f, "built-in pinned app {app} ({pattern})")
            }
            DecryptReason::Configured { pattern } => write!(f, "tls.do_not_decrypt {pattern}"),
            DecryptReason::PinnedClientAutoBypass => f.write_str("pinned-client auto-bypass"),
        }
    }
}

/// The decision for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptDecision {
    pub decrypt: bool,
    pub reason: DecryptReason,
}

/// The connection-stage question the gateway asks for every TLS connection.
pub trait DecryptionDecider: Send + Sync {
    /// `host` is the SNI, or the CONNECT host when the client sent no SNI.
    fn should_decrypt(&self, host: &str) -> DecryptDecision;
}

/// Configured patterns, then built-in pinned apps, then the auto-bypass; else decrypt.
#[derive(Debug)]
pub struct HostListDecider {
    configured: HostPatternSet,
    builtin: Vec<(&'static str, HostPattern)>,
    pinned_clients: Option<Arc<PinnedClientTracker>>,
}

impl HostListDecider {
    /// `do_not_decrypt` patterns; `builtin_pinned_apps` enables [`BUILTIN_PINNED_APPS`].
    pub fn new<S: AsRef<str>>(
        do_not_decrypt: &[S],
        builtin_pinned_apps: bool,
        pinned_clients: Option<Arc<PinnedClientTracker>>,
    ) -> Result<Self, TlsError> {
        let configured = HostPatternSet::parse("tls.do_not_decrypt", do_not_decrypt)?;
        let builtin = if builtin_pinned_apps {
            BUILTIN_PINNED_APPS
                .iter()
                .map(|(app, p)| Ok((*app, HostPattern::parse("built-in pinned apps", p)?)))
                .collect::<Result<Vec<_>, TlsError>>()?
        } else {
            Vec::new()
        };
        Ok(HostListDecider {
            configured,
            builtin,
            pinned_clients,
        })
    }
}

impl DecryptionDecider for HostListDecider {
    fn should_decrypt(&self, host: &str) -> DecryptDecision {
        let skip = |reason| DecryptDecision {
            decrypt: false,
            reason,
        };
        if let Some(p) = self.configured.find(host) {
            return skip(DecryptReason::Configured {
                pattern: p.to_string(),
            });
        }
        if let Some((app, p)) = self.builtin.iter().find(|(_, p)| p.matches(host)) {
            return skip(DecryptReason::PinnedApp {
                app,
                pattern: p.to_string(),
            });
        }
        if self
            .pinned_clients
            .as_ref()
            .is_some_and(|t| t.is_bypassed(host))
        {
            return skip(DecryptReason::PinnedClientAutoBypass);
        }
        DecryptDecision {
            decrypt: true,
            reason: DecryptReason::Default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinned_clients::PinnedClientSettings;
    use std::time::Duration;

    #[test]
    fn configured_pattern_wins_and_is_named() {
        let d = HostListDecider::new(&["*.bank.example"], true, None).unwrap();
        let decision = d.should_decrypt("www.bank.example");
        assert!(!decision.decrypt);
        assert_eq!(
            decision.reason.to_string(),
            "tls.do_not_decrypt *.bank.example"
        );
        assert!(d.should_decrypt("bank.example").decrypt);
    }

    #[test]
    fn builtin_pinned_app_is_spliced_unless_disabled() {
        let on = HostListDecider::new(&[] as &[&str], true, None).unwrap();
        let decision = on.should_decrypt("client.dropbox.com");
        assert!(!decision.decrypt);
        assert!(decision.reason.to_string().contains("Dropbox"));
        let off = HostListDecider::new(&[] as &[&str], false, None).unwrap();
        assert!(off.should_decrypt("client.dropbox.com").decrypt);
    }

    #[test]
    fn ordinary_host_is_decrypted_by_default() {
        let d = HostListDecider::new(&[] as &[&str], true, None).unwrap();
        assert_eq!(
            d.should_decrypt("news.example"),
            DecryptDecision {
                decrypt: true,
                reason: DecryptReason::Default
            }
        );
    }

    #[test]
    fn auto_bypassed_host_is_spliced() {
        let tracker = Arc::new(
            PinnedClientTracker::new(&PinnedClientSettings {
                auto_bypass: true,
                failures: 1,
                window: Duration::from_secs(60),
                ttl: Duration::from_secs(60),
                never_bypass: vec![],
                never_bypass_categories: vec![],
            })
            .unwrap(),
        );
        let d = HostListDecider::new(&[] as &[&str], true, Some(tracker.clone())).unwrap();
        tracker.record_failure("pinned.example");
        assert_eq!(
            d.should_decrypt("pinned.example").reason,
            DecryptReason::PinnedClientAutoBypass
        );
    }

    #[test]
    fn decider_is_usable_as_a_trait_object() {
        let d: Arc<dyn DecryptionDecider> =
            Arc::new(HostListDecider::new(&["x.example"], false, None).unwrap());
        assert!(!d.should_decrypt("x.example").decrypt);
    }
}
