//! Upload of the agent's own decisions (bypass, tunnel-bypass, block with `log = true`)
//! to the server, which stores them as events with `bypass = client`.
//!
//! Every decision is appended to `<data_dir>/upload-spool.jsonl` first, so nothing is
//! lost while the server is unreachable or across restarts; a task sends the spool in
//! batches and removes what the server accepted. Failures back off (1 s doubling to
//! 60 s). The spool is bounded: beyond `max_bytes` new decisions are counted as
//! dropped (and still written to the agent log).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::agent_log::{AgentLog, Level};
use crate::error::AgentError;
use crate::mtls_tunnel::MtlsH2Tunnel;
use crate::process::ProcessInfo;
use crate::steering::SteeringAction;

pub const EVENTS_PATH: &str = "/api/v1/agent/events";
/// Decisions per upload request (the server accepts up to 1000).
const BATCH: usize = 500;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The process as uploaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadProcess {
    pub name: String,
    pub path: Option<String>,
    pub pid: Option<u32>,
}

/// One decision as uploaded (device and user come from the certificate, server side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Random, per decision: the server derives the stored event's id from it (and the
    /// device), so a batch re-sent after a lost reply is stored once, not twice.
    #[serde(default)]
    pub id: Option<String>,
    pub time_ms: i64,
    pub action: SteeringAction,
    pub host: String,
    pub port: Option<u16>,
    pub dst_ip: Option<IpAddr>,
    pub process: UploadProcess,
    pub rule: Option<String>,
}

impl DecisionRecord {
    pub fn new(
        action: SteeringAction,
        process: &ProcessInfo,
        host: &str,
        port: u16,
        dst_ip: Option<IpAddr>,
        rule: Option<&str>,
    ) -> Self {
        let now = time::OffsetDateTime::now_utc();
        DecisionRecord {
            id: Some(format!("{:032x}", rand::random::<u128>())),
            time_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            action,
            host: host.to_string(),
            port: Some(port),
            dst_ip,
            process: UploadProcess {
                name: process.name.clone(),
                path: process
                    .path
                    .as_deref()
                    .and_then(|p| p.to_str())
                    .map(str::to_string),
                pid: process.pid,
            },
            rule: rule.map(str::to_string),
        }
    }
}

struct SpoolFile {
    file: File,
    size: u64,
}

/// The on-disk queue of decisions not yet accepted by the server.
pub struct Uploader {
    path: PathBuf,
    max_bytes: u64,
    spool: Mutex<SpoolFile>,
    wake: Notify,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

fn spool_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Log {
        path: path.to_path_buf(),
        source,
    }
}

impl Uploader {
    pub fn spool_path(data_dir: &Path) -> PathBuf {
        data_dir.join("upload-spool.jsonl")
    }

    /// Opens (or creates) the spool in `data_dir`; decisions left by a previous run
    /// are sent first.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Arc<Self>, AgentError> {
        let path = Self::spool_path(data_dir);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(spool_err(&path))?;
        let size = file.metadata().map_err(spool_err(&path))?.len();
        Ok(Arc::new(Uploader {
            path,
            max_bytes,
            spool: Mutex::new(SpoolFile { file, size }),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues one decision (a small append; never blocks on the network).
    pub fn record(&self, record: &DecisionRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        if spool.size + line.len() as u64 > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match spool.file.write_all(&line) {
            Ok(()) => spool.size += line.len() as u64,
            Err(err) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, path = %self.path.display(), "cannot spool a decision");
            }
        }
        drop(spool);
        self.wake.notify_one();
    }

    /// Decisions waiting in the spool.
    pub fn pending(&self) -> u64 {
        std::fs::read(&self.path)
            .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
            .unwrap_or(0)
    }

    /// The first `BATCH` complete lines of the spool and their byte length.
    fn head(&self) -> std::io::Result<(Vec<serde_json::Value>, usize)> {
        let _guard = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = std::fs::read(&self.path)?;
        let mut events = Vec::new();
        let mut used = 0;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if events.len() == BATCH || !line.ends_with(b"\n") {
                break;
            }
            used += line.len();
            // A damaged line (disk full mid-write) is skipped rather than blocking
            // every later decision.
            if let Ok(value) = serde_json::from_slice(line) {
                events.push(value);
            }
        }
        Ok((events, used))
    }

