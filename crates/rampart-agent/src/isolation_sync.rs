//! Isolation commanded by the server: the desired state arrives over the tunnel
//! (`GET /api/v1/agent/isolation`, long-polled so a command is seen at once), is kept
//! in `<data dir>/isolation-server.json` (an agent restarted while the server is
//! unreachable still knows it, and the break-glass code's hash), and is enforced with
//! [`crate::isolation`]; every change, and a check every few seconds, is reported
//! back (`POST /api/v1/agent/isolation`).
//!
//! Break-glass: `rampart agent release --code CODE` ([`break_glass_release`]) checks
//! the code against the hash the server sent, records its use in
//! `<data dir>/break-glass.json` before it deletes the table, and the running agent
//! then treats that isolation as released and reports the use when it can.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::agent_log::{AgentLog, Level};
use crate::connector::Connector;
use crate::enrollment::Enrollment;
use crate::isolation::lookup::NameLookups;
use crate::isolation::{self, Desired, IsolationSpec, IsolationStatus, Isolator};
use crate::mtls_tunnel::MtlsH2Tunnel;

pub const ISOLATION_PATH: &str = "/api/v1/agent/isolation";
/// How long the server holds a poll open when nothing changes.
const LONG_POLL: Duration = Duration::from_secs(25);
/// How often the kernel's table is compared with the desired state (drift).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Time the self-test gives a TCP connection to the server.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a check waits for the kept names to resolve (see [`NameLookups`]).
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// The break-glass part of the server's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassDoc {
    pub id: String,
    pub salt: String,
    pub hash: String,
}

/// The body of `GET /api/v1/agent/isolation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationDoc {
    pub revision: String,
    pub generation: u64,
    /// `isolated` or `released`.
    pub desired: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exceptions: String,
    #[serde(default)]
    pub exceptions_file: Option<String>,
    #[serde(default)]
    pub keep_hosts: Vec<String>,
    #[serde(default)]
    pub resolvers: Vec<IpAddr>,
    #[serde(default)]
    pub break_glass: Option<BreakGlassDoc>,
}

impl IsolationDoc {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("isolation-server.json")
    }

    pub fn load(data_dir: &Path) -> Option<IsolationDoc> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn persist(&self, data_dir: &Path) -> std::io::Result<()> {
        write_atomic(
            &Self::path(data_dir),
            &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }
}

/// A used break-glass code, `<data dir>/break-glass.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassUse {
    pub id: String,
    /// The isolation it released.
    pub generation: u64,
    pub at: String,
    /// The server has been told.
    #[serde(default)]
    pub reported: bool,
}

