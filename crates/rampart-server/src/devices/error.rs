//! Errors of enrollment and the device inventory.

use std::path::PathBuf;

/// What can go wrong with devices, each variant carrying what failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("certificate error: {0}")]
    Certificate(String),
    /// The token is unknown, already used, or expired: the same answer for all three so
    /// a caller cannot probe which tokens exist.
    #[error("enrollment token is invalid, already used or expired")]
    TokenRefused,
    #[error("invalid {what} {value:?}: use letters, digits and . _ - @ + (at most 128)")]
    InvalidName { what: &'static str, value: String },
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
}
