//! The crate's one error type: what went wrong building an [`crate::Inspector`]
//! or feeding a [`crate::ScanSession`]. Problems met while scanning a body are
//! not errors but findings (`unscannable: ...`), so a verdict always exists.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// A hash list file could not be read.
    #[error("{path}: cannot read hash list: {source}")]
    HashListRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of a hash list is not a hex MD5, SHA-1 or SHA-256.
    #[error("{path}:{line}: {message}")]
    HashListLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A YARA rule file does not compile; `message` starts with file:line:col.
    #[error("YARA rules: {message}")]
    YaraCompile { message: String },
    /// The config names YARA rules but the crate was built without `yara`.
    #[error("YARA rules are configured but rampart-inspect was built without the `yara` feature")]
    YaraDisabled,
    /// A DLP profile is unknown or its pattern does not compile.
    #[error("DLP profile {profile:?}: {message}")]
    DlpProfile { profile: String, message: String },
    /// The clamd address is not `unix:/path`, `/path` or `tcp:host:port`.
    #[error("clamav address {address:?}: {message}")]
    ClamdAddress { address: String, message: String },
    /// A limit is zero or inconsistent.
    #[error("inspect.{key}: {message}")]
    Limit { key: &'static str, message: String },
    /// The spool directory cannot be created or written.
    #[error("{path}: cannot use spool directory: {source}")]
    SpoolDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a body to its spool file failed (disk full, directory removed).
    #[error("cannot spool body to disk: {0}")]
    Spool(#[source] std::io::Error),
}
