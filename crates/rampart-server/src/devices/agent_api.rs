//! The agents' control plane, answered on the gateway's agent tunnel (mTLS, HTTP/2):
//! the identity is always the device certificate's, never anything in a request.
//!
//! - `GET /api/v1/agent/config`: the policy's `[[steering]]` rules that apply to the
//!   device's user, groups and device, in the agent's exception format, plus the stage
//!   default and the `[agent]` fail mode of the server config. `ETag` is the revision
//!   (a hash of the document, which includes the policy revision); `If-None-Match`
//!   with the current revision answers `304`.
//! - `POST /api/v1/agent/events`: a batch of the agent's own decisions (bypass,
//!   tunnel-bypass, block with `log = true`), stored as Network Activity events with
//!   `bypass = client`.
//! - `GET /api/v1/agent/isolation[?wait=SECONDS]`: the device's desired isolation
//!   state (`crate::isolation`); with `If-None-Match` and `wait`, answered as soon as
//!   it changes (long poll), `304` when it did not within `wait`.
//! - `POST /api/v1/agent/isolation`: the agent's report of what the kernel holds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use rampart_events::{Bypass, BypassSite, EventSender, FlowSummary, TlsDecision, Verdict};
use rampart_gateway::tunnel::{AgentApi, DeviceIdentity};
use rampart_gateway::GatewayHandle;
use rampart_policy::{Identity, SteeringExport};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CONFIG_PATH: &str = "/api/v1/agent/config";
pub const EVENTS_PATH: &str = "/api/v1/agent/events";
pub const ISOLATION_PATH: &str = "/api/v1/agent/isolation";
/// Longest long poll of the isolation document.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest upload batch accepted; the agent sends at most this many per request.
pub const MAX_BATCH: usize = 1000;
/// Longest text kept from an uploaded field (process paths, host names).
const MAX_TEXT: usize = 1024;

/// What the agent does when the gateway is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentFailMode {
    Open,
    Closed,
}

/// `[agent]` in rampart.toml: what enrolled agents receive besides the steering rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentDistributionConfig {
    /// Overrides the agents' local `gateway.fail_mode` when set.
    pub fail_mode: Option<AgentFailMode>,
    /// Hosts reachable directly in closed mode; overrides the local list when set.
    pub fail_closed_allow: Option<Vec<String>>,
    /// Steering rules whose destinations have more host patterns than this are not
    /// sent to agents (listed as skipped with the reason).
    pub max_hosts: usize,
}

impl Default for AgentDistributionConfig {
    fn default() -> Self {
        AgentDistributionConfig {
            fail_mode: None,
            fail_closed_allow: None,
            max_hosts: 1000,
        }
    }
}

/// One exception as the agent reads it (its `[[steering.exceptions]]` shape plus the id).
#[derive(Debug, Clone, Serialize)]
struct ExceptionDoc {
    id: String,
    name: String,
    processes: Vec<String>,
    paths: Vec<String>,
    hosts: Vec<String>,
    ports: Vec<u16>,
    action: String,
    log: bool,
}

#[derive(Debug, Clone, Serialize)]
struct SkippedDoc {
    id: String,
    name: String,
    reason: String,
}

/// The body of `GET /api/v1/agent/config`.
#[derive(Debug, Clone, Serialize)]
struct AgentConfigDoc {
    revision: String,
    policy_revision: String,
    default: String,
    default_log: bool,
    exceptions: Vec<ExceptionDoc>,
    skipped: Vec<SkippedDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_mode: Option<AgentFailMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_closed_allow: Option<Vec<String>>,
}

