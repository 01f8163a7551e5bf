//! The `[inspect]` configuration. Reload semantics: every field is applied by
//! building a new [`crate::Inspector`] and swapping it in; sessions already
//! running keep the Inspector they started with.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// What the gateway does with a body an engine could not judge (error or
/// timeout). Recorded on the finding; the gateway applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Let the body through (with an event).
    Open,
    /// Block the body.
    Closed,
}

impl FailMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// What the gateway does with a verdict when no policy rule on `verdicts`
/// decided the response (the default inspection policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictAction {
    /// Refuse the body: the block page when it is still held, a cut transfer otherwise.
    Block,
    /// Pass it, with a Detection Finding.
    Alert,
    /// Pass it; the verdict is still recorded on the flow.
    Allow,
}

/// `[inspect.actions]`: the default inspection policy, per verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictActions {
    pub malicious: VerdictAction,
    pub encrypted: VerdictAction,
    pub unscannable: VerdictAction,
    pub sensitive: VerdictAction,
}

impl Default for VerdictActions {
    fn default() -> Self {
        VerdictActions {
            malicious: VerdictAction::Block,
            encrypted: VerdictAction::Alert,
            unscannable: VerdictAction::Alert,
            sensitive: VerdictAction::Alert,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// Scan bodies at all (plain HTTP and decrypted TLS, both directions).
    /// Used by the gateway, not here.
    pub enabled: bool,
    /// The default inspection policy (used by the gateway): what each verdict
    /// does when no policy rule on `verdicts` decided.
    pub actions: VerdictActions,
    /// How long the gateway holds a body's last chunk waiting for the verdict
    /// before it applies the fail mode. Used by the gateway, not here.
    #[serde(with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// Bytes of a body kept in memory; past this it spools to `spool_dir`.
    pub memory_threshold: u64,
    /// Bytes scanned at most; a larger body is `unscannable: too-large`.
    pub max_scan_size: u64,
    /// Where spool files go (the gateway sets `<data_dir>/inspect-spool`);
    /// the system temp dir when unset. Files are unlinked at creation, so
    /// they vanish with the flow, even after a crash.
    pub spool_dir: Option<PathBuf>,
    /// Time budget for scanning one body, archive contents and every engine
    /// included; past it the body is `unscannable: timeout`.
    #[serde(with = "humantime_serde")]
    pub scan_timeout: Duration,
    pub archive: ArchiveLimits,
    pub hash_lists: HashListConfig,
    pub yara: YaraConfig,
    /// clamd, when set.
    pub clamav: Option<ClamdConfig>,
    pub dlp: DlpConfig,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            enabled: true,
            actions: VerdictActions::default(),
            hold_timeout: Duration::from_secs(30),
            memory_threshold: MIB,
            max_scan_size: 100 * 1000 * 1000,
            spool_dir: None,
            scan_timeout: Duration::from_secs(30),
            archive: ArchiveLimits::default(),
            hash_lists: HashListConfig::default(),
            yara: YaraConfig::default(),
            clamav: None,
            dlp: DlpConfig::default(),
        }
    }
}

/// Bounds on opening archives; exceeding one ends the walk as
/// `unscannable: bomb` (or `too-deep` for the depth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveLimits {
    /// Nesting levels opened (a zip in a tar.gz is depth 3: gzip, tar, zip).
    pub max_depth: u32,
    /// Entries across the whole body, all levels.
    pub max_entries: u64,
    /// Decompressed bytes across the whole body, all levels.
    pub max_expanded_size: u64,
    /// Decompressed bytes per compressed byte, per container and per zip
    /// entry; checked once an object has expanded past `ratio_floor`.
    pub max_ratio: u64,
    /// Expansion below this many bytes is never called a bomb, so small,
    /// highly compressible files (a page of zeros) pass.
    pub ratio_floor: u64,
    /// Memory (KiB) a 7z decoder may use for its dictionary and headers.
    pub sevenz_memory_kib: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_depth: 5,
            max_entries: 10_000,
            max_expanded_size: 1024 * MIB,
            max_ratio: 100,
            ratio_floor: MIB,
            sevenz_memory_kib: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashListConfig {
    /// The built-in list (the EICAR test file).
    pub builtin: bool,
    /// Files of hex SHA-256, SHA-1 or MD5 hashes, one per line.
    pub files: Vec<PathBuf>,
}

