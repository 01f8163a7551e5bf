//! Typed events based on OCSF 1.3: HTTP Activity (4002), Network Activity (4001),
//! Detection Finding (2004), Device Config State (5002) for device/agent events and
//! API Activity (6003) for the audit trail of console actions.
//!
//! One schema serves the store, the API and every sink: an [`Event`] serialises to
//! an OCSF document whose Rampart-specific attributes (TLS decision, bypass site,
//! category, app, matched objects) sit in `unmapped`, as OCSF prescribes for
//! attributes the schema has no place for.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The OCSF schema version the documents follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// The kinds of event Rampart records; the query field `type` takes these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// One HTTP request/response (OCSF HTTP Activity, 4002).
    Http,
    /// One connection or tunnel, including spliced and bypassed flows (OCSF Network Activity, 4001).
    Network,
    /// An alert (OCSF Detection Finding, 2004).
    Alert,
    /// Device/agent state: enrolment, isolation, agent start/stop (OCSF Device Config State, 5002).
    Device,
    /// An administrator's action or a login in the console (OCSF API Activity, 6003).
    Audit,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Http,
        EventType::Network,
        EventType::Alert,
        EventType::Device,
        EventType::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Http => "http",
            EventType::Network => "network",
            EventType::Alert => "alert",
            EventType::Device => "device",
            EventType::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    pub fn class_uid(self) -> u32 {
        match self {
            EventType::Http => 4002,
            EventType::Network => 4001,
            EventType::Alert => 2004,
            EventType::Device => 5002,
            EventType::Audit => 6003,
        }
    }

    pub fn from_class_uid(uid: u32) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.class_uid() == uid)
    }

    pub fn class_name(self) -> &'static str {
        match self {
            EventType::Http => "HTTP Activity",
            EventType::Network => "Network Activity",
            EventType::Alert => "Detection Finding",
            EventType::Device => "Device Config State",
            EventType::Audit => "API Activity",
        }
    }

    fn category(self) -> (u32, &'static str) {
        match self {
            EventType::Http | EventType::Network => (4, "Network Activity"),
            EventType::Alert => (2, "Findings"),
            EventType::Device => (5, "Discovery"),
            EventType::Audit => (6, "Application Activity"),
        }
    }
}

/// The policy verdict, mapped onto OCSF `action_id` and `disposition_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Block,
    /// Allowed, with an alert raised.
    Alert,
    /// The user had to pass a challenge (e.g. re-authenticate) first.
    Challenge,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Allow,
        Verdict::Block,
        Verdict::Alert,
        Verdict::Challenge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Block => "block",
            Verdict::Alert => "alert",
            Verdict::Challenge => "challenge",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }

    /// OCSF `action_id`: 1 Allowed, 2 Denied.
    pub fn action_id(self) -> u8 {
        match self {
            Verdict::Allow | Verdict::Alert => 1,
            Verdict::Block | Verdict::Challenge => 2,
        }
    }

    pub fn action(self) -> &'static str {
        if self.action_id() == 1 {
            "Allowed"
        } else {
            "Denied"
        }
    }

    /// OCSF `disposition_id`: 1 Allowed, 2 Blocked, 19 Alert, 23 Challenge.
    pub fn disposition_id(self) -> u8 {
        match self {
            Verdict::Allow => 1,
            Verdict::Block => 2,
            Verdict::Alert => 19,
            Verdict::Challenge => 23,
        }
    }

    pub fn disposition(self) -> &'static str {
        match self {
            Verdict::Allow => "Allowed",
            Verdict::Block => "Blocked",
            Verdict::Alert => "Alert",
            Verdict::Challenge => "Challenge",
        }
    }

    pub fn from_disposition_id(id: u8) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.disposition_id() == id)
    }
}

/// OCSF `severity_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn id(self) -> u8 {
        match self {
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
    }

    pub fn from_id(id: u8) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.id() == id)
    }
}