impl BreakGlassUse {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("break-glass.json")
    }

    pub fn load(data_dir: &Path) -> Option<BreakGlassUse> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        write_atomic(
            &Self::path(data_dir),
            &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The server's hash of a break-glass code (the same function as the server's
/// `code_hash`): case, dashes and spaces do not matter when typing it.
pub fn code_hash(salt: &str, device: &str, code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Sha256::digest(format!("{salt}:{device}:{normal}"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why `rampart agent release --code` refused.
#[derive(Debug, thiserror::Error)]
pub enum BreakGlassError {
    #[error("this agent is not enrolled")]
    NotEnrolled,
    #[error("no break-glass code was delivered to this device (issue one with `rampart device release-code ID` while the device is still connected)")]
    NoCode,
    #[error("this break-glass code was already used")]
    AlreadyUsed,
    #[error("wrong break-glass code")]
    Wrong,
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Isolation(#[from] isolation::IsolationError),
}

/// `rampart agent release --code CODE`: verify the code locally, record its use, then
/// release. Works once per code, with or without the server.
pub fn break_glass_release(
    data_dir: &Path,
    code: &str,
    log: Option<&AgentLog>,
) -> Result<IsolationStatus, BreakGlassError> {
    let enrollment = Enrollment::load(data_dir)
        .map_err(|e| BreakGlassError::Io(e.to_string()))?
        .ok_or(BreakGlassError::NotEnrolled)?;
    let doc = IsolationDoc::load(data_dir).ok_or(BreakGlassError::NoCode)?;
    let glass = doc.break_glass.as_ref().ok_or(BreakGlassError::NoCode)?;
    if BreakGlassUse::load(data_dir).is_some_and(|u| u.id == glass.id) {
        return Err(BreakGlassError::AlreadyUsed);
    }
    let given = code_hash(&glass.salt, &enrollment.device_id, code);
    if !constant_time_eq(given.as_bytes(), glass.hash.as_bytes()) {
        if let Some(log) = log {
            log.write(Level::Warn, "Break-glass release refused: wrong code");
        }
        return Err(BreakGlassError::Wrong);
    }
    // Recorded before the table goes, so a running agent never puts it back.
    BreakGlassUse {
        id: glass.id.clone(),
        generation: doc.generation,
        at: crate::status::now_rfc3339(),
        reported: false,
    }
    .save(data_dir)
    .map_err(|e| {
        BreakGlassError::Io(format!("{}: {e}", BreakGlassUse::path(data_dir).display()))
    })?;
    let status = isolation::release(
        data_dir,
        &Isolator::default(),
        Some(format!("break-glass code {}", glass.id)),
    )?;
    if let Some(log) = log {
        log.write(
            Level::Warn,
            &format!(
                "Isolation released with break-glass code {} (generation {})",
                glass.id, doc.generation
            ),
        );
    }
    Ok(status)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The report sent to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub generation: u64,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_test_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlassReport {
    pub id: String,
    pub generation: u64,
    pub at: String,
}

/// Where the agent's own server and gateway are (from the enrollment), and how the
/// agent connects to them.
#[derive(Debug, Clone)]
pub struct Home {
    /// Host names or addresses of the server's API and the gateway's tunnel.
    pub server_host: String,
    pub gateway_host: String,
    /// The server API's port, for the self-test against the server's current
    /// addresses.
    pub server_port: u16,
    /// What the self-test connects to besides the server's current addresses (the
    /// server and gateway as resolved at start).
    pub self_test: Vec<SocketAddr>,
    /// The agent's own outbound connector: the self-test carries the agent's socket
    /// mark, so the steering table does not redirect it to the agent itself.
    pub connector: Connector,
    /// Lookups of the kept names, bounded so a blocked resolver cannot hold up a
    /// release.
    pub lookups: NameLookups,
}

impl Home {
    /// From the enrollment, with an unmarked connector (local-proxy mode); the agent
    /// runtime passes its own with [`Home::with_connector`].
    pub fn of(enrollment: &Enrollment) -> Home {
        let server = enrollment
            .server
            .split("://")
            .last()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let default_port = if enrollment.server.starts_with("https://") {
            443
        } else {
            80
        };
        let (server_host, server_port) = split_host_port(&server, default_port);
        let (gateway_host, gateway_port) = split_host_port(&enrollment.gateway, 443);
        // Bounded: an agent restarted while isolated may have no DNS.
        let lookups = NameLookups::default();
        let found = lookups.resolve_all(&[&server_host, &gateway_host], RESOLVE_WAIT);
        let self_test: Vec<SocketAddr> = found
            .into_iter()
            .zip([server_port, gateway_port])
            .flat_map(|(addrs, port)| {
                addrs
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |ip| SocketAddr::new(ip, port))
            })
            .collect();
        Home {
            server_host,
            gateway_host,
            server_port,
            self_test,
            connector: Connector {
                mark: None,
                timeout: SELF_TEST_TIMEOUT,
            },
            lookups,
        }
    }

    /// Use the agent's connector (its socket mark) for the self-test; the timeout
    /// stays the self-test's own.
    pub fn with_connector(mut self, connector: Connector) -> Home {
        self.connector = Connector {
            timeout: SELF_TEST_TIMEOUT,
            ..connector
        };
        self
    }

    /// The self-test's targets for `spec`: the server at its current addresses first,
    /// then what was resolved at start.
    pub fn self_test_targets(&self, spec: &IsolationSpec) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = spec
            .server_addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.server_port))
            .collect();
        for target in &self.self_test {
            if !targets.contains(target) {
                targets.push(*target);
            }
        }
        targets
    }
}

fn split_host_port(authority: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_string(), port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().unwrap_or(default_port)),
        _ => (authority.to_string(), default_port),
    }
}

