//! What the agent knows about the process that opened a connection.

use std::fmt;
use std::path::PathBuf;

/// The label used, in logs and decisions, for a connection whose process could not be found.
pub const UNKNOWN_PROCESS: &str = "unknown process";

/// The process that owns the client side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id, when the owning process was found.
    pub pid: Option<u32>,
    /// `comm` of the process (at most 15 bytes on Linux), or [`UNKNOWN_PROCESS`].
    pub name: String,
    /// Resolved `/proc/<pid>/exe`, when readable.
    pub path: Option<PathBuf>,
    /// Owner of the socket (known from sock_diag even when the pid is not).
    pub uid: Option<u32>,
    /// User name for `uid` from the passwd database.
    pub user: Option<String>,
}

impl ProcessInfo {
    /// A connection whose owning process could not be determined.
    pub fn unknown() -> Self {
        ProcessInfo {
            pid: None,
            name: UNKNOWN_PROCESS.to_string(),
            path: None,
            uid: None,
            user: None,
        }
    }

    /// Whether the owning process was found.
    pub fn is_known(&self) -> bool {
        self.pid.is_some()
    }
}

impl fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