impl AgentConfigDoc {
    fn new(export: SteeringExport, policy_revision: &str, dist: &AgentDistributionConfig) -> Self {
        let mut doc = AgentConfigDoc {
            revision: String::new(),
            policy_revision: policy_revision.to_string(),
            default: export.default.to_string(),
            default_log: export.default_log,
            exceptions: export
                .rules
                .into_iter()
                .map(|r| ExceptionDoc {
                    id: r.id,
                    name: r.name,
                    processes: r.processes,
                    paths: r.paths,
                    hosts: r.hosts,
                    ports: r.ports,
                    action: r.action.to_string(),
                    log: r.log,
                })
                .collect(),
            skipped: export
                .skipped
                .into_iter()
                .map(|s| SkippedDoc {
                    id: s.id,
                    name: s.name,
                    reason: s.reason,
                })
                .collect(),
            fail_mode: dist.fail_mode,
            fail_closed_allow: dist.fail_closed_allow.clone(),
        };
        // The revision covers everything the agent applies, so an unrelated policy
        // edit still changes it (the policy revision is part of the document).
        let unrevised = serde_json::to_vec(&doc).unwrap_or_default();
        doc.revision = hex::encode(&Sha256::digest(&unrevised)[..8]);
        doc
    }
}

/// A rendered config for one identity under one policy revision.
#[derive(Clone)]
struct Rendered {
    revision: String,
    body: Bytes,
}

type CacheKey = (Option<String>, Vec<String>, String);

/// Answers the agents' control-plane requests.
pub struct AgentApiService {
    gateway: GatewayHandle,
    events: Option<EventSender>,
    dist: AgentDistributionConfig,
    isolation: Option<Arc<crate::isolation::IsolationService>>,
    /// Renders of the current policy revision, per identity: exports walk the domain
    /// index, so they are computed once per revision and identity.
    cache: Mutex<(String, HashMap<CacheKey, Rendered>)>,
}

impl AgentApiService {
    pub fn new(
        gateway: GatewayHandle,
        events: Option<EventSender>,
        dist: AgentDistributionConfig,
        isolation: Option<Arc<crate::isolation::IsolationService>>,
    ) -> Arc<Self> {
        Arc::new(AgentApiService {
            gateway,
            events,
            dist,
            isolation,
            cache: Mutex::new((String::new(), HashMap::new())),
        })
    }

    fn render(&self, identity: &DeviceIdentity) -> Rendered {
        let policy = self.gateway.policy();
        let revision = policy.revision().to_string();
        let key: CacheKey = (
            identity.user.clone(),
            identity.groups.clone(),
            identity.device.clone(),
        );
        {
            let mut cache = lock(&self.cache);
            if cache.0 != revision {
                *cache = (revision.clone(), HashMap::new());
            }
            if let Some(hit) = cache.1.get(&key) {
                return hit.clone();
            }
        }
        let who = Identity {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            device: Some(identity.device.clone()),
            source_ip: None,
        };
        let doc = AgentConfigDoc::new(
            policy.steering_export(&who, self.dist.max_hosts),
            &revision,
            &self.dist,
        );
        let rendered = Rendered {
            revision: doc.revision.clone(),
            body: Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default()),
        };
        let mut cache = lock(&self.cache);
        if cache.0 == revision {
            cache.1.insert(key, rendered.clone());
        }
        rendered
    }

    fn config(&self, identity: &DeviceIdentity, request: &Request<Bytes>) -> Response<Bytes> {
        let rendered = self.render(identity);
        let etag = format!("\"{}\"", rendered.revision);
        let unchanged = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag)
            });
        let builder = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, "no-cache");
        let response = if unchanged {
            builder.status(StatusCode::NOT_MODIFIED).body(Bytes::new())
        } else {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(rendered.body)
        };
        response.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }

    fn upload(&self, identity: &DeviceIdentity, body: &[u8]) -> Response<Bytes> {
        let batch: UploadBatch = match serde_json::from_slice(body) {
            Ok(batch) => batch,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid event batch: {e}"),
                )
            }
        };
        if batch.events.len() > MAX_BATCH {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("at most {MAX_BATCH} events per batch"),
            );
        }
        let Some(events) = &self.events else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no event store");
        };
        let accepted = batch.events.len();
        for decision in batch.events {
            let mut event = decision.to_summary(identity).network_event();
            if let Some(id) = &decision.id {
                event.metadata.uid = upload_event_id(&identity.device, id, event.time);
            }
            events.send(event);
        }
        tracing::debug!(device = %identity.device, accepted, "agent decisions stored");
        let body = serde_json::json!({ "accepted": accepted }).to_string();
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