/// The spec to enforce for `doc`: exceptions parsed (errors name the server's file),
/// the agent's server and gateway plus the document's hosts resolved.
///
/// A name that resolves to nothing now keeps the addresses of `previous` (the spec
/// in force): while isolated, DNS is open only to `[isolation] resolvers`, and a
/// failed lookup must never drop the management channel from the keep sets.
pub fn spec_for(
    doc: &IsolationDoc,
    home: &Home,
    previous: Option<&IsolationSpec>,
) -> Result<IsolationSpec, String> {
    let file = doc
        .exceptions_file
        .as_deref()
        .unwrap_or("server exceptions");
    let exceptions = isolation::parse_rules(file, &doc.exceptions).map_err(|e| e.to_string())?;
    let mut gateway_hosts: Vec<&str> = vec![home.gateway_host.as_str()];
    gateway_hosts.extend(doc.keep_hosts.iter().map(String::as_str));
    let (mut server_addrs, server_unresolved) =
        resolve_each(&home.lookups, &[home.server_host.as_str()]);
    let (mut gateway_addrs, gateway_unresolved) = resolve_each(&home.lookups, &gateway_hosts);
    if let Some(previous) = previous {
        if server_unresolved {
            server_addrs = union(&previous.server_addrs, server_addrs);
        }
        if gateway_unresolved {
            gateway_addrs = union(&previous.gateway_addrs, gateway_addrs);
        }
    }
    Ok(IsolationSpec {
        server_addrs,
        gateway_addrs,
        resolvers: doc.resolvers.clone(),
        exceptions,
    })
}

/// Every host's addresses, and whether one of them resolved to nothing.
fn resolve_each(lookups: &NameLookups, hosts: &[&str]) -> (Vec<IpAddr>, bool) {
    let mut unresolved = false;
    let mut addrs = Vec::new();
    for found in lookups.resolve_all(hosts, RESOLVE_WAIT) {
        match found {
            Some(found) => addrs.extend(found),
            None => unresolved = true,
        }
    }
    addrs.sort();
    addrs.dedup();
    (addrs, unresolved)
}

fn union(a: &[IpAddr], b: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = a.iter().copied().chain(b).collect();
    all.sort();
    all.dedup();
    all
}

/// What [`reconcile`] did: the reports to send, in order, and where to run the
/// self-test when the table was (re)loaded or its addresses changed. The self-test
/// runs afterwards, on the agent's own connector ([`run_self_test`]), and its
/// outcome goes into the last report.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub reports: Vec<Report>,
    pub self_test: Option<Vec<SocketAddr>>,
}

