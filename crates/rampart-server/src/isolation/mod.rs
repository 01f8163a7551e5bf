//! Isolation on the server: the desired state per device ([`state`]), the operator's
//! exceptions and the response rules ([`config`], [`response`]), and the service the
//! admin API, the agents' control plane and the response rules share.
//!
//! Delivery: agents long-poll `GET /api/v1/agent/isolation` over their tunnel; every
//! change wakes the waiting requests at once ([`IsolationService::changed`]), so the
//! time from a command (or a matching event) to the agent applying it is the agent's
//! `nft` load and self-test plus one round trip, not a polling interval.

pub mod config;
pub mod response;
pub mod state;

use std::sync::{Arc, RwLock};

use rampart_events::{device_event, DeviceActivity, EventSender};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::{DeviceError, DeviceRegistry};
pub use config::{Compiled, IsolationConfig, ResponseRuleConfig};
pub use state::{AgentReport, DeviceIsolation, IsolationStore, Request, Wanted};

/// Why an isolation call failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolationServiceError {
    #[error("no device {0:?}")]
    NoDevice(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What `GET /api/v1/devices/{id}/isolation` answers (and `device status` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IsolationView {
    pub device: String,
    /// `isolated` or `released`: what was asked.
    pub desired: String,
    /// What the agent last reported, `unknown` before its first report.
    pub actual: String,
    /// `pending`, `isolated`, `release-pending`, `released` or `drift`.
    pub state: String,
    /// True until the agent confirmed the current request.
    pub pending: bool,
    pub generation: u64,
    pub reason: Option<String>,
    pub by: String,
    pub since: String,
    pub trigger_event: Option<String>,
    pub confirmed_at: Option<String>,
    /// Milliseconds from the request to the agent's confirmation.
    pub confirm_latency_ms: Option<i64>,
    pub reported_at: Option<String>,
    pub detail: Option<String>,
    pub self_test_error: Option<String>,
    /// A break-glass code is issued and unused.
    pub break_glass_code: bool,
}

impl IsolationView {
    pub fn of(device: &str, r: &DeviceIsolation) -> Self {
        IsolationView {
            device: device.to_string(),
            desired: r.desired.as_str().to_string(),
            actual: r
                .actual
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |a| a.status.clone()),
            state: r.state().to_string(),
            pending: !r.confirmed() && r.generation > 0,
            generation: r.generation,
            reason: r.reason.clone(),
            by: r.by.clone(),
            since: r.since.clone(),
            trigger_event: r.trigger_event.clone(),
            confirmed_at: r.confirmed_at.clone(),
            confirm_latency_ms: r.confirmed_ms.map(|c| c - r.since_ms),
            reported_at: r.actual.as_ref().map(|a| a.at.clone()),
            detail: r.actual.as_ref().and_then(|a| a.detail.clone()),
            self_test_error: r.actual.as_ref().and_then(|a| a.self_test_error.clone()),
            break_glass_code: r.break_glass.as_ref().is_some_and(|g| g.used_at.is_none()),
        }
    }
}

/// The break-glass part of the agent's document: enough to verify a code, not to
/// make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassDoc {
    pub id: String,
    pub salt: String,
    pub hash: String,
}

/// The body of `GET /api/v1/agent/isolation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIsolationDoc {
    pub revision: String,
    pub generation: u64,
    /// `isolated` or `released`.
    pub desired: String,
    pub reason: Option<String>,
    /// The pf-style exception text for this device and the file it came from.
    pub exceptions: String,
    pub exceptions_file: Option<String>,
    /// Host names or addresses to keep reachable besides the agent's own server and
    /// gateway (the tunnel's advertised host, `[isolation] keep`).
    pub keep_hosts: Vec<String>,
    pub resolvers: Vec<std::net::IpAddr>,
    pub break_glass: Option<BreakGlassDoc>,
}

/// `POST /api/v1/agent/isolation`: the agent's report.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AgentReportBody {
    pub generation: u64,
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub self_test_error: Option<String>,
    /// A break-glass code was used on the device.
    #[serde(default)]
    pub break_glass: Option<BreakGlassUse>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BreakGlassUse {
    pub id: String,
    pub generation: u64,
    /// RFC 3339 on the device's clock.
    pub at: String,
}

