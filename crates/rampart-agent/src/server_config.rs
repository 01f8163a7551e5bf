//! Steering configuration delivered by the server (`GET /api/v1/agent/config` over the
//! tunnel) and applied without a restart.
//!
//! Precedence: the server's exceptions come first, then the local `agent.toml`
//! exceptions (a local rule can add exceptions for this host, never override the
//! organisation's); the server's stage default replaces the local `steering.default`;
//! the server's fail mode and closed-mode allowlist replace the local ones when the
//! server config has them. Until the server is reached, the last good configuration
//! (persisted in `<data_dir>/server-config.json`) applies, else the local file alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::agent_log::{AgentLog, Level};
use crate::config::AgentConfig;
use crate::mtls_tunnel::MtlsH2Tunnel;
use crate::process::ProcessInfo;
use crate::steering::{
    ExceptionConfig, ExceptionPolicy, FailMode, FailPolicy, SteeringAction, SteeringDecision,
    SteeringPolicy,
};

pub const CONFIG_PATH: &str = "/api/v1/agent/config";

/// The steering policy and fail policy in force, swapped atomically as a pair.
pub struct LiveSteering {
    current: RwLock<(Arc<dyn SteeringPolicy>, Arc<FailPolicy>)>,
}

impl LiveSteering {
    pub fn new(policy: Arc<dyn SteeringPolicy>, fail: FailPolicy) -> Arc<Self> {
        Arc::new(LiveSteering {
            current: RwLock::new((policy, Arc::new(fail))),
        })
    }

    pub fn set(&self, policy: Arc<dyn SteeringPolicy>, fail: FailPolicy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (policy, Arc::new(fail));
    }

    pub fn fail(&self) -> Arc<FailPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn policy(&self) -> Arc<dyn SteeringPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }
}

impl SteeringPolicy for LiveSteering {
    fn decide(&self, process: &ProcessInfo, host: &str, port: u16) -> SteeringDecision {
        self.policy().decide(process, host, port)
    }
}

/// One exception as the server sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerException {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub processes: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    pub action: SteeringAction,
    #[serde(default = "yes")]
    pub log: bool,
}

fn yes() -> bool {
    true
}

/// A policy rule the server could not translate for the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedRule {
    pub name: String,
    pub reason: String,
}

/// The body of `GET /api/v1/agent/config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerConfig {
    pub revision: String,
    #[serde(default)]
    pub policy_revision: String,
    pub default: SteeringAction,
    #[serde(default)]
    pub exceptions: Vec<ServerException>,
    #[serde(default)]
    pub skipped: Vec<SkippedRule>,
    #[serde(default)]
    pub fail_mode: Option<FailMode>,
    #[serde(default)]
    pub fail_closed_allow: Option<Vec<String>>,
}

impl ServerConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("server-config.json")
    }

    /// The last configuration received, if any (a damaged file is ignored and logged).
    pub fn load_persisted(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        match serde_json::from_slice(&text) {
            Ok(config) => Some(config),
            Err(err) => {
                tracing::warn!(%err, "ignoring damaged server-config.json");
                None
            }
        }
    }

    fn persist(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    }

    /// The effective policies: server exceptions, then local ones; server default and
    /// fail settings over local ones.
    pub fn compose(&self, local: &AgentConfig) -> (ExceptionPolicy, FailPolicy) {
        let mut exceptions: Vec<ExceptionConfig> = self
            .exceptions
            .iter()
            .map(|e| ExceptionConfig {
                name: e.name.clone(),
                processes: e.processes.clone(),
                paths: e.paths.clone(),
                hosts: e.hosts.clone(),
                ports: e.ports.clone(),
                action: e.action,
                log: e.log,
            })
            .collect();
        exceptions.extend(local.steering.exceptions.iter().cloned());
        let fail = FailPolicy::new(
            self.fail_mode.unwrap_or(local.gateway.fail_mode),
            self.fail_closed_allow
                .as_deref()
                .unwrap_or(&local.gateway.fail_closed_allow),
        );
        (ExceptionPolicy::new(&exceptions, self.default), fail)
    }
}

/// What `status.json` shows about configuration sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Revision in force; empty while only the local file applies.
    pub revision: String,
    /// `local agent.toml`, `server` or `server (persisted)`.
    pub source: String,
    /// Completed fetch attempts (successful or not); `agent update` waits for it to grow.
    pub fetches: u64,
    pub last_fetch: String,
    pub last_error: Option<String>,
    pub exceptions_from_server: usize,
    pub skipped: Vec<String>,
}

/// Shared between the sync task, the status writer and `agent update`.
#[derive(Default)]
pub struct SyncHandle {
    pub status: Mutex<SyncStatus>,
    /// Fetch now (SIGUSR1 from `rampart agent update`).
    pub fetch_now: Notify,
    /// Something changed: rewrite `status.json` now.
    pub changed: Notify,
}