/// Make the kernel match `doc` (blocking: runs `nft`): the reports to send, in
/// order, and whether a self-test is due.
pub fn reconcile(
    data_dir: &Path,
    isolator: &Isolator,
    doc: &IsolationDoc,
    home: &Home,
    log: &AgentLog,
) -> Reconciled {
    let only = |reports: Vec<Report>| Reconciled {
        reports,
        self_test: None,
    };
    let glass = BreakGlassUse::load(data_dir);
    let released_by_glass = glass
        .as_ref()
        .is_some_and(|g| g.generation == doc.generation && doc.desired == "isolated");
    let glass_report = glass
        .as_ref()
        .filter(|g| !g.reported)
        .map(|g| BreakGlassReport {
            id: g.id.clone(),
            generation: g.generation,
            at: g.at.clone(),
        });
    let report =
        |status: IsolationStatus, detail: Option<String>, self_test: Option<String>| Report {
            generation: doc.generation,
            status: status.as_str().to_string(),
            detail,
            self_test_error: self_test,
            break_glass: glass_report.clone(),
        };
    let current = |detail: Option<String>| match isolation::status(data_dir, isolator) {
        Ok(s) => report(s, detail, None),
        Err(e) => report(IsolationStatus::Pending, Some(e.to_string()), None),
    };
    let local = isolation::state::load(data_dir).ok().flatten();
    let local_spec = match local.as_ref().map(|s| &s.desired) {
        Some(Desired::Isolated { spec }) => Some(spec),
        _ => None,
    };
    if doc.desired != "isolated" || released_by_glass {
        let table_left = isolator.read_back().ok().flatten().is_some();
        if local_spec.is_some() || table_left {
            let why = if released_by_glass {
                "break-glass code".to_string()
            } else {
                doc.reason
                    .clone()
                    .unwrap_or_else(|| "released by the server".into())
            };
            return only(
                match isolation::release(data_dir, isolator, Some(why.clone())) {
                    Ok(status) => {
                        log.write(
                            Level::Info,
                            &format!("Isolation released (generation {}): {why}", doc.generation),
                        );
                        vec![report(status, None, None)]
                    }
                    Err(e) => {
                        log.write(Level::Warn, &format!("Isolation release failed: {e}"));
                        vec![current(Some(format!("release failed: {e}")))]
                    }
                },
            );
        }
        return only(vec![current(None)]);
    }
    let spec = match spec_for(doc, home, local_spec) {
        Ok(spec) => spec,
        Err(e) => {
            log.write(Level::Warn, &format!("Isolation exceptions refused: {e}"));
            return only(vec![current(Some(format!("exceptions refused: {e}")))]);
        }
    };
    let mut reports = Vec::new();
    if local_spec == Some(&spec) {
        match isolation::status(data_dir, isolator) {
            Ok(IsolationStatus::Drift) => {
                let reasons = match isolator.kernel_state(&spec) {
                    Ok(isolation::KernelState::Drift { reasons }) => reasons.join("; "),
                    Ok(isolation::KernelState::Absent) => "table missing".into(),
                    _ => String::new(),
                };
                log.write(
                    Level::Warn,
                    &format!("Isolation drift: {reasons}; re-applying"),
                );
                reports.push(report(IsolationStatus::Drift, Some(reasons), None));
            }
            Ok(status) => return only(vec![report(status, None, None)]),
            Err(e) => {
                return only(vec![report(
                    IsolationStatus::Pending,
                    Some(e.to_string()),
                    None,
                )])
            }
        }
    } else if let Some(old) = local_spec.filter(|old| old.same_rules(&spec)) {
        // Same rules, other addresses (a kept name now resolves elsewhere): when the
        // kernel holds exactly the old table, only its sets change.
        if matches!(
            isolator.kernel_state(old),
            Ok(isolation::KernelState::Isolated)
        ) {
            let (before, after) = (kept_text(old), kept_text(&spec));
            match isolation::refresh(data_dir, isolator, spec.clone()) {
                Ok(refreshed) => {
                    log.write(
                        Level::Info,
                        &format!(
                            "Isolation addresses refreshed (generation {}): kept {before} -> {after}; rules unchanged, {} flows cut",
                            doc.generation, refreshed.flows_cut
                        ),
                    );
                    let status = IsolationStatus::of(
                        Some(&Desired::Isolated { spec: spec.clone() }),
                        &refreshed.state,
                    );
                    return Reconciled {
                        reports: vec![report(status, refreshed.conntrack_error, None)],
                        self_test: Some(home.self_test_targets(&spec)),
                    };
                }
                Err(e) => log.write(
                    Level::Warn,
                    &format!("Isolation addresses could not be refreshed in place ({e}); reloading the table"),
                ),
            }
        }
    }
    let targets = home.self_test_targets(&spec);
    match isolation::isolate(data_dir, isolator, spec, doc.reason.clone()) {
        Ok(applied) => {
            log.write(
                Level::Warn,
                &format!(
                    "Device isolated (generation {}, {} ms to load, {} flows cut): {}",
                    doc.generation,
                    applied.load_time.as_millis(),
                    applied.flows_cut,
                    doc.reason.as_deref().unwrap_or("no reason given")
                ),
            );
            let status = IsolationStatus::of(
                isolation::state::load(data_dir)
                    .ok()
                    .flatten()
                    .map(|s| s.desired)
                    .as_ref(),
                &applied.state,
            );
            reports.push(report(status, applied.conntrack_error, None));
            Reconciled {
                reports,
                self_test: Some(targets),
            }
        }
        Err(e) => {
            log.write(Level::Warn, &format!("Isolation failed: {e}"));
            reports.push(current(Some(format!("apply failed: {e}"))));
            only(reports)
        }
    }
}

