//! The one reload path: SIGHUP, a change of the policy file (debounced) and
//! `POST /api/v1/policy/reload` all call [`Reloader::reload`]. It re-reads the
//! configuration file and the policy, compiles them off the data path (on a
//! blocking thread) and swaps the new generation in atomically; a broken file
//! is rejected with every diagnostic kept for `/api/v1/policy/status`, and the
//! previous generation keeps serving.
//!
//! A policy that compiles is still refused when it looks like an accident: an
//! empty file, a policy without rules replacing one with rules (unless the API
//! forces it), or a revision that fails the policy's own test cases
//! (`[policy] tests`). The watcher only reads a file once it has stopped changing.
//!
//! What a reload does to each section of the configuration file (also in
//! docs/configuration.md, "Reloading"):
//! - swapped in place, keeping what need not change: the policy, `[proxy]`
//!   admission and rules, `[limits]` (within the descriptor budget fixed at
//!   start), `[egress]`, `[upstreams]`, `[resolve]`, `[coaching]`, `[tls]` (the
//!   CA, minted leaves and pinned-client state are kept while `[tls]` is
//!   unchanged), `[inspect]` (compiled rules kept while unchanged), `[isolation]`,
//!   `[[response]]`, `[agent]`;
//! - applied in place: `[[events.sinks]]` added, changed or removed (see
//!   `rampart_events::sink::Sinks`);
//! - need a restart, named in the log and in the reload answer
//!   ([`PolicyStatus::restart_required`]): see [`restart_required`].

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

use crate::config::{Overrides, PolicyConfig, RampartConfig};

/// Quiet time after the last file event before a change reloads: editors and
/// `cp` write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// After the events are quiet, the policy files must also keep the same size,
/// modification time and content hash for this long before they are read: a
/// writer that pauses between writes sends no events while it pauses.
pub const STABLE_FOR: Duration = Duration::from_millis(300);

/// What asked for a reload (shown in logs and the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Signal,
    FileChange,
    Api,
    /// A configuration revision of the fleet (`rampart gateway`).
    Fleet,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Api => "API",
            Trigger::Fleet => "fleet revision",
        }
    }
}

/// A compiled policy with what loading it said.
pub struct LoadedPolicy {
    /// `None` when no policy file is configured (the built-in default runs).
    pub policy: Option<Arc<Policy>>,
    pub warnings: Vec<Diagnostic>,
}

impl LoadedPolicy {
    /// Rules the policy's own files define (0 for the built-in default).
    pub fn own_rules(&self) -> usize {
        self.policy.as_ref().map_or(0, |p| p.own_rules())
    }
}

/// A test case of `[policy] tests` that the new revision fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedCase {
    pub name: String,
    /// What differed, e.g. `access: expected block, got allow (rule default)`.
    pub failures: Vec<String>,
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
    /// The new policy has no rules of its own while the serving one has some.
    #[error(
        "{path}: the new policy has no rules, the serving one has {serving}; \
         refused (a file being written looks like this). Reload through the API with \
         ?force=true to apply it on purpose"
    )]
    LostRules { path: String, serving: usize },
    /// `[policy] tests` could not be run, or a case failed.
    #[error("{message}")]
    Tests {
        message: String,
        failed: Vec<FailedCase>,
    },
    /// The policy files changed while they were being loaded (watcher only; not a
    /// rejection: the watcher waits for them to settle and tries again).
    #[error("the policy files changed while they were being loaded")]
    Unsettled,
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

    fn failed_cases(&self) -> &[FailedCase] {
        match self {
            ReloadError::Tests { failed, .. } => failed,
            _ => &[],
        }
    }
}

/// Compiles the policy file (or directory) and runs its test cases. Errors carry
/// every diagnostic and every failed case. An empty policy file is refused.
pub fn load_policy(config: &PolicyConfig) -> Result<LoadedPolicy, ReloadError> {
    load_policy_with(config, false)
}

/// [`load_policy`]; `allow_empty` accepts an empty policy file (a forced reload).
fn load_policy_with(config: &PolicyConfig, allow_empty: bool) -> Result<LoadedPolicy, ReloadError> {
    let Some(path) = config.file.as_deref() else {
        return Ok(LoadedPolicy {
            policy: None,
            warnings: Vec::new(),
        });
    };
    let (policy, warnings) = Policy::load_with(path, rampart_policy::LoadOptions { allow_empty })
        .map_err(|error| ReloadError::Policy {
        message: error.to_string(),
        diagnostics: error.diagnostics,
    })?;
    if let Some(cases) = config.tests.as_deref() {
        run_policy_tests(&policy, cases)?;
    }
    for warning in &warnings {
        tracing::warn!(%warning, "policy warning");
    }
    tracing::info!(path = %path.display(), revision = policy.revision(), "policy loaded");
    Ok(LoadedPolicy {
        policy: Some(Arc::new(policy)),
        warnings,
    })
}

