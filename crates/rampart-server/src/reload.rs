//! The one reload path: SIGHUP, a change of the policy file (debounced) and
//! `POST /api/v1/policy/reload` all call [`Reloader::reload`]. It re-reads the
//! configuration file and the policy, compiles them off the data path (on a
//! blocking thread) and swaps the new generation in atomically; a broken file
//! is rejected with every diagnostic kept for `/api/v1/policy/status`, and the
//! previous generation keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use rampart_gateway::GatewayHandle;
use rampart_policy::{Diagnostic, Policy};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Overrides, RampartConfig};

/// Quiet time after the last file event before a change reloads: editors and
/// `cp` write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// What asked for a reload (shown in logs and the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Signal,
    FileChange,
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Api => "API",
        }
    }
}

/// A compiled policy with what loading it said.
pub struct LoadedPolicy {
    /// `None` when no policy file is configured (the built-in default runs).
    pub policy: Option<Arc<Policy>>,
    pub warnings: Vec<Diagnostic>,
}

/// Why a policy (or the configuration carrying it) was rejected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration rejected: {0}")]
    Config(String),
    #[error("{message}")]
    Policy {
        message: String,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("gateway rejected the new configuration: {0}")]
    Gateway(String),
}

impl ReloadError {
    fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ReloadError::Policy { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// Compiles the policy file (or directory). Errors carry every diagnostic.
pub fn load_policy(path: Option<&Path>) -> Result<LoadedPolicy, ReloadError> {
    let Some(path) = path else {
        return Ok(LoadedPolicy {
            policy: None,
            warnings: Vec::new(),
        });
    };
    match Policy::load(path) {
        Ok((policy, warnings)) => {
            for warning in &warnings {
                tracing::warn!(%warning, "policy warning");
            }
            tracing::info!(path = %path.display(), revision = policy.revision(), "policy loaded");
            Ok(LoadedPolicy {
                policy: Some(Arc::new(policy)),
                warnings,
            })
        }
        Err(error) => Err(ReloadError::Policy {
            message: error.to_string(),
            diagnostics: error.diagnostics,
        }),
    }
}

/// One diagnostic as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticView {
    pub severity: String,
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// `file:line:column: message (did you mean ...)`, as `rampart policy check` prints it.
    pub text: String,
}

impl From<&Diagnostic> for DiagnosticView {
    fn from(d: &Diagnostic) -> Self {
        DiagnosticView {
            severity: d.severity.to_string(),
            file: d.file.to_string(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            suggestion: d.suggestion.clone(),
            text: d.to_string(),
        }
    }
}

/// The last rejected reload.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// RFC 3339.
    pub at: String,
    pub trigger: Trigger,
    pub message: String,
    pub diagnostics: Vec<DiagnosticView>,
}

/// What `GET /api/v1/policy/status` answers.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// Revision of the policy serving now.
    pub revision: String,
    /// When the serving policy was loaded (RFC 3339).
    pub loaded_at: String,
    /// The policy file or directory; `null` on the built-in default policy.
    pub source: Option<PathBuf>,
    /// Warnings of the serving policy.
    pub warnings: usize,
    /// Reloads applied and rejected since start.
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    /// Set while the newest reload attempt failed; cleared by a successful one.
    pub last_error: Option<LastError>,
}

/// Result of one reload, for the API.
pub struct ReloadOutcome {
    pub result: Result<(), ReloadError>,
    pub status: PolicyStatus,
}

/// Owns reloading for the process. Cheap to share (`Arc`).
pub struct Reloader {
    handle: GatewayHandle,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    api_addr: SocketAddr,
    status: Mutex<PolicyStatus>,
    /// Reloads run one at a time: two triggers at once must not interleave swaps.
    running: Mutex<()>,
}

impl Reloader {
    /// `initial` is the policy the process started with, from `policy_path`.
    pub fn new(
        handle: GatewayHandle,
        config_path: Option<PathBuf>,
        overrides: Overrides,
        api_addr: SocketAddr,
        policy_path: Option<PathBuf>,
        initial: &LoadedPolicy,
    ) -> Arc<Self> {
        let status = PolicyStatus {
            revision: revision_of(initial),
            loaded_at: now_rfc3339(),
            source: policy_path,
            warnings: initial.warnings.len(),
            reloads_ok: 0,
            reloads_rejected: 0,
            last_error: None,
        };
        Arc::new(Reloader {
            handle,
            config_path,
            overrides,
            api_addr,
            status: Mutex::new(status),
            running: Mutex::new(()),
        })
    }

