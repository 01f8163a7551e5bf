//! What a scan concluded: the verdict facts the policy's response stage
//! matches (`verdicts`, `file_types`, `dlp`) and the findings events carry.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::FailMode;
use crate::file_type::FileType;

/// Why a body or entry could not be (fully) scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnscannableReason {
    /// Larger than `max_scan_size` (or clamd's stream limit).
    TooLarge,
    /// An archive broke the entry, size or ratio limits.
    Bomb,
    /// Archives nested deeper than `max_depth`.
    TooDeep,
    /// The per-body time budget ran out.
    Timeout,
    /// An engine failed (clamd down, I/O error); see the finding's `fail`.
    EngineError,
    /// An archive or document is malformed, so its contents were not seen.
    Corrupt,
}

impl UnscannableReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnscannableReason::TooLarge => "too-large",
            UnscannableReason::Bomb => "bomb",
            UnscannableReason::TooDeep => "too-deep",
            UnscannableReason::Timeout => "timeout",
            UnscannableReason::EngineError => "engine-error",
            UnscannableReason::Corrupt => "corrupt",
        }
    }
}

/// The verdict of a body or of one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Clean,
    Malicious,
    Encrypted,
    Unscannable(UnscannableReason),
    Sensitive,
}

impl Verdict {
    /// The policy name: "clean", "malicious", "encrypted", "unscannable",
    /// "sensitive".
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Malicious => "malicious",
            Verdict::Encrypted => "encrypted",
            Verdict::Unscannable(_) => "unscannable",
            Verdict::Sensitive => "sensitive",
        }
    }

    /// The reason, for `unscannable`.
    pub fn reason(&self) -> Option<UnscannableReason> {
        match self {
            Verdict::Unscannable(r) => Some(*r),
            _ => None,
        }
    }

    /// Severity order for "the worst finding wins": a positive detection
    /// (malicious, then sensitive data leaving) outranks content we could not
    /// look into (encrypted, then unscannable), which outranks clean.
    pub fn severity(&self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Unscannable(_) => 1,
            Verdict::Encrypted => 2,
            Verdict::Sensitive => 3,
            Verdict::Malicious => 4,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Unscannable(r) => write!(f, "unscannable: {}", r.as_str()),
            v => f.write_str(v.as_str()),
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Which engine produced a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Hash,
    Yara,
    Clamav,
    Dlp,
    Archive,
    Encryption,
    /// The scanner's own limits: body size, time budget.
    Scanner,
}

impl Engine {
    pub fn as_str(&self) -> &'static str {
        match self {
            Engine::Hash => "hash",
            Engine::Yara => "yara",
            Engine::Clamav => "clamav",
            Engine::Dlp => "dlp",
            Engine::Archive => "archive",
            Engine::Encryption => "encryption",
            Engine::Scanner => "scanner",
        }
    }
}

/// One thing a scan found, in the body or in an archive entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub verdict: Verdict,
    /// `unscannable` only: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnscannableReason>,
    /// The object, archive entries joined with `!/`: `invoice.zip!/payload.exe`.
    pub container_path: String,
    pub engine: Engine,
    /// Rule name, signature, hash list entry, DLP profile or a short cause.
    pub rule_or_signature: String,
    pub file_type: FileType,
    /// Hex SHA-256 of the object (of what was read when it was cut short).
    pub sha256: String,
    pub size: u64,
    /// DLP only: how many matches.
    pub count: usize,
    /// DLP only: a few masked samples (`4111 **** **** 1111`), never the data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked_matches: Vec<String>,
    /// Engine errors and timeouts: the configured fail mode for the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailMode>,
}

/// Direction of a body through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A response body.
    Download,
    /// A request body.
    Upload,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        }
    }
}

/// Where `finish` spent its time, for per-engine scan-time metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineTimes {
    /// Typing, archive extraction and spooling: the time not spent in the
    /// engines below.
    #[serde(with = "humantime_serde")]
    pub archive: Duration,
    #[serde(with = "humantime_serde")]
    pub encryption: Duration,
    #[serde(with = "humantime_serde")]
    pub hash: Duration,
    #[serde(with = "humantime_serde")]
    pub yara: Duration,
    #[serde(with = "humantime_serde")]
    pub clamav: Duration,
    #[serde(with = "humantime_serde")]
    pub dlp: Duration,
}

/// The outcome of scanning one body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanReport {
    /// The worst finding's verdict, `clean` when there is none.
    pub verdict: Verdict,
    /// Type of the body itself.
    pub file_type: FileType,
    /// Bytes fed, all of them (also past `max_scan_size`).
    pub size: u64,
    /// Hex SHA-256 of every byte fed.
    pub sha256: String,
    pub findings: Vec<Finding>,
    /// Time spent in `finish`.
    #[serde(with = "humantime_serde")]
    pub scan_time: Duration,
    /// `scan_time` by engine.
    pub engine_times: EngineTimes,
}

impl ScanReport {
    pub(crate) fn new(
        file_type: FileType,
        size: u64,
        sha256: String,
        findings: Vec<Finding>,
        scan_time: Duration,
        mut engine_times: EngineTimes,
    ) -> ScanReport {
        let engines = engine_times.encryption
            + engine_times.hash
            + engine_times.yara
            + engine_times.clamav
            + engine_times.dlp;
        engine_times.archive = scan_time.saturating_sub(engines);
        let verdict = findings
            .iter()
            .map(|f| f.verdict)
            .max_by_key(Verdict::severity)
            .unwrap_or(Verdict::Clean);
        ScanReport {
            verdict,
            file_type,
            size,
            sha256,
            findings,
            scan_time,
            engine_times,
        }
    }

    /// Every distinct verdict name among the findings ("clean" when none),
    /// for a policy `verdicts = [...]` condition that matches any of them.
    pub fn verdict_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> =
            self.findings.iter().map(|f| f.verdict.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            names.push(Verdict::Clean.as_str());
        }
        names
    }

    /// DLP profiles that produced a `sensitive` finding (`dlp = [...]`).
    pub fn dlp_profiles(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.engine == Engine::Dlp)
            .map(|f| f.rule_or_signature.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// True when the only non-clean findings are engine errors or timeouts
    /// whose engines are configured `fail = "open"`: the gateway may pass
    /// the body (and still log the findings).
    pub fn fails_open(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(|f| f.fail == Some(FailMode::Open))
    }
}