/// Runs every case of the cases file `path` against `policy`: the revision is
/// refused unless all pass.
fn run_policy_tests(policy: &Policy, path: &Path) -> Result<(), ReloadError> {
    let tests_error = |message: String| ReloadError::Tests {
        message,
        failed: Vec::new(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        tests_error(format!(
            "cannot read the policy tests {} ([policy] tests): {e}",
            path.display()
        ))
    })?;
    let cases = rampart_policy::parse_cases(&text)
        .map_err(|e| tests_error(format!("{}: {e}", path.display())))?;
    if cases.cases.is_empty() {
        return Err(tests_error(format!(
            "{}: no [[case]] tables ([policy] tests needs at least one case)",
            path.display()
        )));
    }
    let failed: Vec<FailedCase> = cases
        .cases
        .iter()
        .map(|case| policy.run_case(case))
        .filter(|result| !result.passed())
        .map(|result| FailedCase {
            name: result.name,
            failures: result.failures,
        })
        .collect();
    let Some(first) = failed.first() else {
        tracing::info!(tests = %path.display(), cases = cases.cases.len(),
            revision = policy.revision(), "policy tests passed");
        return Ok(());
    };
    let message = format!(
        "policy revision {} fails {} of {} test cases of {}; first: case \"{}\": {}",
        policy.revision(),
        failed.len(),
        cases.cases.len(),
        path.display(),
        first.name,
        first.failures.join("; ")
    );
    Err(ReloadError::Tests { message, failed })
}

/// How one reload may treat the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Apply an empty policy, or one without rules replacing one with rules
    /// (`POST /api/v1/policy/reload?force=true`). Test cases still apply.
    pub force: bool,
    /// The watcher's fingerprint of the files it waited on: if they differ once the
    /// policy is compiled, the reload is skipped ([`ReloadError::Unsettled`]).
    pub settled: Option<Fingerprint>,
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
    /// Test cases of `[policy] tests` that the refused revision failed.
    pub failed_cases: Vec<FailedCase>,
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
    /// Rules the serving policy's own files define.
    pub rules: usize,
    /// Reloads applied and rejected since start.
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    /// Set while the newest reload attempt failed; cleared by a successful one.
    pub last_error: Option<LastError>,
    /// Keys changed in the file since the process started that take effect
    /// only after a restart (empty when the running process matches the file).
    pub restart_required: Vec<String>,
    /// Sinks the newest successful reload added, changed or removed.
    pub sinks_changed: Vec<String>,
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
    /// `[isolation]` and `[[response]]` are checked with the rest of the file and
    /// swapped in only when the whole reload succeeds.
    isolation: Mutex<Option<Arc<crate::isolation::IsolationService>>>,
    /// The event sinks, changed in place by a reload.
    sinks: Mutex<Option<Arc<rampart_events::sink::Sinks>>>,
    /// The configuration the process started with: what a restart would change.
    started: RampartConfig,
    /// The policy path in force, for the watcher: a reload may add, move or
    /// remove the policy file, and the watcher follows.
    policy_path: tokio::sync::watch::Sender<Option<PathBuf>>,
    /// Counts applied reloads (the fleet publisher republishes on each).
    applied: tokio::sync::watch::Sender<u64>,
}

impl Reloader {
    /// `initial` is the policy the process started with, from `policy_path`.
    pub fn new(
        handle: GatewayHandle,
        config_path: Option<PathBuf>,
        overrides: Overrides,
        api_addr: SocketAddr,
        started: &RampartConfig,
        initial: &LoadedPolicy,
    ) -> Arc<Self> {
        let policy_path = started.policy.file.clone();
        let status = PolicyStatus {
            revision: revision_of(initial),
            loaded_at: now_rfc3339(),
            source: policy_path,
            warnings: initial.warnings.len(),
            rules: initial.own_rules(),
            reloads_ok: 0,
            reloads_rejected: 0,
            last_error: None,
            restart_required: Vec::new(),
            sinks_changed: Vec::new(),
        };
        Arc::new(Reloader {
            handle,
            config_path,
            overrides,
            api_addr,
            status: Mutex::new(status),
            running: Mutex::new(()),
            isolation: Mutex::new(None),
            sinks: Mutex::new(None),
            policy_path: tokio::sync::watch::channel(started.policy.file.clone()).0,
            applied: tokio::sync::watch::channel(0).0,
            started: started.clone(),
        })
    }

