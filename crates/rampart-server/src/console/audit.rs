//! The audit trail of the console: every login (and failed login), logout and admin
//! action — allowed or refused — becomes an event in the event store (OCSF API
//! Activity, `type = audit`), so `rampart events search 'type = audit'` and the
//! console's own search find it. Each record is also appended to
//! `<data dir>/console-audit.ndjson` (0600), which holds even when `[events]` is off.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rampart_events::event::{
    Actor, Device, Endpoint, HttpRequest, HttpResponse, Policy, Url, User,
};
use rampart_events::{Event, EventSender, EventType, Severity, Verdict};

use super::auth::Viewer;
use super::users::Role;

/// File name of the audit log inside the data dir.
pub const AUDIT_FILE: &str = "console-audit.ndjson";

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (login accepted, device isolated, policy applied...).
    Ok,
    /// Refused for the role (403).
    Denied,
    /// Tried and failed (wrong password, a reload the policy check rejected...).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One console action.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub user: &'a str,
    /// `None` for a failed login (no account proved).
    pub role: Option<Role>,
    /// `login`, `logout`, `alert.acknowledge`, `device.isolate`, `device.release`,
    /// `policy.reload`.
    pub action: &'a str,
    /// What it acted on: an alert id, a device id, a policy revision, `console`.
    pub target: &'a str,
    pub outcome: Outcome,
    /// The client's address.
    pub source: &'a str,
    /// The console path posted (`/devices/laptop-1/isolate`).
    pub path: &'a str,
    /// The HTTP status the console answered.
    pub status: u16,
    /// The device acted on, so the device's timeline shows the action.
    pub device: Option<&'a str>,
    /// The reason, the note, or why it failed.
    pub detail: Option<&'a str>,
    /// The policy revision (reloads).
    pub revision: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// A successful action of the signed-in `viewer` posted to `path` (303); set
    /// the other fields with struct update syntax.
    pub fn of(viewer: &'a Viewer, action: &'a str, target: &'a str, path: &'a str) -> Self {
        Entry {
            user: &viewer.session.user,
            role: Some(viewer.session.role),
            action,
            target,
            outcome: Outcome::Ok,
            source: &viewer.source,
            path,
            status: 303,
            device: None,
            detail: None,
            revision: None,
        }
    }

    /// The same entry refused for the role (403).
    pub fn denied(self) -> Self {
        Entry {
            outcome: Outcome::Denied,
            status: 403,
            ..self
        }
    }

    /// OCSF API Activity: 1 Create (a session), 4 Delete (logout), 3 Update (the rest).
    fn activity(&self) -> (u32, &'static str) {
        match self.action {
            "login" => (1, "Create"),
            "logout" => (4, "Delete"),
            _ => (3, "Update"),
        }
    }

    fn message(&self) -> String {
        let mut m = format!(
            "console: {} {} {}: {}",
            self.user,
            self.action,
            self.target,
            self.outcome.as_str()
        );
        if let Some(detail) = self.detail.filter(|d| !d.is_empty()) {
            m.push_str(" — ");
            m.push_str(detail);
        }
        m
    }

    /// The event stored for this entry.
    pub fn event(&self, time_ms: i64) -> Event {
        let (activity_id, activity_name) = self.activity();
        let mut e = Event::new(EventType::Audit, activity_id, activity_name, time_ms);
        e.metadata.log_provider = Some("server".to_string());
        e.message = Some(self.message());
        e.actor = Some(Actor {
            user: Some(User {
                name: self.user.to_string(),
                groups: Vec::new(),
            }),
            process: None,
        });
        e.src_endpoint = Some(Endpoint {
            ip: Some(self.source.to_string()),
            port: None,
            hostname: None,
        });
        e.device = self.device.map(|d| Device {
            uid: Some(d.to_string()),
            hostname: None,
            ip: None,
        });
        e.http_request = Some(HttpRequest {
            http_method: Some("POST".to_string()),
            url: Some(Url {
                url_string: self.path.to_string(),
                scheme: None,
                hostname: None,
                port: None,
                path: Some(self.path.to_string()),
                categories: Vec::new(),
            }),
            user_agent: None,
        });
        e.http_response = Some(HttpResponse {
            code: self.status,
            content_type: None,
        });
        e.set_verdict(match self.outcome {
            Outcome::Ok => Verdict::Allow,
            Outcome::Denied | Outcome::Failed => Verdict::Block,
        });
        if self.outcome != Outcome::Ok {
            e.set_severity(Severity::Low);
        }
        e.policy = self.revision.map(|r| Policy {
            uid: None,
            name: None,
            version: Some(r.to_string()),
        });
        e
    }
}

pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<()>,
    events: Option<EventSender>,
}

impl AuditLog {
    pub fn new(data_dir: &Path, events: Option<EventSender>) -> AuditLog {
        AuditLog {
            path: data_dir.join(AUDIT_FILE),
            lock: Mutex::new(()),
            events,
        }
    }

    /// Records an action. A failure to write is logged; the action itself still
    /// reports its own outcome to the user.
    pub fn record(&self, entry: Entry<'_>) {
        let now = rampart_events::now_ms();
        if let Some(events) = &self.events {
            events.send(entry.event(now));
        }
        let line = serde_json::json!({
            "time": rampart_events::render::time_text(now),
            "user": entry.user,
            "role": entry.role.map(Role::as_str),
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome.as_str(),
            "detail": entry.detail,
            "source": entry.source,
        })
        .to_string();
        let result = {
            let _guard = self.lock.lock();
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .and_then(|mut f| writeln!(f, "{line}"))
        };
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "console audit log write failed");
        }
        tracing::info!(target: "rampart::audit", user = entry.user, action = entry.action,
            target = entry.target, outcome = entry.outcome.as_str(), "console action");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_events::field::Field;

    #[test]
    fn an_isolation_is_an_api_activity_event_searchable_by_user_device_and_url() {
        let entry = Entry {
            user: "root",
            role: Some(Role::Admin),
            action: "device.isolate",
            target: "laptop-1",
            outcome: Outcome::Ok,
            source: "127.0.0.1",
            path: "/devices/laptop-1/isolate",
            status: 303,
            device: Some("laptop-1"),
            detail: Some("reason: beaconing"),
            revision: None,
        };
        let e = entry.event(1_763_900_000_000);
        assert_eq!(e.class_uid, 6003);
        assert_eq!(e.type_uid, 600303);
        assert_eq!(Field::Type.text(&e).as_deref(), Some("audit"));
        assert_eq!(Field::User.text(&e).as_deref(), Some("root"));
        assert_eq!(Field::Device.text(&e).as_deref(), Some("laptop-1"));
        assert_eq!(
            Field::Url.text(&e).as_deref(),
            Some("/devices/laptop-1/isolate")
        );
        assert_eq!(Field::Action.text(&e).as_deref(), Some("allow"));
        assert!(e
            .message
            .as_deref()
            .is_some_and(|m| m.contains("beaconing")));
    }

    #[test]
    fn a_failed_login_is_blocked_and_low_severity() {
        let e = Entry {
            user: "mallory",
            role: None,
            action: "login",
            target: "console",
            outcome: Outcome::Failed,
            source: "127.0.0.1",
            path: "/login",
            status: 401,
            device: None,
            detail: None,
            revision: None,
        }
        .event(0);
        assert_eq!(e.activity_name, "Create");
        assert_eq!(Field::Action.text(&e).as_deref(), Some("block"));
        assert_eq!(Field::Status.integer(&e), Some(401));
        assert_eq!(Field::Severity.text(&e).as_deref(), Some("low"));
    }
}
