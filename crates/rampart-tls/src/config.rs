//! The `[tls]` configuration section (documented in docs/tls.md).
use crate::ca::{CaKeyType, CaOptions, CaPaths};
use crate::decision::HostListDecider;
use crate::host_pattern::{HostPattern, HostPatternSet};
use crate::leaf_cache::DEFAULT_LEAF_CACHE_SIZE;
use crate::origin::OriginTlsSettings;
use crate::pinned_clients::{PinnedClientSettings, PinnedClientTracker};
use crate::TlsError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `[tls]`: the gateway CA, what not to decrypt, and how origins are verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (chain) file; default `<data-dir>/ca.pem`.
    pub ca_cert: Option<PathBuf>,
    /// CA private key file (mode 0600); default `<data-dir>/ca.key`.
    pub ca_key: Option<PathBuf>,
    /// Key type of a CA created on first start: `ecdsa-p256` (default) or `rsa-2048`.
    pub ca_key_type: CaKeyType,
    /// Subject of a CA created on first start, e.g. `CN=Example Corp Gateway CA, O=Example Corp`.
    pub ca_subject: Option<String>,
    /// Host patterns never decrypted (spliced, still logged): `host`, `*.domain`, `.domain`.
    pub do_not_decrypt: Vec<String>,
    /// Also skip the built-in list of well-known certificate-pinned apps.
    pub builtin_pinned_apps: bool,
    /// Trust the operating system's roots for origins.
    pub system_roots: bool,
    /// Extra PEM files of roots trusted for origins (internal CAs).
    pub extra_roots: Vec<PathBuf>,
    /// Host patterns whose invalid origin certificates are allowed, with an event each time.
    pub allow_invalid_certificate_hosts: Vec<String>,
    /// Most minted leaves kept in memory (about 2 KiB each).
    pub leaf_cache_size: u64,
    /// How long to wait for a client's ClientHello after CONNECT.
    #[serde(with = "humantime_serde")]
    pub client_hello_timeout: Duration,
    /// `[tls.pinned_clients]`: counting and optional auto-bypass of pinning clients.
    pub pinned_clients: PinnedClientSettings,
    /// Known CDN setups where the Host / `:authority` of a decrypted request may differ
    /// from the name the TLS connection was opened for (otherwise blocked as domain fronting).
    pub fronting_exceptions: Vec<FrontingException>,
    /// A CONNECT whose ClientHello names another site (an SNI that neither is
    /// the CONNECT host nor resolves to the address connected to): `block`
    /// (the default) closes the tunnel; `alert` lets it on, recorded as
    /// fronting, with the policy of both names applied (the stricter wins) and
    /// decryption decided by the CONNECT host alone.
    pub fronting: FrontingMode,
    /// Create the CA on first start when neither file exists. Not a key of
    /// the file: `rampart gateway` (the fleet role) sets it off, because
    /// every gateway of a fleet must sign with the fleet's one CA.
    #[serde(skip, default = "create_ca_by_default")]
    pub create_ca: bool,
}

fn create_ca_by_default() -> bool {
    true
}

/// What happens to a CONNECT whose SNI names another destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontingMode {
    #[default]
    Block,
    Alert,
}

/// One domain-fronting exception: on TLS connections opened for a name matching `sni`,
/// requests may address a different host, any host matching `hosts` (every host when
/// `hosts` is empty). Patterns have the `do_not_decrypt` forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontingException {
    pub sni: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_cert: None,
            ca_key: None,
            ca_key_type: CaKeyType::EcdsaP256,
            ca_subject: None,
            do_not_decrypt: Vec::new(),
            builtin_pinned_apps: true,
            system_roots: true,
            extra_roots: Vec::new(),
            allow_invalid_certificate_hosts: Vec::new(),
            leaf_cache_size: DEFAULT_LEAF_CACHE_SIZE,
            client_hello_timeout: Duration::from_secs(10),
            pinned_clients: PinnedClientSettings::default(),
            fronting_exceptions: Vec::new(),
            fronting: FrontingMode::Block,
            create_ca: true,
        }
    }
}