    /// Apply `[[events.sinks]]` changes to these sinks from now on.
    pub fn set_sinks(&self, sinks: Arc<rampart_events::sink::Sinks>) {
        *lock(&self.sinks) = Some(sinks);
    }

    /// Changes once per applied reload.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Follows the policy path in force (the watcher's subscription).
    pub fn watch_policy_path(&self) -> tokio::sync::watch::Receiver<Option<PathBuf>> {
        self.policy_path.subscribe()
    }

    /// Reload `[isolation]` and `[[response]]` into `service` from now on.
    pub fn set_isolation(&self, service: Arc<crate::isolation::IsolationService>) {
        *lock(&self.isolation) = Some(service);
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
        self.reload_with(trigger, ReloadOptions::default()).await
    }

    /// [`Reloader::reload`] with options (force, or the watcher's fingerprint).
    pub async fn reload_with(
        self: &Arc<Self>,
        trigger: Trigger,
        options: ReloadOptions,
    ) -> ReloadOutcome {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reload_blocking(trigger, &options)).await {
            Ok(outcome) => outcome,
            Err(e) => ReloadOutcome {
                result: Err(ReloadError::Gateway(format!("reload task failed: {e}"))),
                status: self.status(),
            },
        }
    }

    /// The reload itself. Must run inside the runtime (the gateway spawns health checks).
    pub fn reload_blocking(&self, trigger: Trigger, options: &ReloadOptions) -> ReloadOutcome {
        let _one_at_a_time = lock(&self.running);
        let serving_rules = lock(&self.status).rules;
        let result = self.apply(options, serving_rules);
        let mut status = lock(&self.status);
        match &result {
            Ok(Applied {
                loaded,
                source,
                restart_required,
                sinks_changed,
            }) => {
                if status.source != *source {
                    self.policy_path.send_replace(source.clone());
                }
                if !restart_required.is_empty() {
                    tracing::warn!(trigger = trigger.as_str(), keys = %restart_required.join(", "),
                        "these settings changed in the configuration file and take effect only after a restart");
                }
                if !sinks_changed.is_empty() {
                    tracing::info!(sinks = %sinks_changed.join(", "), "event sinks changed");
                }
                self.applied.send_modify(|n| *n += 1);
                status.restart_required = restart_required.clone();
                status.sinks_changed = sinks_changed.clone();
                status.revision = revision_of(loaded);
                status.loaded_at = now_rfc3339();
                status.source = source.clone();
                status.warnings = loaded.warnings.len();
                status.rules = loaded.own_rules();
                status.reloads_ok += 1;
                status.last_error = None;
                tracing::info!(trigger = trigger.as_str(), revision = %status.revision,
                    "configuration and policy reloaded");
            }
            Err(ReloadError::Unsettled) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    "the policy files changed while being loaded; waiting for them to settle"
                );
            }
            Err(error) => {
                status.reloads_rejected += 1;
                status.last_error = Some(LastError {
                    at: now_rfc3339(),
                    trigger,
                    message: error.to_string(),
                    diagnostics: error.diagnostics().iter().map(Into::into).collect(),
                    failed_cases: error.failed_cases().to_vec(),
                });
                match error {
                    ReloadError::Policy { .. }
                    | ReloadError::LostRules { .. }
                    | ReloadError::Tests { .. } => {
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

    fn apply(&self, options: &ReloadOptions, serving_rules: usize) -> Result<Applied, ReloadError> {
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
        // A bad exception file or response query refuses the reload: the old ones stay.
        let isolation = match crate::isolation::Compiled::load(&config.isolation, &config.response)
        {
            Ok(compiled) => compiled,
            Err(e) => {
                self.handle.reload_rejected();
                return Err(ReloadError::Config(e));
            }
        };
        let loaded = match self.checked_policy(&config.policy, options, serving_rules) {
            Ok(loaded) => loaded,
            Err(ReloadError::Unsettled) => return Err(ReloadError::Unsettled),
            Err(e) => {
                self.handle.reload_rejected();
                return Err(e);
            }
        };
        // Sinks first: a sink that cannot start refuses the reload before the
        // gateway swaps anything (the sink set itself changes all or nothing).
        let sinks_changed = match lock(&self.sinks).as_ref() {
            Some(sinks) => match sinks.reconfigure(&config.events.sinks) {
                Ok(changes) => changes
                    .added
                    .iter()
                    .map(|n| format!("{n} (added)"))
                    .chain(changes.changed.iter().map(|n| format!("{n} (changed)")))
                    .chain(changes.removed.iter().map(|n| format!("{n} (removed)")))
                    .collect(),
                Err(e) => {
                    self.handle.reload_rejected();
                    return Err(ReloadError::Config(format!("[[events.sinks]]: {e}")));
                }
            },
            None => Vec::new(),
        };
        let mut gateway_config = config.gateway_config(vec![self.api_addr]);
        gateway_config.policy = loaded.policy.clone();
        // `GatewayHandle::reload` counts its own outcome in rampart_config_reloads_total.
        self.handle
            .reload(gateway_config)
            .map_err(|e| ReloadError::Gateway(e.to_string()))?;
        if let Some(service) = lock(&self.isolation).as_ref() {
            service.replace(isolation);
        }
        Ok(Applied {
            loaded,
            source: config.policy.file.clone(),
            restart_required: restart_required(&self.started, &config),
            sinks_changed,
        })
    }

    /// Loads the new policy and refuses what looks like an accident (see the module
    /// documentation).
    fn checked_policy(
        &self,
        config: &PolicyConfig,
        options: &ReloadOptions,
        serving_rules: usize,
    ) -> Result<LoadedPolicy, ReloadError> {
        let loaded = load_policy_with(config, options.force)?;
        if let (Some(expected), Some(path)) = (&options.settled, config.file.as_deref()) {
            if fingerprint(path) != *expected {
                return Err(ReloadError::Unsettled);
            }
        }
        if !options.force && loaded.own_rules() == 0 && serving_rules > 0 {
            return Err(ReloadError::LostRules {
                path: config.file.as_deref().map_or_else(
                    || "<built-in default policy>".into(),
                    |p| p.display().to_string(),
                ),
                serving: serving_rules,
            });
        }
        Ok(loaded)
    }
}

/// What a successful reload applied.
struct Applied {
    loaded: LoadedPolicy,
    source: Option<PathBuf>,
    restart_required: Vec<String>,
    sinks_changed: Vec<String>,
}

/// The keys that differ between the configuration the process started with
/// and `new`, among those a reload cannot apply: listeners are bound, the data
/// dir holds open stores, the event pipeline's queue and journal are sized at
/// start, the access log file is open, logging and the runtime are set up once.
///
/// Compared through `Debug`: every section is plain data, and a `Debug`
/// difference is a value difference.
pub fn restart_required(started: &RampartConfig, new: &RampartConfig) -> Vec<String> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check("data_dir", started.data_dir != new.data_dir);
    check("proxy.listen", started.proxy.listen != new.proxy.listen);
    check(
        "proxy.auth_verify_concurrency",
        started.proxy.auth_verify_concurrency != new.proxy.auth_verify_concurrency,
    );
    check("api", differs(&started.api, &new.api));
    check("tunnel", differs(&started.tunnel, &new.tunnel));
    check("access_log", differs(&started.access_log, &new.access_log));
    check("log", differs(&started.log, &new.log));
    check("runtime", differs(&started.runtime, &new.runtime));
    check("fleet", differs(&started.fleet, &new.fleet));
    let events_without_sinks = |c: &RampartConfig| {
        let mut e = c.events.clone();
        e.sinks.clear();
        format!("{e:?}")
    };
    check(
        "events (other than sinks)",
        events_without_sinks(started) != events_without_sinks(new),
    );
    keys
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

/// What the watcher compares to decide that the policy files stopped changing:
/// for each `.toml` file, its name, size, modification time and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>, [u8; 32])>);

/// The fingerprint of a policy file, or of the `.toml` files of a policy
/// directory. A file that cannot be read counts as missing (and a later read
/// fails with its own error).
pub fn fingerprint(path: &Path) -> Fingerprint {
    use sha2::Digest;
    let mut files = Vec::new();
    if path.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml")),
            );
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    Fingerprint(
        files
            .into_iter()
            .filter_map(|f| {
                let meta = std::fs::metadata(&f).ok()?;
                let content = std::fs::read(&f).ok()?;
                let hash: [u8; 32] = sha2::Sha256::digest(&content).into();
                Some((f, meta.len(), meta.modified().ok(), hash))
            })
            .collect(),
    )
}

/// Waits until the policy files keep the same fingerprint for [`STABLE_FOR`];
/// returns that fingerprint, or `None` on shutdown.
async fn settle(path: &Path, shutdown: &CancellationToken) -> Option<Fingerprint> {
    let mut last = fingerprint(path);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(STABLE_FOR) => {}
        }
        let now = fingerprint(path);
        if now == last {
            return Some(now);
        }
        last = now;
    }
}

