//! Building events from what the data path knows at the end of a flow.
//!
//! The gateway fills one [`FlowSummary`] along the flow (identity, destination,
//! verdict, bytes) and turns it into events once, when the flow ends, so the hot
//! path never formats JSON or touches the store.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{
    Actor, Bypass, ConnectionInfo, Device, DeviceActivity, Endpoint, Event, EventType, File,
    FindingInfo, Group, HttpRequest, HttpResponse, Policy, Process, Severity, Tls, TlsDecision,
    Traffic, Url, User, Verdict,
};

/// Everything known about one connection (or one request on it) when it ends.
///
/// Serializable because the store keeps HTTP and network events in this
/// compact form (see [`FlowEvent`]) and builds the OCSF document when read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSummary {
    /// Shared by every event of the connection; see [`crate::new_flow_id`].
    pub flow_id: Uuid,
    /// Milliseconds since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    /// `gateway` or `agent`.
    pub reporter: Cow<'static, str>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub device_uid: Option<String>,
    pub device_hostname: Option<String>,
    pub process_name: Option<String>,
    pub process_pid: Option<u32>,
    pub process_path: Option<String>,
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
    /// Host name from the request, CONNECT target or SNI.
    pub host: Option<String>,
    pub sni: Option<String>,
    pub tls_version: Option<String>,
    pub method: Option<String>,
    /// Absolute URL (HTTP events).
    pub url: Option<String>,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// All categories of the destination; the first is the one reported as `category`.
    pub categories: Vec<String>,
    pub app: Option<String>,
    pub verdict: Verdict,
    pub stage: Option<String>,
    pub rule_id: Option<String>,
    pub rule_name: Option<String>,
    pub policy_revision: Option<String>,
    pub matched: Vec<String>,
    /// Client → origin.
    pub bytes_out: u64,
    /// Origin → client.
    pub bytes_in: u64,
    pub tls_decision: Option<TlsDecision>,
    pub bypass: Option<Bypass>,
    pub egress: Option<String>,
    pub error: Option<String>,
}

impl FlowSummary {
    /// A summary for a flow starting now, allowed until a rule says otherwise.
    pub fn new(flow_id: Uuid, start_ms: i64) -> FlowSummary {
        FlowSummary {
            flow_id,
            start_ms,
            end_ms: start_ms,
            reporter: Cow::Borrowed("gateway"),
            user: None,
            groups: Vec::new(),
            device_uid: None,
            device_hostname: None,
            process_name: None,
            process_pid: None,
            process_path: None,
            src: None,
            dst: None,
            host: None,
            sni: None,
            tls_version: None,
            method: None,
            url: None,
            status: None,
            content_type: None,
            user_agent: None,
            categories: Vec::new(),
            app: None,
            verdict: Verdict::Allow,
            stage: None,
            rule_id: None,
            rule_name: None,
            policy_revision: None,
            matched: Vec::new(),
            bytes_out: 0,
            bytes_in: 0,
            tls_decision: None,
            bypass: None,
            egress: None,
            error: None,
        }
    }

    /// The HTTP Activity (4002) event for one request.
    pub fn http_event(&self) -> Event {
        let method = self.method.as_deref().unwrap_or("GET");
        let (activity_id, activity_name) = http_activity(method);
        let mut e = self.base(EventType::Http, activity_id, activity_name);
        e.http_request = Some(HttpRequest {
            http_method: Some(method.to_string()),
            url: self.url.as_deref().map(|u| parse_url(u, &self.categories)),
            user_agent: self.user_agent.clone(),
        });
        e.http_response = self.status.map(|code| HttpResponse {
            code,
            content_type: self.content_type.clone(),
        });
        e
    }

    /// The Network Activity (4001) event for the connection or tunnel as a whole.
    pub fn network_event(&self) -> Event {
        let (activity_id, activity_name) = if self.error.is_some() {
            (4, "Fail")
        } else if matches!(self.verdict, Verdict::Block | Verdict::Challenge) {
            (5, "Refuse")
        } else {
            (2, "Close")
        };
        self.base(EventType::Network, activity_id, activity_name)
    }