/// What the gateway did with TLS on this flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsDecision {
    /// Intercepted: our leaf certificate, inspected in clear.
    Decrypt,
    /// A decryption rule said `do-not-decrypt`: spliced, host-level policy only.
    DoNotDecrypt,
    /// Not decrypted because the flow was bypassed (see `bypass`).
    Bypass,
    /// Plain HTTP, no TLS involved.
    Plaintext,
    /// The client refused our certificate (often a pinned app) or the origin failed verification.
    Failed,
    /// The ClientHello's SNI named another site than the CONNECT target
    /// (domain fronting): blocked, or let through by `tls.fronting = "alert"`
    /// or an exception.
    Fronting,
}

impl TlsDecision {
    pub const ALL: [TlsDecision; 6] = [
        TlsDecision::Decrypt,
        TlsDecision::DoNotDecrypt,
        TlsDecision::Bypass,
        TlsDecision::Plaintext,
        TlsDecision::Failed,
        TlsDecision::Fronting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsDecision::Decrypt => "decrypt",
            TlsDecision::DoNotDecrypt => "do-not-decrypt",
            TlsDecision::Bypass => "bypass",
            TlsDecision::Plaintext => "plaintext",
            TlsDecision::Failed => "failed",
            TlsDecision::Fronting => "fronting",
        }
    }
}

/// Where a bypass happened: on the endpoint (direct to origin) or at the gateway (tunnelled, not decrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BypassSite {
    Client,
    Gateway,
}

impl BypassSite {
    pub fn as_str(self) -> &'static str {
        match self {
            BypassSite::Client => "client",
            BypassSite::Gateway => "gateway",
        }
    }
}

/// A bypass: where it happened and why (the exception or rule that caused it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bypass {
    pub at: BypassSite,
    pub reason: String,
}

/// A device/agent activity recorded as a Device Config State event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceActivity {
    Enrolled,
    AgentStarted,
    AgentStopped,
    ConfigApplied,
    Isolated,
    Released,
}

impl DeviceActivity {
    pub fn name(self) -> &'static str {
        match self {
            DeviceActivity::Enrolled => "Enrolled",
            DeviceActivity::AgentStarted => "Agent Started",
            DeviceActivity::AgentStopped => "Agent Stopped",
            DeviceActivity::ConfigApplied => "Config Applied",
            DeviceActivity::Isolated => "Isolated",
            DeviceActivity::Released => "Released",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub vendor_name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The event id: a UUIDv7, so ids sort by time.
    pub uid: Uuid,
    /// The flow id shared by every event of one connection (and the alerts it raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_uid: Option<Uuid>,
    pub version: String,
    pub product: Product,
    /// Which component recorded the event: `gateway`, `agent` or `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_provider: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub protocol_name: String,
    /// OCSF direction: 2 Outbound (every proxied flow leaves the network).
    pub direction_id: u8,
    pub direction: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Url {
    pub url_string: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Bytes each way. OCSF: `bytes_out` source → destination, `bytes_in` destination → source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes: u64,
}

/// The rule that decided, inside the policy revision it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rule id (stable across edits when the policy names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Rule name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Policy revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingInfo {
    /// The alert id (`rampart events timeline --alert ID`).
    pub uid: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// The event that raised the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_event_uid: Option<Uuid>,
}

/// Rampart attributes OCSF has no slot for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmapped {
    /// Policy stage that decided: `steering`, `connection`, `request`, `response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_decision: Option<TlsDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    /// The policy objects that matched (lists, categories, apps, identities), as `kind:name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// `direct`, `direct@SOURCE-IP` or `GROUP/PROXY:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// Short reason for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_activity: Option<DeviceActivity>,
    /// The fleet gateway that recorded the event (its `[fleet] gateway_id`),
    /// set by the server as it takes the event from the fleet's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// One event: an OCSF document with Rampart's extensions in `unmapped`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub class_uid: u32,
    pub class_name: String,
    pub category_uid: u32,
    pub category_name: String,
    pub activity_id: u32,
    pub activity_name: String,
    pub type_uid: u64,
    pub type_name: String,
    pub severity_id: u8,
    pub severity: String,
    /// Milliseconds since the Unix epoch (OCSF `timestamp_t`): the end of the flow for
    /// HTTP and network events, the moment of detection for alerts.
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition_id: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request: Option<HttpRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_response: Option<HttpResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_info: Option<FindingInfo>,
    #[serde(default)]
    pub unmapped: Unmapped,
}