impl SyncHandle {
    pub fn snapshot(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }
}

/// Applies `config` and records it; the agent log gets one line per new revision.
pub fn apply(
    config: &ServerConfig,
    local: &AgentConfig,
    live: &LiveSteering,
    sync: &SyncHandle,
    log: &AgentLog,
    source: &str,
) {
    let (policy, fail) = config.compose(local);
    live.set(Arc::new(policy), fail);
    let skipped: Vec<String> = config
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.name, s.reason))
        .collect();
    for line in &skipped {
        log.write(Level::Warn, &format!("Server rule not applied: {line}"));
    }
    log.write(
        Level::Info,
        &format!(
            "Agent config updated to revision {} ({} exceptions from the server, source: {source})",
            config.revision,
            config.exceptions.len()
        ),
    );
    sync.update(|s| {
        s.revision = config.revision.clone();
        s.source = source.to_string();
        s.exceptions_from_server = config.exceptions.len();
        s.skipped = skipped;
    });
}

/// Polls the server every `interval` (and at once on [`SyncHandle::fetch_now`]) until
/// `stopped`.
pub async fn run_sync(
    tunnel: Arc<MtlsH2Tunnel>,
    local: AgentConfig,
    live: Arc<LiveSteering>,
    sync: Arc<SyncHandle>,
    log: Arc<AgentLog>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        fetch_once(&tunnel, &local, &live, &sync, &log).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = sync.fetch_now.notified() => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

async fn fetch_once(
    tunnel: &MtlsH2Tunnel,
    local: &AgentConfig,
    live: &LiveSteering,
    sync: &SyncHandle,
    log: &AgentLog,
) {
    let current = sync.snapshot().revision;
    let etag = format!("\"{current}\"");
    let headers: Vec<(&str, &str)> = if current.is_empty() {
        Vec::new()
    } else {
        vec![("if-none-match", etag.as_str())]
    };
    let result = match tunnel.api(Method::GET, CONFIG_PATH, &headers, None).await {
        Ok(r) if r.status == StatusCode::NOT_MODIFIED => Ok(None),
        Ok(r) if r.status == StatusCode::OK => serde_json::from_slice::<ServerConfig>(&r.body)
            .map(Some)
            .map_err(|e| format!("invalid configuration from the server: {e}")),
        Ok(r) => Err(format!("server answered {}", r.status)),
        Err(e) => Err(e.to_string()),
    };
    let error = match result {
        Ok(Some(config)) => {
            if let Err(err) = config.persist(&local.data_dir) {
                tracing::warn!(%err, "cannot persist server-config.json");
            }
            apply(&config, local, live, sync, log, "server");
            None
        }
        Ok(None) => {
            sync.update(|s| s.source = "server".into());
            None
        }
        Err(err) => {
            if sync.snapshot().last_error.as_deref() != Some(err.as_str()) {
                log.write(
                    Level::Warn,
                    &format!("Agent config fetch failed: {err} (keeping the current config)"),
                );
            }
            Some(err)
        }
    };
    sync.update(|s| {
        s.fetches += 1;
        s.last_fetch = crate::status::now_rfc3339();
        s.last_error = error;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_exceptions_come_before_local_ones_and_replace_the_default() {
        let local = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\nfail_mode = \"closed\"\n[[steering.exceptions]]\nname = \"local\"\nhosts = [\"pypi.org\"]\naction = \"block\"\n",
            "agent.toml",
        )
        .expect("valid");
        let server: ServerConfig = serde_json::from_str(
            r#"{"revision":"r1","default":"bypass","exceptions":[
                {"id":"steering-1","name":"py","processes":["python3*"],"hosts":["pypi.org"],"action":"bypass","log":true}],
                "fail_mode":"open"}"#,
        )
        .expect("valid");
        let (policy, fail) = server.compose(&local);
        let python = ProcessInfo {
            name: "python3".into(),
            ..ProcessInfo::unknown()
        };
        let d = policy.decide(&python, "pypi.org", 443);
        assert_eq!(
            (d.action, d.rule.as_deref()),
            (SteeringAction::Bypass, Some("py"))
        );
        let d = policy.decide(&ProcessInfo::unknown(), "pypi.org", 443);
        assert_eq!(
            d.action,
            SteeringAction::Block,
            "local exception still applies"
        );
        let d = policy.decide(&ProcessInfo::unknown(), "example.com", 443);
        assert_eq!(d.action, SteeringAction::Bypass, "server default");
        assert_eq!(fail.mode, FailMode::Open, "server fail mode wins");
    }
}