/// Shared by the admin API, the agent API and the response rules.
pub struct IsolationService {
    store: IsolationStore,
    registry: Arc<DeviceRegistry>,
    events: Option<EventSender>,
    compiled: RwLock<Arc<Compiled>>,
    /// The tunnel's advertised host: kept open on every isolated device.
    gateway_host: String,
    /// Bumped on every change; long-polling agents wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    pub(crate) limiter: response::RateLimiter,
}

impl IsolationService {
    pub fn new(
        data_dir: &std::path::Path,
        registry: Arc<DeviceRegistry>,
        events: Option<EventSender>,
        compiled: Compiled,
        gateway: &str,
    ) -> Arc<Self> {
        let gateway_host = gateway
            .rsplit_once(':')
            .map_or(gateway, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Arc::new(IsolationService {
            store: IsolationStore::new(data_dir),
            registry,
            events,
            compiled: RwLock::new(Arc::new(compiled)),
            gateway_host,
            changed: tokio::sync::watch::Sender::new(0),
            limiter: response::RateLimiter::default(),
        })
    }

    pub fn compiled(&self) -> Arc<Compiled> {
        self.compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in a new (already checked) configuration; agents see new exceptions at
    /// once.
    pub fn replace(&self, compiled: Compiled) {
        *self.compiled.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        self.bump();
    }

    /// A receiver that changes whenever any device's document may have changed.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The device's inventory record (groups, hostname), `None` for an unknown device.
    fn device(&self, device: &str) -> Result<Option<crate::devices::DeviceRecord>, DeviceError> {
        Ok(self
            .registry
            .inventory()
            .list()?
            .into_iter()
            .find(|d| d.id == device))
    }

    /// Isolate (`Wanted::Isolated`) or release a device; idempotent.
    pub fn set(
        &self,
        device: &str,
        wanted: Wanted,
        request: Request,
    ) -> Result<state::Change, IsolationServiceError> {
        let Some(record) = self.device(device)? else {
            return Err(IsolationServiceError::NoDevice(device.to_string()));
        };
        let hostname = record.hostname;
        let change = self.store.set(device, wanted, request)?;
        if change.changed {
            self.bump();
            self.record(device, &hostname, &change.record);
        }
        Ok(change)
    }

    /// The device event of a change: who (actor), why (message), the rule (policy).
    fn record(&self, device: &str, hostname: &str, r: &DeviceIsolation) {
        let activity = match r.desired {
            Wanted::Isolated => DeviceActivity::Isolated,
            Wanted::Released => DeviceActivity::Released,
        };
        tracing::info!(device, state = r.desired.as_str(), by = %r.by, reason = ?r.reason,
            trigger = ?r.trigger_event, generation = r.generation, "device isolation requested");
        let Some(events) = &self.events else {
            return;
        };
        let mut message = format!("{} by {}", r.desired.as_str(), r.by);
        if let Some(reason) = &r.reason {
            message.push_str(&format!(": {reason}"));
        }
        if let Some(trigger) = &r.trigger_event {
            message.push_str(&format!(" (event {trigger})"));
        }
        let mut event = device_event(
            activity,
            device,
            Some(hostname),
            Some(&r.by),
            Some(&message),
            rampart_events::now_ms(),
        );
        if let Some(rule) = r.by.strip_prefix("response:") {
            event.policy = Some(rampart_events::event::Policy {
                uid: None,
                name: Some(rule.to_string()),
                version: None,
            });
        }
        events.send(event);
    }

    fn record_note(&self, device: &str, message: String, rule: Option<&str>) {
        let Some(events) = &self.events else {
            return;
        };
        let hostname = self.device(device).ok().flatten().map(|d| d.hostname);
        let mut event = device_event(
            DeviceActivity::ConfigApplied,
            device,
            hostname.as_deref(),
            None,
            Some(&message),
            rampart_events::now_ms(),
        );
        if let Some(rule) = rule {
            event.policy = Some(rampart_events::event::Policy {
                uid: None,
                name: Some(rule.to_string()),
                version: None,
            });
        }
        events.send(event);
    }

    pub fn view(&self, device: &str) -> Result<IsolationView, IsolationServiceError> {
        if self.device(device)?.is_none() {
            return Err(IsolationServiceError::NoDevice(device.to_string()));
        }
        let record = self.store.get(device)?;
        Ok(match record {
            Some(r) => IsolationView::of(device, &r),
            None => IsolationView::of(
                device,
                &state::DeviceIsolation {
                    desired: Wanted::Released,
                    generation: 0,
                    reason: None,
                    by: "-".into(),
                    since: String::new(),
                    since_ms: 0,
                    trigger_event: None,
                    actual: None,
                    confirmed_at: None,
                    confirmed_ms: None,
                    break_glass: None,
                },
            ),
        })
    }

    /// Every device's isolation state (for `device list`).
    pub fn states(
        &self,
    ) -> Result<std::collections::BTreeMap<String, DeviceIsolation>, DeviceError> {
        self.store.all()
    }

    /// A new one-time break-glass code for `device` (shown once).
    pub fn issue_code(&self, device: &str) -> Result<String, IsolationServiceError> {
        if self.device(device)?.is_none() {
            return Err(IsolationServiceError::NoDevice(device.to_string()));
        }
        let code = self.store.issue_code(device)?;
        self.bump();
        tracing::info!(device, "break-glass code issued");
        self.record_note(device, "break-glass release code issued".into(), None);
        Ok(code)
    }

    /// What the agent of `device` (with `groups`) should enforce now.
    pub fn agent_doc(&self, device: &str, groups: &[String]) -> AgentIsolationDoc {
        let record = self.store.get(device).ok().flatten();
        let compiled = self.compiled();
        let file = compiled.exceptions_for(groups);
        let mut keep_hosts = vec![self.gateway_host.clone()];
        keep_hosts.extend(compiled.keep.iter().cloned());
        let mut doc = AgentIsolationDoc {
            revision: String::new(),
            generation: record.as_ref().map_or(0, |r| r.generation),
            desired: record
                .as_ref()
                .map_or(Wanted::Released, |r| r.desired)
                .as_str()
                .to_string(),
            reason: record.as_ref().and_then(|r| r.reason.clone()),
            exceptions: file.map(|f| f.text.clone()).unwrap_or_default(),
            exceptions_file: file.map(|f| f.path.display().to_string()),
            keep_hosts,
            resolvers: compiled.resolvers.clone(),
            break_glass: record
                .as_ref()
                .and_then(|r| r.break_glass.as_ref())
                .filter(|g| g.used_at.is_none())
                .map(|g| BreakGlassDoc {
                    id: g.id.clone(),
                    salt: g.salt.clone(),
                    hash: g.hash.clone(),
                }),
        };
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        doc.revision = hex::encode(&Sha256::digest(&bytes)[..8]);
        doc
    }

    /// The agent's report: the actual state, and a used break-glass code.
    pub fn agent_report(
        &self,
        device: &str,
        body: AgentReportBody,
    ) -> Result<(), IsolationServiceError> {
        if let Some(used) = &body.break_glass {
            tracing::warn!(device, code = %used.id, at = %used.at, "break-glass code used on the device");
            self.record_note(
                device,
                format!(
                    "break-glass code {} used on the device at {}",
                    used.id, used.at
                ),
                None,
            );
            if let Some(change) = self.store.code_used(device, &used.id, used.generation)? {
                if change.changed {
                    self.bump();
                    let hostname = self.device(device)?.map(|d| d.hostname).unwrap_or_default();
                    self.record(device, &hostname, &change.record);
                }
            }
        }
        let report = AgentReport {
            generation: body.generation,
            status: body
                .status
                .chars()
                .filter(|c| !c.is_control())
                .take(32)
                .collect(),
            detail: body.detail.map(|d| d.chars().take(2048).collect()),
            self_test_error: body.self_test_error.map(|d| d.chars().take(2048).collect()),
            at: crate::devices::rfc3339(crate::devices::now_unix()),
        };
        tracing::info!(device, generation = report.generation, status = %report.status, "isolation report");
        if let Some((record, first)) = self.store.report(device, report)? {
            if first {
                let latency = record.confirmed_ms.map(|c| c - record.since_ms);
                tracing::info!(device, state = record.state(), generation = record.generation,
                    latency_ms = ?latency, "the agent confirmed the isolation state");
                self.record_note(
                    device,
                    format!(
                        "agent confirmed {} (generation {}, {} ms after the request)",
                        record.state(),
                        record.generation,
                        latency.unwrap_or_default()
                    ),
                    None,
                );
            }
        }
        Ok(())
    }
}