    /// A Detection Finding (2004) raised on this flow, linked to the event that triggered it.
    pub fn alert_event(&self, alert: &AlertSpec, related: Option<Uuid>) -> Event {
        let mut e = self.base(EventType::Alert, 1, "Create");
        e.set_severity(alert.severity);
        e.message = Some(alert.title.clone());
        e.finding_info = Some(FindingInfo {
            uid: e.metadata.uid.to_string(),
            title: alert.title.clone(),
            desc: alert.desc.clone(),
            types: alert.types.clone(),
            related_event_uid: related,
        });
        if let Some(url) = &self.url {
            e.http_request = Some(HttpRequest {
                http_method: self.method.clone(),
                url: Some(parse_url(url, &self.categories)),
                user_agent: None,
            });
        }
        e
    }

    fn base(&self, ty: EventType, activity_id: u32, activity_name: &str) -> Event {
        let mut e = Event::new(ty, activity_id, activity_name, self.end_ms);
        e.metadata.correlation_uid = Some(self.flow_id);
        e.metadata.log_provider = Some(self.reporter.to_string());
        e.set_verdict(self.verdict);
        e.actor = self.actor();
        if self.device_uid.is_some() || self.device_hostname.is_some() {
            e.device = Some(Device {
                uid: self.device_uid.clone(),
                hostname: self.device_hostname.clone(),
                ip: None,
            });
        }
        e.src_endpoint = self.src.map(|a| Endpoint {
            ip: Some(a.ip().to_string()),
            port: Some(a.port()),
            hostname: None,
        });
        if self.dst.is_some() || self.host.is_some() {
            e.dst_endpoint = Some(Endpoint {
                ip: self.dst.map(|a| a.ip().to_string()),
                port: self.dst.map(|a| a.port()),
                hostname: self.host.clone(),
            });
        }
        e.connection_info = Some(ConnectionInfo {
            protocol_name: "tcp".to_string(),
            direction_id: 2,
            direction: "Outbound".to_string(),
        });
        if self.sni.is_some() || self.tls_version.is_some() {
            e.tls = Some(Tls {
                sni: self.sni.clone(),
                version: self.tls_version.clone(),
            });
        }
        e.traffic = Some(Traffic {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            bytes: self.bytes_in.saturating_add(self.bytes_out),
        });
        e.start_time = Some(self.start_ms);
        e.end_time = Some(self.end_ms);
        e.duration = Some(self.end_ms.saturating_sub(self.start_ms).max(0));
        if self.rule_id.is_some() || self.rule_name.is_some() || self.policy_revision.is_some() {
            e.policy = Some(Policy {
                uid: self.rule_id.clone(),
                name: self.rule_name.clone(),
                version: self.policy_revision.clone(),
            });
        }
        let u = &mut e.unmapped;
        u.stage = self.stage.clone();
        u.category = self.categories.first().cloned();
        u.app = self.app.clone();
        u.tls_decision = self.tls_decision;
        u.bypass = self.bypass.clone();
        u.matched = self.matched.clone();
        u.egress = self.egress.clone();
        u.error = self.error.clone();
        e
    }

    fn actor(&self) -> Option<Actor> {
        let user = self.user.as_ref().map(|name| User {
            name: name.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| Group { name: g.clone() })
                .collect(),
        });
        let process = if self.process_name.is_some() || self.process_pid.is_some() {
            Some(Process {
                name: self.process_name.clone(),
                pid: self.process_pid,
                file: self.process_path.clone().map(|path| File { path }),
            })
        } else {
            None
        };
        if user.is_none() && process.is_none() {
            None
        } else {
            Some(Actor { user, process })
        }
    }
}

/// Which event a [`FlowEvent`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowKind {
    /// HTTP Activity (4002): one request.
    Http,
    /// Network Activity (4001): a connection or tunnel as a whole.
    Network,
}

/// An HTTP or network event in the form the data path produces it: the flow
/// summary plus the event's id. This is what the gateway sends and what the
/// store keeps (a few hundred bytes, no JSON); [`FlowEvent::event`] builds the
/// OCSF event, the same one every time, for readers and sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub id: Uuid,
    pub kind: FlowKind,
    pub summary: FlowSummary,
}

