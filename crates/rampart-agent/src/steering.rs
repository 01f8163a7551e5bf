//! Steering decisions: what happens to one connection from one process to one host.
//!
//! [`SteeringPolicy`] is the seam: today [`ExceptionPolicy`] evaluates the exceptions of
//! the agent config; the policy crate's steering stage (delivered by the server) will
//! implement the same trait.

use crate::glob::Glob;
use crate::process::ProcessInfo;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SteeringAction {
    /// Through the gateway tunnel (inspected per gateway policy).
    Steer,
    /// Directly from the endpoint to the destination.
    Bypass,
    /// Through the gateway, which splices without decrypting.
    TunnelBypass,
    /// Refused on the endpoint.
    Block,
}

impl SteeringAction {
    /// The config spelling of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            SteeringAction::Steer => "steer",
            SteeringAction::Bypass => "bypass",
            SteeringAction::TunnelBypass => "tunnel-bypass",
            SteeringAction::Block => "block",
        }
    }
}

impl fmt::Display for SteeringAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of the steering stage for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringDecision {
    pub action: SteeringAction,
    /// Whether the decision is also reported to the server as an event (the agent log
    /// records every decision regardless).
    pub log: bool,
    /// Name of the exception that matched; `None` for the default.
    pub rule: Option<Arc<str>>,
}

/// Decides how each connection is steered. Implementations must be cheap: this runs on
/// every connection.
pub trait SteeringPolicy: Send + Sync + 'static {
    fn decide(&self, process: &ProcessInfo, host: &str, port: u16) -> SteeringDecision;
}

/// One steering exception as written in the agent config (`[[steering.exceptions]]`).
/// Every non-empty list must match (process name glob OR path glob OR ...; AND across
/// lists); an exception with no lists matches everything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
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
    #[serde(default = "default_true")]
    pub log: bool,
}

fn default_true() -> bool {
    true
}

struct CompiledException {
    name: Arc<str>,
    processes: Vec<Glob>,
    paths: Vec<Glob>,
    hosts: Vec<Glob>,
    ports: Vec<u16>,
    action: SteeringAction,
    log: bool,
}

impl CompiledException {
    fn matches(&self, process: &ProcessInfo, host: &str, port: u16) -> bool {
        let process_ok =
            self.processes.is_empty() || self.processes.iter().any(|g| g.matches(&process.name));
        let path_ok = self.paths.is_empty()
            || process
                .path
                .as_deref()
                .and_then(|p| p.to_str())
                .is_some_and(|p| self.paths.iter().any(|g| g.matches(p)));
        let host = host.strip_suffix('.').unwrap_or(host);
        let host_ok = self.hosts.is_empty() || self.hosts.iter().any(|g| g.matches(host));
        let port_ok = self.ports.is_empty() || self.ports.contains(&port);
        process_ok && path_ok && host_ok && port_ok
    }
}

/// First-match evaluation of the config's exceptions, then the default action.
pub struct ExceptionPolicy {
    exceptions: Vec<CompiledException>,
    default: SteeringAction,
}

impl ExceptionPolicy {
    pub fn new(exceptions: &[ExceptionConfig], default: SteeringAction) -> Self {
        let exceptions = exceptions
            .iter()
            .map(|e| CompiledException {
                name: Arc::from(e.name.as_str()),
                // The policy ignores case in `processes` (names and paths); the server
                // exports those patterns verbatim, so the agent must agree with it.
                processes: e
                    .processes
                    .iter()
                    .map(|p| Glob::new_case_insensitive(p))
                    .collect(),
                paths: e
                    .paths
                    .iter()
                    .map(|p| Glob::new_case_insensitive(p))
                    .collect(),
                hosts: e
                    .hosts
                    .iter()
                    .map(|h| Glob::new_case_insensitive(h))
                    .collect(),
                ports: e.ports.clone(),
                action: e.action,
                log: e.log,
            })
            .collect();
        ExceptionPolicy {
            exceptions,
            default,
        }
    }
}

impl SteeringPolicy for ExceptionPolicy {
    fn decide(&self, process: &ProcessInfo, host: &str, port: u16) -> SteeringDecision {
        for exception in &self.exceptions {
            if exception.matches(process, host, port) {
                return SteeringDecision {
                    action: exception.action,
                    log: exception.log,
                    rule: Some(Arc::clone(&exception.name)),
                };
            }
        }
        SteeringDecision {
            action: self.default,
            log: false,
            rule: None,
        }
    }
}

/// What the agent does when the gateway cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Connect directly (availability first).
    #[default]
    Open,
    /// Refuse, except for the allowlist.
    Closed,
}

/// The fail mode plus the hosts that stay reachable (directly) in closed mode.
pub struct FailPolicy {
    pub mode: FailMode,
    allow: Vec<Glob>,
}

impl FailPolicy {
    pub fn new(mode: FailMode, allow: &[String]) -> Self {
        FailPolicy {
            mode,
            allow: allow
                .iter()
                .map(|h| Glob::new_case_insensitive(h))
                .collect(),
        }
    }