    /// Removes the first `used` bytes (what the server accepted).
    fn consume(&self, used: usize) -> std::io::Result<()> {
        let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = std::fs::read(&self.path)?;
        let rest = bytes.get(used..).unwrap_or_default();
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, rest)?;
        std::fs::rename(&tmp, &self.path)?;
        spool.file = OpenOptions::new().append(true).open(&self.path)?;
        spool.size = rest.len() as u64;
        Ok(())
    }

    /// Sends one batch. `Ok(true)` when more may be waiting.
    async fn send_batch(&self, tunnel: &MtlsH2Tunnel) -> Result<bool, String> {
        let (events, used) = self.head().map_err(|e| e.to_string())?;
        if used == 0 {
            return Ok(false);
        }
        let count = events.len();
        if count > 0 {
            let body = serde_json::to_vec(&serde_json::json!({ "events": events }))
                .map_err(|e| e.to_string())?;
            let response = tunnel
                .api(Method::POST, EVENTS_PATH, &[], Some(Bytes::from(body)))
                .await
                .map_err(|e| e.to_string())?;
            if response.status != StatusCode::OK {
                return Err(format!("server answered {}", response.status));
            }
        }
        self.consume(used).map_err(|e| e.to_string())?;
        self.sent.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count == BATCH)
    }

    /// Sends the spool until `stopped`, waking on new decisions and every `interval`.
    pub async fn run(
        self: Arc<Self>,
        tunnel: Arc<MtlsH2Tunnel>,
        log: Arc<AgentLog>,
        interval: Duration,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            let wait = match self.send_batch(&tunnel).await {
                Ok(more) => {
                    if failing {
                        log.write(Level::Info, "Decision upload to the server resumed");
                        failing = false;
                    }
                    backoff = FIRST_BACKOFF;
                    if more {
                        continue;
                    }
                    interval
                }
                Err(err) => {
                    if !failing {
                        log.write(
                            Level::Warn,
                            &format!("Decision upload failed, spooling: {err}"),
                        );
                        failing = true;
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            // While failing, new decisions do not cut the back-off short.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified(), if !failing => {}
                _ = stopped.changed() => return,
            }
            if *stopped.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str) -> DecisionRecord {
        DecisionRecord::new(
            SteeringAction::Bypass,
            &ProcessInfo::unknown(),
            host,
            443,
            None,
            Some("r"),
        )
    }

    #[test]
    fn spool_survives_reopen_and_consume_keeps_the_rest() {
        let dir = tempdir("spool");
        let up = Uploader::open(&dir, 1 << 20).expect("open");
        up.record(&record("a.example"));
        up.record(&record("b.example"));
        drop(up);
        let up = Uploader::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(up.pending(), 2);
        let (events, used) = up.head().expect("head");
        assert_eq!(events.len(), 2);
        let first_len = std::fs::read(Uploader::spool_path(&dir))
            .expect("read")
            .iter()
            .position(|b| *b == b'\n')
            .expect("line")
            + 1;
        assert!(used > first_len);
        up.consume(first_len).expect("consume");
        up.record(&record("c.example"));
        let (events, _) = up.head().expect("head");
        let hosts: Vec<&str> = events.iter().filter_map(|e| e["host"].as_str()).collect();
        assert_eq!(hosts, ["b.example", "c.example"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn spool_is_bounded() {
        let dir = tempdir("bounded");
        let up = Uploader::open(&dir, 300).expect("open");
        for _ in 0..10 {
            up.record(&record("a.example"));
        }
        assert!(up.pending() < 10);
        assert!(up.dropped.load(Ordering::Relaxed) > 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rampart-up-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