impl AgentApi for AgentApiService {
    fn handle(
        &self,
        identity: Arc<DeviceIdentity>,
        request: Request<Bytes>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Bytes>> + Send>> {
        if request.uri().path() == ISOLATION_PATH {
            return match &self.isolation {
                Some(service) => Box::pin(isolation_call(service.clone(), identity, request)),
                None => Box::pin(std::future::ready(plain(
                    StatusCode::NOT_FOUND,
                    "isolation is not served here",
                ))),
            };
        }
        let response = match (request.method(), request.uri().path()) {
            (&Method::GET, CONFIG_PATH) => self.config(&identity, &request),
            (&Method::POST, EVENTS_PATH) => self.upload(&identity, request.body()),
            (_, CONFIG_PATH | EVENTS_PATH) => plain(StatusCode::METHOD_NOT_ALLOWED, "method"),
            (_, path) if path.starts_with("/api/v1/agent/") => {
                plain(StatusCode::NOT_FOUND, "no such agent API")
            }
            // Outside the agent API the tunnel only carries CONNECT.
            _ => plain(StatusCode::METHOD_NOT_ALLOWED, "the tunnel carries CONNECT"),
        };
        Box::pin(std::future::ready(response))
    }
}

/// `GET` (long poll) or `POST` (report) of `/api/v1/agent/isolation`. The inventory
/// and state files are read on a blocking thread.
async fn isolation_call(
    service: Arc<crate::isolation::IsolationService>,
    identity: Arc<DeviceIdentity>,
    request: Request<Bytes>,
) -> Response<Bytes> {
    let json = |status: StatusCode, body: Vec<u8>, etag: Option<String>| {
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache");
        if let Some(etag) = etag {
            b = b.header(header::ETAG, etag);
        }
        b.body(Bytes::from(body))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    };
    match *request.method() {
        Method::POST => {
            let body: crate::isolation::AgentReportBody =
                match serde_json::from_slice(request.body()) {
                    Ok(b) => b,
                    Err(e) => {
                        return plain(StatusCode::BAD_REQUEST, &format!("invalid report: {e}"))
                    }
                };
            let device = identity.device.clone();
            let result =
                tokio::task::spawn_blocking(move || service.agent_report(&device, body)).await;
            match result {
                Ok(Ok(())) => json(StatusCode::OK, b"{\"ok\":true}".to_vec(), None),
                Ok(Err(e)) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Method::GET => {
            let known = request
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.trim()
                        .trim_start_matches("W/")
                        .trim_matches('"')
                        .to_string()
                });
            let wait = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(std::time::Duration::ZERO, std::time::Duration::from_secs)
                .min(MAX_WAIT);
            let deadline = tokio::time::Instant::now() + wait;
            // Subscribed before the first look, so a change in between is not missed.
            let mut changed = service.changed();
            loop {
                let (svc, id) = (service.clone(), identity.clone());
                let doc = match tokio::task::spawn_blocking(move || {
                    svc.agent_doc(&id.device, &id.groups)
                })
                .await
                {
                    Ok(doc) => doc,
                    Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                };
                let etag = format!("\"{}\"", doc.revision);
                if known.as_deref() != Some(doc.revision.as_str()) {
                    let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                    return json(StatusCode::OK, body, Some(etag));
                }
                match tokio::time::timeout_at(deadline, changed.changed()).await {
                    Ok(Ok(())) => continue,
                    // Timed out, or the service is gone: nothing new.
                    _ => {
                        return Response::builder()
                            .status(StatusCode::NOT_MODIFIED)
                            .header(header::ETAG, etag)
                            .body(Bytes::new())
                            .unwrap_or_else(|_| {
                                plain(StatusCode::INTERNAL_SERVER_ERROR, "response")
                            })
                    }
                }
            }
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method"),
    }
}

/// `POST /api/v1/agent/events` body. Device and user are not part of it on purpose:
/// they come from the certificate.
#[derive(Debug, Deserialize)]
struct UploadBatch {
    events: Vec<ClientDecision>,
}

#[derive(Debug, Deserialize)]
struct ClientDecision {
    /// The agent's id for this decision (random); absent from agents that predate it.
    #[serde(default)]
    id: Option<String>,
    /// Milliseconds since the epoch, on the agent's clock.
    time_ms: i64,
    /// `bypass`, `tunnel-bypass` or `block`.
    action: String,
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    dst_ip: Option<IpAddr>,
    process: ClientProcess,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    policy_revision: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClientProcess {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
}

/// The stored event id of an uploaded decision: time-ordered like every event id
/// (UUIDv7 layout, the decision's millisecond in front) with the remaining bits from
/// SHA-256 of the device and the agent's decision id. The store ignores an id it
/// already holds, so a retried batch is stored once; mixing in the device keeps one
/// device from colliding with another's decisions.
fn upload_event_id(device: &str, decision_id: &str, time_ms: i64) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(device.as_bytes())
        .chain_update([0u8])
        .chain_update(decision_id.as_bytes())
        .finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let ms = u64::try_from(time_ms).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

impl ClientDecision {
    fn to_summary(&self, identity: &DeviceIdentity) -> FlowSummary {
        let now = rampart_events::now_ms();
        // The agent's clock is trusted within reason: a spooled decision may be old,
        // never from the future.
        let time = self.time_ms.clamp(0, now);
        let mut s = FlowSummary::new(rampart_events::new_flow_id(), time);
        s.reporter = "agent".into();
        s.user = identity.user.clone();
        s.groups = identity.groups.clone();
        s.device_uid = Some(identity.device.clone());
        s.process_name = Some(clip(&self.process.name));
        s.process_path = self.process.path.as_deref().map(clip);
        s.process_pid = self.process.pid;
        s.host = Some(clip(&self.host));
        s.dst = match (self.dst_ip, self.port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        };
        s.stage = Some("steering".into());
        s.rule_name = self.rule.as_deref().map(clip);
        s.policy_revision = self.policy_revision.as_deref().map(clip);
        let action = clip(&self.action);
        s.verdict = if action == "block" {
            Verdict::Block
        } else {
            Verdict::Allow
        };
        if action != "block" {
            s.tls_decision = Some(TlsDecision::Bypass);
        }
        s.bypass = Some(Bypass {
            at: BypassSite::Client,
            reason: format!(
                "{action}: {}",
                self.rule.as_deref().map(clip).unwrap_or_default()
            ),
        });
        s
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(format!("{message}\n")));
    *response.status_mut() = status;
    response
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploaded_decision_takes_identity_from_the_certificate() {
        let batch: UploadBatch = serde_json::from_str(
            r#"{"events":[{"time_ms":1,"action":"bypass","host":"pypi.org","port":443,
               "dst_ip":"127.0.0.1","process":{"name":"python3","pid":7},
               "rule":"py","device":"forged","user":"mallory"}]}"#,
        )
        .expect("valid batch");
        let id = DeviceIdentity {
            device: "dev-1".into(),
            user: Some("alice".into()),
            groups: vec!["eng".into()],
        };
        let event = batch.events[0].to_summary(&id).network_event();
        assert_eq!(event.device_name(), Some("dev-1"));
        assert_eq!(event.user_name(), Some("alice"));
        assert_eq!(event.process_name(), Some("python3"));
        assert_eq!(
            event.unmapped.bypass.as_ref().map(|b| b.at),
            Some(BypassSite::Client)
        );
        assert_eq!(event.metadata.log_provider.as_deref(), Some("agent"));
    }

    #[test]
    fn a_resent_decision_keeps_its_event_id_and_devices_never_share_one() {
        let time = 1_790_000_000_123;
        let first = upload_event_id("dev-1", "abc", time);
        assert_eq!(first, upload_event_id("dev-1", "abc", time));
        assert_ne!(first, upload_event_id("dev-2", "abc", time));
        assert_ne!(first, upload_event_id("dev-1", "abd", time));
        assert_eq!(first.get_version_num(), 7);
        let (secs, _) = first.get_timestamp().expect("v7 timestamp").to_unix();
        assert_eq!(secs, time as u64 / 1000);
    }
}