impl TlsConfig {
    /// Checks every pattern and number, naming the offending key.
    pub fn validate(&self) -> Result<(), TlsError> {
        HostPatternSet::parse("tls.do_not_decrypt", &self.do_not_decrypt)?;
        HostPatternSet::parse(
            "tls.allow_invalid_certificate_hosts",
            &self.allow_invalid_certificate_hosts,
        )?;
        HostPatternSet::parse(
            "tls.pinned_clients.never_bypass",
            &self.pinned_clients.never_bypass,
        )?;
        for exception in &self.fronting_exceptions {
            HostPattern::parse("tls.fronting_exceptions.sni", &exception.sni)?;
            HostPatternSet::parse("tls.fronting_exceptions.hosts", &exception.hosts)?;
        }
        if let Some(subject) = &self.ca_subject {
            crate::ca::parse_subject(subject)?;
        }
        if self.leaf_cache_size == 0 {
            return Err(TlsError::InvalidPattern {
                field: "tls.leaf_cache_size",
                pattern: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// CA file locations, relative paths resolved against nothing (as given).
    pub fn ca_paths(&self, data_dir: &Path) -> CaPaths {
        let defaults = CaPaths::in_dir(data_dir);
        CaPaths {
            cert: self.ca_cert.clone().unwrap_or(defaults.cert),
            key: self.ca_key.clone().unwrap_or(defaults.key),
        }
    }

    /// Options for a CA created on first start.
    pub fn ca_options(&self) -> CaOptions {
        CaOptions {
            key_type: self.ca_key_type,
            subject: self.ca_subject.clone(),
        }
    }

    /// Settings for [`crate::origin::OriginTls::new`].
    pub fn origin_settings(&self) -> OriginTlsSettings {
        OriginTlsSettings {
            use_system_roots: self.system_roots,
            extra_roots: self.extra_roots.clone(),
            allow_invalid_certificate_hosts: self.allow_invalid_certificate_hosts.clone(),
        }
    }

    /// The pinned-client tracker and the decider that consults it.
    pub fn decider(&self) -> Result<(Arc<PinnedClientTracker>, HostListDecider), TlsError> {
        let tracker = Arc::new(PinnedClientTracker::new(&self.pinned_clients)?);
        let decider = HostListDecider::new(
            &self.do_not_decrypt,
            self.builtin_pinned_apps,
            Some(tracker.clone()),
        )?;
        Ok((tracker, decider))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_section_parses_from_toml() {
        let cfg: TlsConfig = toml::from_str(
            r#"
            ca_cert = "/etc/rampart/ca.pem"
            ca_key = "/etc/rampart/ca.key"
            ca_key_type = "rsa-2048"
            ca_subject = "CN=Corp Gateway CA, O=Corp"
            do_not_decrypt = ["*.bank.example", ".health.example"]
            builtin_pinned_apps = false
            extra_roots = ["/etc/rampart/internal-root.pem"]
            allow_invalid_certificate_hosts = ["legacy.intranet.example"]
            leaf_cache_size = 5000
            client_hello_timeout = "5s"

            [pinned_clients]
            auto_bypass = true
            failures = 5
            window = "15m"
            ttl = "2h"
            never_bypass = [".corp.example"]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.ca_key_type, CaKeyType::Rsa2048);
        assert_eq!(cfg.pinned_clients.window, Duration::from_secs(900));
        assert_eq!(
            cfg.ca_paths(Path::new("/data")).cert,
            PathBuf::from("/etc/rampart/ca.pem")
        );
        assert!(cfg.decider().is_ok());
    }

    #[test]
    fn fronting_exceptions_parse_and_bad_patterns_name_their_key() {
        let cfg: TlsConfig = toml::from_str(
            r#"fronting_exceptions = [
                { sni = "*.cloudfront.net" },
                { sni = ".cdn.example", hosts = ["static.example", "*.assets.example"] },
            ]"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.fronting_exceptions[0].hosts, Vec::<String>::new());
        assert_eq!(cfg.fronting_exceptions[1].hosts.len(), 2);
        let bad: TlsConfig =
            toml::from_str(r#"fronting_exceptions = [{ sni = "a.example", hosts = ["x..y"] }]"#)
                .unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.starts_with("tls.fronting_exceptions.hosts:"), "{err}");
        assert!(toml::from_str::<TlsConfig>(r#"fronting_exceptions = [{ host = "a" }]"#).is_err());
    }

    #[test]
    fn empty_section_gives_documented_defaults() {
        let cfg: TlsConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, TlsConfig::default());
        assert!(cfg.builtin_pinned_apps && cfg.system_roots && !cfg.pinned_clients.auto_bypass);
        assert_eq!(cfg.ca_paths(Path::new("d")).key, PathBuf::from("d/ca.key"));
    }

    #[test]
    fn unknown_key_and_bad_pattern_are_rejected_with_their_names() {
        let err = toml::from_str::<TlsConfig>("do_not_decrypts = []").unwrap_err();
        assert!(err.to_string().contains("do_not_decrypts"), "{err}");
        let cfg = TlsConfig {
            do_not_decrypt: vec!["a..b".into()],
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("tls.do_not_decrypt:"));
    }
}
