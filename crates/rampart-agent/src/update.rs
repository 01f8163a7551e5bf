//! `rampart agent update`: ask the running agent to fetch its configuration from the
//! server now. The command sends SIGUSR1 to the pid in `status.json` (the agent's own
//! data dir, so only its owner or root can) and waits until the status file records
//! one more completed fetch — no extra socket to secure.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::AgentError;
use crate::server_config::SyncHandle;
use crate::status::AgentStatus;

/// Why `agent update` could not complete.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the agent is not running (no live status in {0})")]
    NotRunning(String),
    #[error("the agent is not enrolled: it has no server to fetch configuration from")]
    NotEnrolled,
    #[error("cannot signal the agent (pid {pid}): {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("the agent did not report a fetch within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Status(#[from] AgentError),
}

/// Signals the running agent and returns its status once the fetch completed.
pub fn request_update(data_dir: &Path, timeout: Duration) -> Result<AgentStatus, UpdateError> {
    let not_running = || UpdateError::NotRunning(data_dir.display().to_string());
    let status = AgentStatus::load(data_dir)?.ok_or_else(not_running)?;
    if !status.process_alive() {
        return Err(not_running());
    }
    if !status.enrolled {
        return Err(UpdateError::NotEnrolled);
    }
    let before = status.sync.fetches;
    let pid = rustix::process::Pid::from_raw(status.pid as i32).ok_or_else(not_running)?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).map_err(|e| {
        UpdateError::Signal {
            pid: status.pid,
            source: e.into(),
        }
    })?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(now) = AgentStatus::load(data_dir)? {
            if now.sync.fetches > before {
                return Ok(now);
            }
        }
    }
    Err(UpdateError::Timeout(timeout))
}

/// In the agent: SIGUSR1 → fetch now. The handler is installed before this returns,
/// so a signal sent right after start-up cannot kill the agent.
pub(crate) fn spawn_listener(
    sync: Arc<SyncHandle>,
    mut stopped: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGUSR1: `rampart agent update` will not work");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                got = usr1.recv() => {
                    if got.is_none() {
                        return;
                    }
                    sync.fetch_now.notify_one();
                }
                _ = stopped.changed() => return,
            }
        }
    }))
}