/// A new time-ordered event id for an event at `time_ms`.
pub fn new_event_id(time_ms: i64) -> Uuid {
    let ms = u64::try_from(time_ms).unwrap_or(0);
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    Uuid::new_v7(ts)
}

/// A new flow id: one per connection, shared by all its events.
pub fn new_flow_id() -> Uuid {
    Uuid::now_v7()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

impl Event {
    /// A bare event of `ty` with the class fields filled; the builders in
    /// [`crate::flow`] fill the rest.
    pub fn new(ty: EventType, activity_id: u32, activity_name: &str, time_ms: i64) -> Event {
        let (category_uid, category_name) = ty.category();
        Event {
            class_uid: ty.class_uid(),
            class_name: ty.class_name().to_string(),
            category_uid,
            category_name: category_name.to_string(),
            activity_id,
            activity_name: activity_name.to_string(),
            type_uid: u64::from(ty.class_uid()) * 100 + u64::from(activity_id),
            type_name: format!("{}: {}", ty.class_name(), activity_name),
            severity_id: Severity::Informational.id(),
            severity: Severity::Informational.name().to_string(),
            time: time_ms,
            message: None,
            metadata: Metadata {
                uid: new_event_id(time_ms),
                correlation_uid: None,
                version: OCSF_VERSION.to_string(),
                product: Product {
                    name: "Rampart".to_string(),
                    vendor_name: "Rampart".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
                log_provider: None,
            },
            action_id: None,
            action: None,
            disposition_id: None,
            disposition: None,
            actor: None,
            device: None,
            src_endpoint: None,
            dst_endpoint: None,
            connection_info: None,
            http_request: None,
            http_response: None,
            tls: None,
            traffic: None,
            start_time: None,
            end_time: None,
            duration: None,
            policy: None,
            finding_info: None,
            unmapped: Unmapped::default(),
        }
    }

    pub fn id(&self) -> Uuid {
        self.metadata.uid
    }

    pub fn flow_id(&self) -> Option<Uuid> {
        self.metadata.correlation_uid
    }

    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_class_uid(self.class_uid)
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.disposition_id.and_then(Verdict::from_disposition_id)
    }

    pub fn set_verdict(&mut self, verdict: Verdict) {
        self.action_id = Some(verdict.action_id());
        self.action = Some(verdict.action().to_string());
        self.disposition_id = Some(verdict.disposition_id());
        self.disposition = Some(verdict.disposition().to_string());
    }

    pub fn set_severity(&mut self, severity: Severity) {
        self.severity_id = severity.id();
        self.severity = severity.name().to_string();
    }

    pub fn user_name(&self) -> Option<&str> {
        self.actor.as_ref()?.user.as_ref().map(|u| u.name.as_str())
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.actor
            .iter()
            .flat_map(|a| a.user.iter())
            .flat_map(|u| u.groups.iter().map(|g| g.name.as_str()))
    }

    pub fn process_name(&self) -> Option<&str> {
        self.actor.as_ref()?.process.as_ref()?.name.as_deref()
    }

    /// The device name used for timelines: its uid, else its hostname.
    pub fn device_name(&self) -> Option<&str> {
        let d = self.device.as_ref()?;
        d.uid.as_deref().or(d.hostname.as_deref())
    }

    /// The destination host name: URL host, else SNI, else destination hostname.
    pub fn host(&self) -> Option<&str> {
        self.http_request
            .as_ref()
            .and_then(|r| r.url.as_ref())
            .and_then(|u| u.hostname.as_deref())
            .or_else(|| self.tls.as_ref().and_then(|t| t.sni.as_deref()))
            .or_else(|| {
                self.dst_endpoint
                    .as_ref()
                    .and_then(|d| d.hostname.as_deref())
            })
    }

    pub fn url(&self) -> Option<&str> {
        self.http_request
            .as_ref()?
            .url
            .as_ref()
            .map(|u| u.url_string.as_str())
    }

    pub fn alert_id(&self) -> Option<&str> {
        self.finding_info.as_ref().map(|f| f.uid.as_str())
    }
}