    pub fn status(&self) -> PolicyStatus {
        lock(&self.status).clone()
    }

    /// The policy path currently configured (what the watcher follows).
    pub fn policy_path(&self) -> Option<PathBuf> {
        lock(&self.status).source.clone()
    }

    /// Reloads on a blocking thread (category databases can take seconds to
    /// compile) and waits for the outcome.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> ReloadOutcome {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reload_blocking(trigger)).await {
            Ok(outcome) => outcome,
            Err(e) => ReloadOutcome {
                result: Err(ReloadError::Gateway(format!("reload task failed: {e}"))),
                status: self.status(),
            },
        }
    }

    /// The reload itself. Must run inside the runtime (the gateway spawns health checks).
    pub fn reload_blocking(&self, trigger: Trigger) -> ReloadOutcome {
        let _one_at_a_time = lock(&self.running);
        let result = self.apply(trigger);
        let mut status = lock(&self.status);
        match &result {
            Ok((loaded, source)) => {
                status.revision = revision_of(loaded);
                status.loaded_at = now_rfc3339();
                status.source = source.clone();
                status.warnings = loaded.warnings.len();
                status.reloads_ok += 1;
                status.last_error = None;
                tracing::info!(trigger = trigger.as_str(), revision = %status.revision,
                    "configuration and policy reloaded");
            }
            Err(error) => {
                status.reloads_rejected += 1;
                status.last_error = Some(LastError {
                    at: now_rfc3339(),
                    trigger,
                    message: error.to_string(),
                    diagnostics: error.diagnostics().iter().map(Into::into).collect(),
                });
                match error {
                    ReloadError::Policy { .. } => {
                        tracing::error!(trigger = trigger.as_str(), error = %error,
                        "policy rejected, the previous configuration and policy keep serving")
                    }
                    _ => tracing::error!(trigger = trigger.as_str(), error = %error,
                        "configuration rejected, the previous one keeps serving"),
                }
            }
        }
        ReloadOutcome {
            result: result.map(|_| ()),
            status: status.clone(),
        }
    }

    fn apply(&self, _trigger: Trigger) -> Result<(LoadedPolicy, Option<PathBuf>), ReloadError> {
        // Embedded defaults plus flags: only the policy file can change.
        let config = match &self.config_path {
            Some(path) => match RampartConfig::load(path) {
                Ok(config) => config.with_overrides(&self.overrides),
                Err(e) => {
                    self.handle.reload_rejected();
                    return Err(ReloadError::Config(e.to_string()));
                }
            },
            None => RampartConfig::default().with_overrides(&self.overrides),
        };
        let loaded = match load_policy(config.policy.as_deref()) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.handle.reload_rejected();
                return Err(e);
            }
        };
        let mut gateway_config = config.gateway_config(vec![self.api_addr]);
        gateway_config.policy = loaded.policy.clone();
        // `GatewayHandle::reload` counts its own outcome in rampart_config_reloads_total.
        self.handle
            .reload(gateway_config)
            .map_err(|e| ReloadError::Gateway(e.to_string()))?;
        Ok((loaded, config.policy))
    }
}

fn revision_of(loaded: &LoadedPolicy) -> String {
    match &loaded.policy {
        Some(p) => p.revision().to_string(),
        None => Policy::builtin_default().revision().to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_rfc3339() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128 * 1_000_000)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Watches the policy file (or directory) and reloads after [`DEBOUNCE`] of quiet.
/// Follows the policy path when a reload changes it.
pub fn spawn_watcher(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watched = reloader.policy_path();
        let mut watcher = watch(watched.as_deref(), tx.clone());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Debounce: wait until the files have been quiet for DEBOUNCE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    got = rx.recv() => if got.is_none() { return },
                }
            }
            reloader.reload(Trigger::FileChange).await;
            let now = reloader.policy_path();
            if now != watched {
                drop(watcher);
                watched = now;
                watcher = watch(watched.as_deref(), tx.clone());
            }
        }
    });
}