/// The kept (server and gateway) addresses of `spec`, for the log.
fn kept_text(spec: &IsolationSpec) -> String {
    let sets = isolation::KeepSets::from_spec(spec);
    let all: Vec<String> = sets
        .keep4
        .iter()
        .chain(&sets.keep6)
        .map(IpAddr::to_string)
        .collect();
    format!("[{}]", all.join(", "))
}

/// After the table was loaded or refreshed: can the agent still reach its server on
/// the path its own traffic takes? A failure is logged and goes into `report`;
/// isolation stays on whatever the outcome (never fail open).
pub async fn run_self_test(
    targets: &[SocketAddr],
    connector: &Connector,
    report: Option<&mut Report>,
    log: &AgentLog,
) {
    if let Err(err) = isolation::self_test(targets, connector).await {
        let err = err.to_string();
        log.write(
            Level::Warn,
            &format!("Isolation self-test failed (isolation stays on): {err}"),
        );
        if let Some(report) = report {
            report.self_test_error = Some(err);
        }
    }
}

/// Long-polls the server for the document and publishes each new one.
pub async fn run_fetch(
    tunnel: Arc<MtlsH2Tunnel>,
    data_dir: PathBuf,
    docs: watch::Sender<Option<IsolationDoc>>,
    mut stopped: watch::Receiver<bool>,
) {
    let path = format!("{ISOLATION_PATH}?wait={}", LONG_POLL.as_secs());
    loop {
        let known = docs
            .borrow()
            .as_ref()
            .map(|d| format!("\"{}\"", d.revision));
        let headers: Vec<(&str, &str)> = match &known {
            Some(etag) => vec![("if-none-match", etag.as_str())],
            None => Vec::new(),
        };
        let result = tokio::select! {
            r = tunnel.api(Method::GET, &path, &headers, None) => r,
            _ = stopped.changed() => return,
        };
        let pause = match result {
            Ok(r) if r.status == StatusCode::OK => {
                match serde_json::from_slice::<IsolationDoc>(&r.body) {
                    Ok(doc) => {
                        if let Err(err) = doc.persist(&data_dir) {
                            tracing::warn!(%err, "cannot persist isolation-server.json");
                        }
                        docs.send_replace(Some(doc));
                        None
                    }
                    Err(err) => {
                        tracing::warn!(%err, "invalid isolation document from the server");
                        Some(Duration::from_secs(5))
                    }
                }
            }
            Ok(r) if r.status == StatusCode::NOT_MODIFIED => None,
            // An older server without isolation: ask rarely.
            Ok(r) if r.status == StatusCode::NOT_FOUND => Some(Duration::from_secs(60)),
            Ok(_) => Some(Duration::from_secs(2)),
            // Unreachable: the tunnel backs off by itself; retry soon.
            Err(_) => Some(Duration::from_secs(1)),
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => return,
            }
        }
        if *stopped.borrow() {
            return;
        }
    }
}

