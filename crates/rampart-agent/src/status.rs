//! `<data dir>/status.json`: what `rampart agent status` shows. The running agent
//! rewrites it every few seconds and marks it stopped on exit, so the status command
//! needs no socket and works for any user who can read the data dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::flow::CounterSnapshot;

/// A snapshot of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub running: bool,
    /// `transparent`, `transparent (steer all TCP)` or `local proxy`.
    pub mode: String,
    pub listen: Vec<String>,
    /// The tunnel address (enrolled) or the proxy listener (not enrolled).
    pub gateway: String,
    pub enrolled: bool,
    pub device_id: Option<String>,
    pub user: Option<String>,
    /// `up`, `down`, or `per-flow` (HTTP proxy chaining keeps no connection).
    pub tunnel: String,
    /// Where the steering rules came from and their revision.
    pub config_revision: String,
    pub counters: CounterSnapshot,
    /// Configuration from the server (enrolled agents).
    #[serde(default)]
    pub sync: crate::server_config::SyncStatus,
    /// Decisions spooled for upload, sent, and dropped because the spool was full.
    #[serde(default)]
    pub uploads_pending: u64,
    #[serde(default)]
    pub uploads_sent: u64,
    #[serde(default)]
    pub uploads_dropped: u64,
    /// RFC 3339 time of this snapshot.
    pub updated: String,
}

impl AgentStatus {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("status.json")
    }

    /// The last snapshot written in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AgentError::ConfigRead { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::ConfigInvalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Writes the snapshot atomically (temp file + rename).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }

    /// True when the recorded process still exists (a crashed agent leaves
    /// `running = true` behind).
    pub fn process_alive(&self) -> bool {
        self.running && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_the_data_dir() {
        let dir = std::env::temp_dir().join(format!("rampart-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = AgentStatus {
            pid: std::process::id(),
            running: true,
            mode: "local proxy".into(),
            listen: vec!["127.0.0.1:3130".into()],
            gateway: "127.0.0.1:3129".into(),
            enrolled: true,
            device_id: Some("dev-1".into()),
            user: None,
            tunnel: "up".into(),
            config_revision: "local".into(),
            counters: CounterSnapshot::default(),
            sync: Default::default(),
            uploads_pending: 0,
            uploads_sent: 0,
            uploads_dropped: 0,
            updated: now_rfc3339(),
        };
        status.write(&dir).unwrap();
        let loaded = AgentStatus::load(&dir).unwrap().unwrap();
        assert_eq!(loaded, status);
        assert!(loaded.process_alive());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
