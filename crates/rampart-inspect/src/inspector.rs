//! The compiled, immutable inspection state. Build one from the config,
//! share it (it is an `Arc` inside), start a [`ScanSession`] per body;
//! a reload builds a new Inspector and swaps it in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::clamd::ClamdClient;
use crate::config::InspectConfig;
use crate::dlp::Dlp;
use crate::error::InspectError;
use crate::hash_list::HashLists;
use crate::session::{ScanContext, ScanSession};
use crate::verdict::ScanReport;

#[derive(Clone)]
pub struct Inspector {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: InspectConfig,
    /// Shared by every spool (no copy of the path per body).
    pub(crate) spool_dir: Arc<Path>,
    pub(crate) hashes: HashLists,
    #[cfg(feature = "yara")]
    pub(crate) yara: Option<crate::yara::YaraRules>,
    pub(crate) clamd: Option<ClamdClient>,
    pub(crate) dlp: Dlp,
    /// What the rule and hash list files held when they were loaded.
    sources: Vec<SourceFingerprint>,
}

/// A file the Inspector loaded, by content: a reload that keeps the same
/// `[inspect]` section must still notice an edited rule or hash list file.
#[derive(PartialEq, Eq)]
struct SourceFingerprint {
    path: PathBuf,
    /// SHA-256 of the content; `None` when the file could not be read.
    digest: Option<[u8; 32]>,
}

impl SourceFingerprint {
    fn of(path: &Path) -> SourceFingerprint {
        let digest = std::fs::File::open(path).ok().and_then(|mut f| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut f, &mut hasher).ok()?;
            Some(hasher.finalize().into())
        });
        SourceFingerprint {
            path: path.to_path_buf(),
            digest,
        }
    }
}

fn fingerprint_sources(config: &InspectConfig) -> Vec<SourceFingerprint> {
    config
        .yara
        .rules
        .iter()
        .chain(&config.hash_lists.files)
        .map(|p| SourceFingerprint::of(p))
        .collect()
}

impl Inspector {
    /// Compiles the config: loads hash lists, compiles YARA rules and DLP
    /// profiles, checks limits and the spool directory. Errors name the
    /// file and line or the config key.
    pub fn new(config: InspectConfig) -> Result<Inspector, InspectError> {
        check_limits(&config)?;
        // Taken before loading: an edit made while loading shows as a change next time.
        let sources = fingerprint_sources(&config);
        let spool_dir = config.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&spool_dir).map_err(|source| InspectError::SpoolDir {
            path: spool_dir.clone(),
            source,
        })?;
        // Prove the directory takes files now rather than at the first body.
        tempfile::tempfile_in(&spool_dir).map_err(|source| InspectError::SpoolDir {
            path: spool_dir.clone(),
            source,
        })?;
        let hashes = HashLists::load(config.hash_lists.builtin, &config.hash_lists.files)?;
        #[cfg(feature = "yara")]
        let yara = if config.yara.rules.is_empty() {
            None
        } else {
            Some(crate::yara::YaraRules::compile(
                &config.yara.rules,
                config.yara.stream,
            )?)
        };
        #[cfg(not(feature = "yara"))]
        if !config.yara.rules.is_empty() {
            return Err(InspectError::YaraDisabled);
        }
        let clamd = config.clamav.as_ref().map(ClamdClient::new).transpose()?;
        let dlp = Dlp::new(&config.dlp)?;
        Ok(Inspector {
            inner: Arc::new(Inner {
                config,
                spool_dir: Arc::from(spool_dir),
                hashes,
                #[cfg(feature = "yara")]
                yara,
                clamd,
                dlp,
                sources,
            }),
        })
    }

    /// Whether a YARA rule file or hash list file named in the config has
    /// changed on disk since this Inspector loaded it: a reload with the same
    /// `[inspect]` section must then build a new Inspector (and refuse a
    /// broken file) rather than keep this one. Files pulled in by a YARA
    /// `include` are not followed.
    pub fn sources_changed(&self) -> bool {
        fingerprint_sources(&self.inner.config) != self.inner.sources
    }

    /// Which YARA rules are decided while a download streams and which need
    /// the whole body (`None` without YARA rules). See docs/inspection.md.
    #[cfg(feature = "yara")]
    pub fn yara_plan(&self) -> Option<&crate::yara::YaraPlan> {
        self.inner.yara.as_ref().map(crate::yara::YaraRules::plan)
    }

    pub fn config(&self) -> &InspectConfig {
        &self.inner.config
    }

    /// A session for one body.
    pub fn session(&self, context: ScanContext) -> ScanSession {
        ScanSession::new(self.inner.clone(), context)
    }

    /// Scans a body held in memory (tests, tools): `session` + `feed` + `finish`.
    pub fn scan_bytes(&self, context: ScanContext, body: &[u8]) -> ScanReport {
        let mut session = self.session(context);
        // A spool error is recorded in the session and reported by finish.
        let _ = session.feed(body);
        session.finish()
    }
}

fn check_limits(c: &InspectConfig) -> Result<(), InspectError> {
    let positive = |key: &'static str, v: u64| {
        if v == 0 {
            Err(InspectError::Limit {
                key,
                message: "must be above 0".into(),
            })
        } else {
            Ok(())
        }
    };
    positive("max_scan_size", c.max_scan_size)?;
    positive("archive.max_entries", c.archive.max_entries)?;
    positive("archive.max_expanded_size", c.archive.max_expanded_size)?;
    positive("archive.max_ratio", c.archive.max_ratio)?;
    positive("archive.sevenz_memory_kib", c.archive.sevenz_memory_kib)?;
    if c.scan_timeout.is_zero() {
        return Err(InspectError::Limit {
            key: "scan_timeout",
            message: "must be above 0".into(),
        });
    }
    Ok(())
}