/// Applies each new document at once and checks the kernel every
/// [`CHECK_INTERVAL`]; reports what changed.
pub async fn run_enforce(
    tunnel: Arc<MtlsH2Tunnel>,
    data_dir: PathBuf,
    home: Home,
    log: Arc<AgentLog>,
    mut docs: watch::Receiver<Option<IsolationDoc>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_sent: Option<Report> = None;
    loop {
        let doc = docs.borrow_and_update().clone();
        if let Some(doc) = doc {
            let (dir, h, l) = (data_dir.clone(), home.clone(), log.clone());
            let Reconciled {
                mut reports,
                self_test,
            } = tokio::task::spawn_blocking(move || {
                reconcile(&dir, &Isolator::default(), &doc, &h, &l)
            })
            .await
            .unwrap_or_default();
            if let Some(targets) = self_test {
                run_self_test(&targets, &home.connector, reports.last_mut(), &log).await;
            }
            for report in reports {
                if last_sent.as_ref() == Some(&report) {
                    continue;
                }
                if send_report(&tunnel, &report).await {
                    if report.break_glass.is_some() {
                        if let Some(mut used) = BreakGlassUse::load(&data_dir) {
                            used.reported = true;
                            let _ = used.save(&data_dir);
                            log.write(Level::Info, "Break-glass release reported to the server");
                        }
                    }
                    last_sent = Some(report);
                }
            }
        }
        tokio::select! {
            _ = docs.changed() => {}
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

async fn send_report(tunnel: &MtlsH2Tunnel, report: &Report) -> bool {
    let Ok(body) = serde_json::to_vec(report) else {
        return false;
    };
    matches!(
        tunnel
            .api(Method::POST, ISOLATION_PATH, &[], Some(Bytes::from(body)))
            .await,
        Ok(r) if r.status == StatusCode::OK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "rampart-isolation-sync-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_code_hash_matches_loosely_typed_codes_and_binds_the_device() {
        let h = code_hash("s1", "dev-a", "ABCDE-FGHJK");
        assert_eq!(h, code_hash("s1", "dev-a", "abcde fghjk"));
        assert_ne!(h, code_hash("s1", "dev-b", "ABCDE-FGHJK"));
        assert_ne!(h, code_hash("s2", "dev-a", "ABCDE-FGHJK"));
        assert_eq!(h.len(), 64);
    }

    #[test]
    fn home_comes_from_the_enrollment() {
        let e = Enrollment {
            device_id: "dev-a".into(),
            user: None,
            groups: vec![],
            gateway: "127.0.0.1:3129".into(),
            server: "http://127.0.0.1:8080".into(),
        };
        let home = Home::of(&e);
        assert_eq!(
            (home.server_host.as_str(), home.gateway_host.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert_eq!(
            home.self_test,
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:3129".parse().unwrap()
            ]
        );
        assert_eq!(split_host_port("[::1]:9", 1), ("::1".to_string(), 9));
        assert_eq!(split_host_port("host", 443), ("host".to_string(), 443));
        assert_eq!(home.connector.mark, None, "unmarked until the runtime says");
        let marked = home.with_connector(Connector {
            mark: Some(0x5241),
            timeout: Duration::from_secs(30),
        });
        assert_eq!(marked.connector.mark, Some(0x5241));
        assert_eq!(marked.connector.timeout, SELF_TEST_TIMEOUT);
    }

    fn doc(keep_hosts: &[&str]) -> IsolationDoc {
        IsolationDoc {
            revision: "r".into(),
            generation: 1,
            desired: "isolated".into(),
            reason: None,
            exceptions: String::new(),
            exceptions_file: None,
            keep_hosts: keep_hosts.iter().map(|h| h.to_string()).collect(),
            resolvers: vec![],
            break_glass: None,
        }
    }

    #[test]
    fn a_kept_name_that_stops_resolving_keeps_its_addresses() {
        let home = Home::of(&Enrollment {
            device_id: "dev-a".into(),
            user: None,
            groups: vec![],
            gateway: "192.0.2.2:3129".into(),
            server: "http://192.0.2.1:8080".into(),
        });
        let first = spec_for(&doc(&["198.51.100.7"]), &home, None).unwrap();
        assert_eq!(
            first.gateway_addrs,
            vec![
                "192.0.2.2".parse::<IpAddr>().unwrap(),
                "198.51.100.7".parse().unwrap()
            ]
        );
        // A literal that moved: the new address replaces the old one.
        let moved = spec_for(&doc(&["198.51.100.8"]), &home, Some(&first)).unwrap();
        assert_eq!(
            moved.gateway_addrs,
            vec![
                "192.0.2.2".parse::<IpAddr>().unwrap(),
                "198.51.100.8".parse().unwrap()
            ]
        );
        assert!(first.same_rules(&moved));
        assert_eq!(
            first.kept_addresses_dropped_by(&moved),
            vec!["198.51.100.7".parse::<IpAddr>().unwrap()]
        );
        // A name that resolves to nothing (an empty name fails without asking DNS):
        // the addresses in force stay.
        let failed = spec_for(&doc(&[""]), &home, Some(&first)).unwrap();
        assert_eq!(failed.gateway_addrs, first.gateway_addrs);
        assert_eq!(failed.server_addrs, first.server_addrs);
        // A lookup that hangs (DNS is cut while isolated) is abandoned after
        // RESOLVE_WAIT: the check goes on with the addresses in force.
        let mut stuck = home.clone();
        stuck.lookups = NameLookups::with(|host| {
            if host == "stuck.test" {
                std::thread::sleep(Duration::from_secs(10));
            }
            Vec::new()
        });
        let started = std::time::Instant::now();
        let waited = spec_for(&doc(&["stuck.test"]), &stuck, Some(&first)).unwrap();
        assert!(
            started.elapsed() < RESOLVE_WAIT + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(waited.gateway_addrs, first.gateway_addrs);
        // The self-test goes to the server's current addresses first.
        assert_eq!(
            home.self_test_targets(&first)[0],
            "192.0.2.1:8080".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn a_break_glass_code_releases_once_and_only_the_right_one() {
        let dir = TempDir::new("glass");
        let err = break_glass_release(dir.path(), "X", None).unwrap_err();
        assert!(matches!(err, BreakGlassError::NotEnrolled), "{err}");
        let e = Enrollment {
            device_id: "dev-a".into(),
            user: None,
            groups: vec![],
            gateway: "127.0.0.1:3129".into(),
            server: "http://127.0.0.1:8080".into(),
        };
        std::fs::write(
            Enrollment::state_path(dir.path()),
            serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();
        let err = break_glass_release(dir.path(), "X", None).unwrap_err();
        assert!(matches!(err, BreakGlassError::NoCode), "{err}");
        let doc = IsolationDoc {
            revision: "r".into(),
            generation: 3,
            desired: "isolated".into(),
            reason: None,
            exceptions: String::new(),
            exceptions_file: None,
            keep_hosts: vec![],
            resolvers: vec![],
            break_glass: Some(BreakGlassDoc {
                id: "c1".into(),
                salt: "s".into(),
                hash: code_hash("s", "dev-a", "GOOD-CODE"),
            }),
        };
        doc.persist(dir.path()).unwrap();
        let err = break_glass_release(dir.path(), "BAD-CODE", None).unwrap_err();
        assert!(matches!(err, BreakGlassError::Wrong), "{err}");
        assert!(
            BreakGlassUse::load(dir.path()).is_none(),
            "a wrong code records nothing"
        );
        // A used record for this code (as the right code writes before releasing):
        BreakGlassUse {
            id: "c1".into(),
            generation: 3,
            at: String::new(),
            reported: false,
        }
        .save(dir.path())
        .unwrap();
        let err = break_glass_release(dir.path(), "GOOD-CODE", None).unwrap_err();
        assert!(matches!(err, BreakGlassError::AlreadyUsed), "{err}");
    }
}