    /// Whether a flow to `host` may go direct while the gateway is unreachable.
    pub fn allows_direct(&self, host: &str) -> bool {
        match self.mode {
            FailMode::Open => true,
            FailMode::Closed => self.allowlisted(host),
        }
    }

    /// Whether a flow to `host` may go direct while the gateway refuses this device as
    /// revoked: only the allowlist, in either mode (a revoked device fails closed).
    pub fn allows_direct_when_revoked(&self, host: &str) -> bool {
        self.allowlisted(host)
    }

    fn allowlisted(&self, host: &str) -> bool {
        self.allow.iter().any(|g| g.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn process(name: &str, path: &str) -> ProcessInfo {
        ProcessInfo {
            pid: Some(42),
            name: name.to_string(),
            path: Some(PathBuf::from(path)),
            uid: Some(1000),
            user: Some("alice".to_string()),
        }
    }

    fn exceptions() -> Vec<ExceptionConfig> {
        toml::from_str::<Wrapper>(
            r#"
            [[e]]
            name = "python to PyPI goes direct"
            processes = ["python3*", "pip*"]
            hosts = ["pypi.org", "*.pythonhosted.org"]
            action = "bypass"
            [[e]]
            name = "dropbox pinned"
            paths = ["/opt/dropbox/*"]
            action = "tunnel-bypass"
            log = false
            [[e]]
            name = "no blocked.example"
            hosts = ["blocked.example"]
            action = "block"
            "#,
        )
        .expect("valid")
        .e
    }

    #[derive(Deserialize)]
    struct Wrapper {
        e: Vec<ExceptionConfig>,
    }

    #[test]
    fn python_to_pypi_bypasses_with_the_rule_name() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        let d = policy.decide(
            &process("python3.12", "/usr/bin/python3.12"),
            "pypi.org",
            443,
        );
        assert_eq!(d.action, SteeringAction::Bypass);
        assert!(d.log);
        assert_eq!(d.rule.as_deref(), Some("python to PyPI goes direct"));
        let d = policy.decide(
            &process("pip", "/usr/bin/pip"),
            "files.PYTHONHOSTED.org.",
            443,
        );
        assert_eq!(d.action, SteeringAction::Bypass);
    }

    #[test]
    fn curl_to_pypi_falls_through_to_the_default() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        let d = policy.decide(&process("curl", "/usr/bin/curl"), "pypi.org", 443);
        assert_eq!(d.action, SteeringAction::Steer);
        assert_eq!(d.rule, None);
    }

    #[test]
    fn path_globs_select_tunnel_bypass_and_carry_log_false() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        let d = policy.decide(
            &process("dropbox", "/opt/dropbox/dropbox"),
            "api.dropbox.com",
            443,
        );
        assert_eq!(d.action, SteeringAction::TunnelBypass);
        assert!(!d.log);
    }

    #[test]
    fn path_exception_never_matches_an_unknown_process() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        let d = policy.decide(&ProcessInfo::unknown(), "api.dropbox.com", 443);
        assert_eq!(d.action, SteeringAction::Steer);
    }

    #[test]
    fn host_only_exception_blocks_any_process() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        let d = policy.decide(&ProcessInfo::unknown(), "blocked.example", 80);
        assert_eq!(d.action, SteeringAction::Block);
    }

    #[test]
    fn process_names_and_paths_ignore_case_like_the_policy() {
        let policy = ExceptionPolicy::new(&exceptions(), SteeringAction::Steer);
        // `Python3.12` (a renamed binary) still matches `python3*`, as it does in the
        // gateway's `processes` condition.
        let d = policy.decide(
            &process("Python3.12", "/usr/bin/Python3.12"),
            "pypi.org",
            443,
        );
        assert_eq!(d.action, SteeringAction::Bypass);
        let d = policy.decide(
            &process("Dropbox", "/OPT/Dropbox/Dropbox"),
            "api.dropbox.com",
            443,
        );
        assert_eq!(d.action, SteeringAction::TunnelBypass);
        // Case is all that is ignored: other names still fall through.
        let d = policy.decide(&process("ipython3", "/usr/bin/ipython3"), "pypi.org", 443);
        assert_eq!(d.action, SteeringAction::Steer);
    }

    #[test]
    fn fail_closed_allows_only_the_allowlist() {
        let fail = FailPolicy::new(FailMode::Closed, &["*.corp.example".to_string()]);
        assert!(fail.allows_direct("vpn.corp.example"));
        assert!(!fail.allows_direct("example.com"));
        assert!(FailPolicy::new(FailMode::Open, &[]).allows_direct("example.com"));
    }

    #[test]
    fn a_revoked_device_fails_closed_in_open_mode_keeping_the_allowlist() {
        let open = FailPolicy::new(FailMode::Open, &["*.corp.example".to_string()]);
        assert!(!open.allows_direct_when_revoked("example.com"));
        assert!(open.allows_direct_when_revoked("login.corp.example"));
        let closed = FailPolicy::new(FailMode::Closed, &[]);
        assert!(!closed.allows_direct_when_revoked("example.com"));
    }
}
