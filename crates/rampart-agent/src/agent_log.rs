//! The agent log: `<data dir>/agent.log`, one stable, greppable line per steering
//! decision (and per tunnel/config event), rotated by size.
//!
//! Line shape: `2026-11-23T20:10:00.123Z INFO  Bypassing connection from process: python3.12, host: pypi.org`
//! The wording after the level is a contract: users and scripts grep for it.

use crate::error::AgentError;
use crate::process::ProcessInfo;
use crate::steering::SteeringAction;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Severity shown after the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Info => "INFO ",
            Level::Warn => "WARN ",
        }
    }
}

struct Sink {
    file: File,
    size: u64,
}

/// Size-rotated append-only log file.
pub struct AgentLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    sink: Mutex<Sink>,
}

/// The stable message for a decision that was carried out.
pub fn decision_message(action: SteeringAction, process: &ProcessInfo, host: &str) -> String {
    let verb = match action {
        SteeringAction::Steer => "Tunneling connection",
        SteeringAction::Bypass => "Bypassing connection",
        SteeringAction::TunnelBypass => "Bypassing connection by tunneling",
        SteeringAction::Block => "Dropping connection",
    };
    format!("{verb} from process: {}, host: {host}", process.name)
}

impl AgentLog {
    /// Open (append) `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, AgentError> {
        let err = |source| AgentError::Log {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(AgentLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1024),
            keep,
            sink: Mutex::new(Sink { file, size }),
        })
    }

    /// Path of the live log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one steering decision in the stable wording.
    pub fn decision(
        &self,
        action: SteeringAction,
        process: &ProcessInfo,
        host: &str,
        note: Option<&str>,
    ) {
        let level = if action == SteeringAction::Block {
            Level::Warn
        } else {
            Level::Info
        };
        let mut message = decision_message(action, process, host);
        if let Some(note) = note {
            message.push_str(" (");
            message.push_str(note);
            message.push(')');
        }
        self.write(level, &message);
    }

    /// Append one line. Failures go to tracing: losing a log line must never break a flow.
    pub fn write(&self, level: Level, message: &str) {
        let now = OffsetDateTime::now_utc();
        let stamp = now
            .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
            .unwrap_or(now)
            .format(&Rfc3339)
            .unwrap_or_default();
        let line = format!("{stamp} {}{message}\n", level.label());
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if sink.size + line.len() as u64 > self.max_bytes && sink.size > 0 {
            if let Err(err) = self.rotate(&mut sink) {
                tracing::warn!(path = %self.path.display(), %err, "agent log rotation failed");
            }
        }
        match sink.file.write_all(line.as_bytes()) {
            Ok(()) => sink.size += line.len() as u64,
            Err(err) => tracing::warn!(path = %self.path.display(), %err, "agent log write failed"),
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self, sink: &mut Sink) -> std::io::Result<()> {
        if self.keep == 0 {
            sink.file.set_len(0)?;
            sink.size = 0;
            return Ok(());
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        sink.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        sink.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rampart-agent-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn python() -> ProcessInfo {
        ProcessInfo {
            name: "python3.12".into(),
            pid: Some(7),
            ..ProcessInfo::unknown()
        }
    }

    #[test]
    fn decision_lines_use_the_stable_wording() {
        let dropbox = ProcessInfo {
            name: "dropbox".into(),
            ..ProcessInfo::unknown()
        };
        let curl = ProcessInfo {
            name: "curl".into(),
            ..ProcessInfo::unknown()
        };
        assert_eq!(
            decision_message(SteeringAction::Bypass, &python(), "pypi.org"),
            "Bypassing connection from process: python3.12, host: pypi.org"
        );
        assert_eq!(
            decision_message(SteeringAction::TunnelBypass, &dropbox, "api.dropbox.com"),
            "Bypassing connection by tunneling from process: dropbox, host: api.dropbox.com"
        );
        assert_eq!(
            decision_message(SteeringAction::Block, &curl, "blocked.example"),
            "Dropping connection from process: curl, host: blocked.example"
        );
        assert_eq!(
            decision_message(
                SteeringAction::Steer,
                &ProcessInfo::unknown(),
                "example.com"
            ),
            "Tunneling connection from process: unknown process, host: example.com"
        );
    }

    #[test]
    fn lines_carry_a_timestamp_and_level_prefix() {
        let dir = temp_dir("prefix");
        let log = AgentLog::open(&dir.join("agent.log"), 1 << 20, 2).expect("open");
        log.decision(SteeringAction::Bypass, &python(), "pypi.org", None);
        log.decision(SteeringAction::Block, &python(), "blocked.example", None);
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let (stamp, rest) = lines[0].split_once(' ').expect("stamp");
        assert!(OffsetDateTime::parse(stamp, &Rfc3339).is_ok(), "{stamp}");
        assert_eq!(
            rest,
            "INFO Bypassing connection from process: python3.12, host: pypi.org"
        );
        assert!(lines[1]
            .contains(" WARN Dropping connection from process: python3.12, host: blocked.example"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rotates_by_size_and_keeps_the_configured_number_of_files() {
        let dir = temp_dir("rotate");
        let log = AgentLog::open(&dir.join("agent.log"), 1024, 2).expect("open");
        for _ in 0..100 {
            log.decision(SteeringAction::Bypass, &python(), "pypi.org", None);
        }
        assert!(dir.join("agent.log.1").exists());
        assert!(dir.join("agent.log.2").exists());
        assert!(!dir.join("agent.log.3").exists());
        for name in ["agent.log", "agent.log.1", "agent.log.2"] {
            let len = std::fs::metadata(dir.join(name)).expect("meta").len();
            assert!(len <= 1024, "{name} is {len} bytes");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