/// Watches the policy file (or directory) and reloads once the file events have
/// been quiet for [`DEBOUNCE`] and the files unchanged for [`STABLE_FOR`].
/// Follows the policy path when a reload changes it.
pub fn spawn_watcher(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut path_rx = reloader.watch_policy_path();
        let mut watched = reloader.policy_path();
        let mut watcher = watch(watched.as_deref(), tx.clone());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
                // A reload (SIGHUP, the API) added, moved or removed the policy
                // file: watch the new one from now on.
                changed = path_rx.changed() => {
                    if changed.is_err() { return }
                    let now = path_rx.borrow_and_update().clone();
                    if now != watched {
                        drop(watcher);
                        watched = now;
                        watcher = watch(watched.as_deref(), tx.clone());
                    }
                    continue;
                }
            }
            // Debounce: wait until the files have been quiet for DEBOUNCE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    got = rx.recv() => if got.is_none() { return },
                }
            }
            // Then until their content stopped changing, and reload exactly that.
            loop {
                let settled = match watched.as_deref() {
                    Some(path) => match settle(path, &shutdown).await {
                        Some(fp) => Some(fp),
                        None => return,
                    },
                    None => None,
                };
                let options = ReloadOptions {
                    force: false,
                    settled,
                };
                let outcome = reloader.reload_with(Trigger::FileChange, options).await;
                if !matches!(outcome.result, Err(ReloadError::Unsettled)) {
                    break;
                }
            }
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

    fn file(path: &Path) -> PolicyConfig {
        PolicyConfig {
            file: Some(path.to_path_buf()),
            tests: None,
        }
    }

    const BLOCK_NEWS: &str =
        "[[access]]\nid = \"no-news\"\nwhen = { hosts = [\"news.test\"] }\naction = \"block\"\n";

    #[test]
    fn a_revision_failing_its_own_test_case_is_refused_and_names_the_case() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let cases = dir.path().join("cases.toml");
        std::fs::write(&path, BLOCK_NEWS).unwrap();
        std::fs::write(
            &cases,
            "[[case]]\nname = \"news stays blocked\"\nurl = \"https://news.test/\"\nexpect = { access = \"block\" }\n",
        )
        .unwrap();
        let config = PolicyConfig {
            file: Some(path.clone()),
            tests: Some(cases),
        };
        assert!(load_policy(&config).is_ok());
        std::fs::write(&path, BLOCK_NEWS.replace("news.test", "sports.test")).unwrap();
        let Err(ReloadError::Tests { message, failed }) = load_policy(&config) else {
            panic!("must be refused");
        };
        assert!(message.contains("case \"news stays blocked\""), "{message}");
        assert_eq!(failed[0].name, "news stays blocked");
        assert!(
            failed[0].failures[0].contains("expected block"),
            "{failed:?}"
        );
    }

    #[test]
    fn an_empty_policy_file_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        let Err(ReloadError::Policy { message, .. }) = load_policy(&file(&path)) else {
            panic!("must be refused");
        };
        assert!(message.contains("policy file is empty"), "{message}");
        assert_eq!(load_policy_with(&file(&path), true).unwrap().own_rules(), 0);
    }

    #[test]
    fn fingerprint_changes_with_content_of_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[lists]\na = [\"x.test\"]\n").unwrap();
        let before = fingerprint(&path);
        assert_eq!(before, fingerprint(&path));
        std::fs::write(&path, "[lists]\na = [\"y.test\"]\n").unwrap();
        assert_ne!(before, fingerprint(&path));
        assert_ne!(fingerprint(dir.path()), Fingerprint(Vec::new()));
    }

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
        }) = load_policy(&file(&path))
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
        let loaded = load_policy(&PolicyConfig::default()).unwrap();
        assert!(loaded.policy.is_none());
        assert_eq!(revision_of(&loaded), Policy::builtin_default().revision());
    }
}