impl FlowEvent {
    pub fn new(kind: FlowKind, summary: FlowSummary) -> FlowEvent {
        FlowEvent {
            id: crate::event::new_event_id(summary.end_ms),
            kind,
            summary,
        }
    }

    /// The OCSF event, with this record's id.
    pub fn event(&self) -> Event {
        let mut e = match self.kind {
            FlowKind::Http => self.summary.http_event(),
            FlowKind::Network => self.summary.network_event(),
        };
        e.metadata.uid = self.id;
        e
    }
}

/// What an alert says: its title, severity and detection types.
#[derive(Clone, Debug)]
pub struct AlertSpec {
    pub title: String,
    pub desc: Option<String>,
    pub severity: Severity,
    /// E.g. `policy`, `malware`, `non-web-port`.
    pub types: Vec<String>,
}

/// A device/agent event (enrolment, isolation, agent lifecycle).
pub fn device_event(
    activity: DeviceActivity,
    device_uid: &str,
    hostname: Option<&str>,
    user: Option<&str>,
    message: Option<&str>,
    time_ms: i64,
) -> Event {
    let mut e = Event::new(EventType::Device, 99, activity.name(), time_ms);
    e.metadata.log_provider = Some("server".to_string());
    e.device = Some(Device {
        uid: Some(device_uid.to_string()),
        hostname: hostname.map(str::to_string),
        ip: None,
    });
    e.actor = user.map(|name| Actor {
        user: Some(User {
            name: name.to_string(),
            groups: Vec::new(),
        }),
        process: None,
    });
    e.message = message.map(str::to_string);
    e.unmapped.device_activity = Some(activity);
    if matches!(activity, DeviceActivity::Isolated) {
        e.set_severity(Severity::Medium);
    }
    e
}

/// OCSF HTTP Activity `activity_id` for a request method.
fn http_activity(method: &str) -> (u32, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    }
}

/// Split an absolute URL into the OCSF url object. Lenient: the gateway already
/// validated it; anything unparseable stays whole in `url_string`.
fn parse_url(url: &str, categories: &[String]) -> Url {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let (hostname, port) = url_host_port(authority);
    Url {
        url_string: url.to_string(),
        scheme,
        hostname,
        port,
        path,
        categories: categories.to_vec(),
    }
}

/// The lowercase host of an absolute URL, as [`parse_url`] reports it (the
/// store's `host` column of an HTTP flow record).
pub(crate) fn url_hostname(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    url_host_port(authority).0
}

/// Host (lowercase, `None` when empty) and port of a URL's authority.
fn url_host_port(authority: &str) -> (Option<String>, Option<u16>) {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (hostname, port) = split_host_port(authority);
    (
        (!hostname.is_empty()).then(|| hostname.to_ascii_lowercase()),
        port,
    )
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_split_into_scheme_host_port_and_path() {
        let u = parse_url("https://User@News.Example.com:8443/a/b?c=d", &[]);
        assert_eq!(u.scheme.as_deref(), Some("https"));
        assert_eq!(u.hostname.as_deref(), Some("news.example.com"));
        assert_eq!(u.port, Some(8443));
        assert_eq!(u.path.as_deref(), Some("/a/b?c=d"));
        let v6 = parse_url("http://[::1]:80/", &[]);
        assert_eq!(v6.hostname.as_deref(), Some("::1"));
        assert_eq!(v6.port, Some(80));
    }

    #[test]
    fn blocked_connection_is_a_refuse_activity() {
        let mut f = FlowSummary::new(crate::new_flow_id(), 1_000);
        f.verdict = Verdict::Block;
        let e = f.network_event();
        assert_eq!(e.activity_id, 5);
        assert_eq!(e.type_uid, 400105);
        assert_eq!(e.disposition_id, Some(2));
        assert_eq!(e.action_id, Some(2));
    }

    #[test]
    fn events_of_one_flow_share_the_flow_id_and_have_distinct_ordered_ids() {
        let f = FlowSummary::new(crate::new_flow_id(), 1_000);
        let a = f.http_event();
        let b = f.network_event();
        assert_eq!(a.flow_id(), b.flow_id());
        assert_ne!(a.id(), b.id());
        let mut later = f.clone();
        later.end_ms = 2_000;
        assert!(later.http_event().id() > a.id());
    }
}