/// Starts an OS watcher for `path`; `None` when there is nothing to watch or
/// watching fails (logged: SIGHUP and the API still reload).
fn watch(path: Option<&Path>, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let path = path?;
    let target = WatchTarget::new(path);
    let filter = target.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if filter.concerns(&event) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "policy file watcher error"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy file; reload with SIGHUP or the API");
            return None;
        }
    };
    let (dir, mode) = match &target {
        WatchTarget::Directory(dir) => (dir.clone(), RecursiveMode::Recursive),
        WatchTarget::File { dir, .. } => (dir.clone(), RecursiveMode::NonRecursive),
    };
    if let Err(e) = watcher.watch(&dir, mode) {
        tracing::warn!(path = %dir.display(), error = %e,
            "cannot watch the policy file; reload with SIGHUP or the API");
        return None;
    }
    tracing::info!(path = %path.display(), "watching the policy for changes");
    Some(watcher)
}

/// What to watch. A single file is watched through its directory, because
/// editors replace files by renaming a new one over them, which ends a watch
/// on the file itself.
#[derive(Debug, Clone)]
enum WatchTarget {
    Directory(PathBuf),
    File {
        dir: PathBuf,
        name: std::ffi::OsString,
    },
}

impl WatchTarget {
    fn new(path: &Path) -> Self {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if absolute.is_dir() {
            return WatchTarget::Directory(absolute);
        }
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = absolute
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        WatchTarget::File { dir, name }
    }

    /// Whether `event` may change the policy. Reads (including our own while
    /// reloading) and editor scratch files are ignored.
    fn concerns(&self, event: &notify::Event) -> bool {
        use notify::event::{AccessKind, AccessMode};
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        event.paths.iter().any(|p| match self {
            WatchTarget::File { name, .. } => p.file_name() == Some(name.as_os_str()),
            WatchTarget::Directory(_) => !is_scratch(p),
        })
    }
}

fn is_scratch(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with(".#")
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name == "4913"
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn file_target_reacts_to_its_own_name_only_and_never_to_reads() {
        let target = WatchTarget::File {
            dir: PathBuf::from("/etc/rampart"),
            name: "policy.toml".into(),
        };
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(target.concerns(&event(modify, "/etc/rampart/policy.toml")));
        assert!(target.concerns(&event(
            EventKind::Create(CreateKind::File),
            "/etc/rampart/policy.toml"
        )));
        assert!(target.concerns(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/etc/rampart/policy.toml"
        )));
        assert!(!target.concerns(&event(modify, "/etc/rampart/access.log")));
        assert!(!target.concerns(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            "/etc/rampart/policy.toml"
        )));
    }

    #[test]
    fn directory_target_ignores_editor_scratch_files() {
        let target = WatchTarget::Directory(PathBuf::from("/etc/rampart/policy.d"));
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(target.concerns(&event(modify, "/etc/rampart/policy.d/10-access.toml")));
        assert!(target.concerns(&event(modify, "/etc/rampart/policy.d/news/domains")));
        assert!(!target.concerns(&event(modify, "/etc/rampart/policy.d/.10-access.toml.swp")));
        assert!(!target.concerns(&event(modify, "/etc/rampart/policy.d/10-access.toml~")));
    }

    #[test]
    fn a_broken_policy_keeps_every_diagnostic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[lists]\npress = [\"a.test\"]\n[[access]]\nwhen = { lists = [\"pres\"] }\naction = \"block\"\n",
        )
        .unwrap();
        let Err(ReloadError::Policy {
            message,
            diagnostics,
        }) = load_policy(Some(&path))
        else {
            panic!("must be rejected");
        };
        assert!(message.contains("policy.toml:4:"), "{message}");
        let error = diagnostics.iter().find(|d| d.is_error()).unwrap();
        let view: DiagnosticView = error.into();
        assert_eq!(view.severity, "error");
        assert_eq!(view.line, 4);
        assert_eq!(view.suggestion.as_deref(), Some("press"));
    }

    #[test]
    fn no_policy_file_is_the_built_in_default() {
        let loaded = load_policy(None).unwrap();
        assert!(loaded.policy.is_none());
        assert_eq!(revision_of(&loaded), Policy::builtin_default().revision());
    }
}