impl Default for HashListConfig {
    fn default() -> Self {
        HashListConfig {
            builtin: true,
            files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct YaraConfig {
    /// Rule files, compiled once per Inspector build.
    pub rules: Vec<PathBuf>,
    /// Applied when a scan times out.
    pub fail: FailMode,
    /// Scan long downloads while they stream when every rule allows it
    /// (docs/inspection.md, "YARA while the body streams"); false: always
    /// scan the whole body at the end. The verdicts are the same.
    pub stream: bool,
}

impl Default for YaraConfig {
    fn default() -> Self {
        YaraConfig {
            rules: Vec::new(),
            fail: FailMode::Closed,
            stream: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClamdConfig {
    /// `unix:/run/clamav/clamd.ctl`, `/run/clamav/clamd.ctl` or `tcp:127.0.0.1:3310`.
    pub address: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Per read and write on the socket; clamd answers after the last chunk.
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
    /// INSTREAM chunk size.
    pub chunk_size: u32,
    /// clamd's `StreamMaxLength` (25 MiB by default there): larger bodies are
    /// not sent and clamav reports them `unscannable: too-large`.
    pub max_stream_size: u64,
    /// Applied when clamd is down, times out or answers with an error.
    pub fail: FailMode,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "unix:/run/clamav/clamd.ctl".to_owned(),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(30),
            chunk_size: 64 * 1024,
            max_stream_size: 25 * MIB,
            fail: FailMode::Closed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlpConfig {
    /// Built-in profiles enabled: `payment-card`, `iban`, `aws-access-key`,
    /// `aws-secret-key`, `private-key`, `jwt`.
    pub profiles: Vec<String>,
    /// Matches of a built-in profile needed for a finding.
    pub min_count: usize,
    pub custom: Vec<CustomDlpProfile>,
    /// Also scan downloads (uploads are always scanned when profiles exist).
    pub downloads: bool,
}

impl Default for DlpConfig {
    fn default() -> Self {
        DlpConfig {
            profiles: crate::dlp::BUILTIN_PROFILES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            min_count: 1,
            custom: Vec::new(),
            downloads: false,
        }
    }
}

/// An organisation's own profile: regexes and/or keywords, counted together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDlpProfile {
    pub name: String,
    #[serde(default)]
    pub regex: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default = "one")]
    pub min_count: usize,
}

fn one() -> usize {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_with_every_part_parses() {
        let text = r#"
            hold_timeout = "10s"
            memory_threshold = 2097152
            max_scan_size = 50000000
            spool_dir = "/var/lib/rampart/inspect-spool"
            scan_timeout = "20s"
            [archive]
            max_depth = 3
            max_ratio = 200
            [hash_lists]
            files = ["/etc/rampart/bad-hashes.txt"]
            [yara]
            rules = ["/etc/rampart/rules/marker.yar"]
            fail = "open"
            [clamav]
            address = "tcp:127.0.0.1:3310"
            io_timeout = "5s"
            fail = "closed"
            [dlp]
            profiles = ["payment-card", "iban"]
            [[dlp.custom]]
            name = "project-falcon"
            keywords = ["Falcon"]
            min_count = 2
        "#;
        let c: InspectConfig = toml::from_str(text).unwrap();
        assert_eq!(c.hold_timeout, Duration::from_secs(10));
        assert_eq!(c.archive.max_depth, 3);
        assert_eq!(c.archive.max_entries, ArchiveLimits::default().max_entries);
        assert_eq!(c.yara.fail, FailMode::Open);
        assert_eq!(c.clamav.as_ref().unwrap().chunk_size, 64 * 1024);
        assert_eq!(c.dlp.custom[0].min_count, 2);
        assert!(c.hash_lists.builtin);
    }

    #[test]
    fn defaults_match_the_issue() {
        let c = InspectConfig::default();
        assert_eq!(c.memory_threshold, 1024 * 1024);
        assert_eq!(c.max_scan_size, 100_000_000);
        assert_eq!(c.archive.max_depth, 5);
        let err = toml::from_str::<InspectConfig>("max_scan_sise = 1").unwrap_err();
        assert!(err.to_string().contains("max_scan_sise"));
    }
}
