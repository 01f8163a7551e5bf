//! Turns a finished flow record into events (OCSF-based, see
//! `rampart_events`): HTTP Activity for a forwarded request, Network Activity
//! for a tunnel, plus a Detection Finding when an `alert` rule matched. Built
//! once, when the flow ends; handing them over never waits on disk.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use rampart_events::{
    AlertSpec, EventSender, FlowEvent, FlowKind, FlowSummary, Severity, TlsDecision, Verdict,
};
use rampart_inspect::{Verdict as InspectVerdict, VerdictAction};
use rampart_policy::{AccessAction, MatchedObject, ObjectKind};
use uuid::Uuid;

use crate::access_log::FlowRecord;
use crate::decision::PolicyAction;

thread_local! {
    /// The last flow event this thread built, refilled in place for the next
    /// one: its strings keep their buffers, so building an event allocates
    /// (nearly) nothing in steady state. This runs once per request.
    static SCRATCH: RefCell<FlowEvent> =
        RefCell::new(FlowEvent::new(FlowKind::Http, FlowSummary::new(Uuid::nil(), 0)));
}

pub fn emit(record: &FlowRecord, events: &EventSender) {
    // `[events] enabled = false`: don't pay for building events nobody stores.
    if !events.enabled() {
        return;
    }
    let is_tunnel = record.method == "CONNECT";
    let build_and_send = |flow: &mut FlowEvent| {
        fill(&mut flow.summary, record);
        flow.kind = if is_tunnel {
            FlowKind::Network
        } else {
            FlowKind::Http
        };
        flow.id = rampart_events::new_event_id(flow.summary.end_ms);
        // Sent in its flow form: the store keeps it that way and builds the
        // OCSF event only when it is read (or a sink needs it).
        events.send_flow_ref(flow);
        // Alerts link to the flow's event.
        for alert in alerts(record, is_tunnel) {
            events.send(flow.summary.alert_event(&alert, Some(flow.id)));
        }
    };
    // A flow dropped while its thread shuts down may find the scratch gone
    // (or, in principle, in use): it gets a fresh one rather than a panic.
    let reused = SCRATCH
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut flow) => {
                build_and_send(&mut flow);
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !reused {
        build_and_send(&mut FlowEvent::new(
            FlowKind::Http,
            FlowSummary::new(Uuid::nil(), 0),
        ));
    }
}

/// The findings a flow raises: TLS problems (once per tunnel, not once per
/// request inside it) and `alert`/`user-alert` policy rules.
fn alerts(record: &FlowRecord, is_tunnel: bool) -> Vec<AlertSpec> {
    let mut out = Vec::new();
    if let (true, Some(tls)) = (is_tunnel, &record.tls) {
        let host = host_of(&record.target, true);
        let finding = match (&tls.origin_problem, &tls.pinned_client) {
            (Some(problem), _) if record.status == 502 => Some((
                format!("Invalid origin certificate blocked: {host}"),
                format!("{problem}: {}", record.error.as_deref().unwrap_or("")),
                Severity::High,
                "origin-certificate",
            )),
            (Some(problem), _) => Some((
                format!("Invalid origin certificate allowed by exception: {host}"),
                problem.clone(),
                Severity::Medium,
                "origin-certificate",
            )),
            (None, Some(rejection)) => Some((
                format!("Client rejected Rampart's certificate (pinned client?): {host}"),
                format!("{rejection} from {}", record.client),
                Severity::Low,
                "pinned-client",
            )),
            (None, None) => None,
        };
        if let Some((title, desc, severity, kind)) = finding {
            out.push(AlertSpec {
                title,
                desc: Some(desc),
                severity,
                types: vec!["tls".to_string(), kind.to_string()],
            });
        }
    }
    for inspection in [&record.upload_inspection, &record.inspection] {
        if let Some(inspection) = inspection.as_ref().filter(|i| i.is_finding()) {
            out.push(inspection_alert(record, inspection));
        }
    }
    if let Some(policy) = record.policy.as_ref().filter(|p| p.action.is_alert()) {
        let user_alert = policy.action == PolicyAction::Access(AccessAction::UserAlert);
        let title = match (user_alert, policy.proceeded) {
            (true, true) => format!("User proceeded past coaching: {}", policy.rule),
            (true, false) => format!("Coaching page shown: {}", policy.rule),
            _ => format!("Policy alert: {}", policy.rule),
        };
        let mut desc = format!("{} {} matched ", record.method, record.target);
        for (i, m) in policy.matched.iter().enumerate() {
            let separator = if i > 0 { ", " } else { "" };
            let _ = write!(desc, "{separator}{m}");
        }
        out.push(AlertSpec {
            title,
            desc: Some(desc),
            severity: Severity::Medium,
            types: vec!["policy".to_string()],
        });
    }
    out
}

/// The Detection Finding of a body that inspection did not find clean: what
/// was found, where (the container path), by which engine, and what was done.
fn inspection_alert(
    record: &FlowRecord,
    inspection: &crate::inspection::InspectionRecord,
) -> AlertSpec {
    let verdict = inspection.verdict;
    let kind = verdict.as_str();
    let (what, severity) = match verdict {
        InspectVerdict::Malicious => ("Malware", Severity::High),
        InspectVerdict::Sensitive => ("Sensitive data", Severity::High),
        InspectVerdict::Encrypted => ("Encrypted content", Severity::Medium),
        InspectVerdict::Unscannable(_) | InspectVerdict::Clean => {
            ("Unscannable content", Severity::Medium)
        }
    };
    let done = match inspection.action {
        VerdictAction::Block => "blocked",
        VerdictAction::Alert => "allowed",
        VerdictAction::Allow => "recorded",
    };
    let first = inspection.findings.first();
    let place = first
        .map(|f| f.path.as_str())
        .or(inspection.file_name.as_deref())
        .unwrap_or(record.target.as_str());
    let mut desc = format!(
        "{} {} {}: {verdict}; file type {}, {} bytes, sha256 {}; decided by {}",
        inspection.direction,
        record.method,
        record.target,
        inspection.file_type,
        inspection.size,
        inspection.sha256,
        inspection.decided_by
    );
    for f in &inspection.findings {
        desc.push_str(&format!(
            "; {} by {} ({}) in {} (sha256 {})",
            f.verdict, f.engine, f.rule, f.path, f.sha256
        ));
        if !f.masked.is_empty() {
            desc.push_str(&format!(" matches {}", f.masked.join(", ")));
        }
    }
    AlertSpec {
        title: format!("{what} {done}: {place}"),
        desc: Some(desc),
        severity,
        types: vec![
            "inspection".to_string(),
            kind.to_string(),
            first.map_or("scanner", |f| f.engine).to_string(),
        ],
    }
}

/// Overwrite every field of `s` with `record`'s flow. The destructuring names
/// every field, so a field added to `FlowSummary` fails to compile here
/// instead of keeping the previous flow's value.
fn fill(s: &mut FlowSummary, record: &FlowRecord) {
    let FlowSummary {
        flow_id,
        start_ms,
        end_ms,
        reporter,
        user,
        groups,
        device_uid,
        device_hostname,
        process_name,
        process_pid,
        process_path,
        src,
        dst,
        host,
        sni,
        tls_version,
        method,
        url,
        status,
        content_type,
        user_agent,
        categories,
        app,
        verdict,
        stage,
        rule_id,
        rule_name,
        policy_revision,
        matched,
        bytes_out,
        bytes_in,
        tls_decision,
        bypass,
        egress,
        error,
    } = s;
    let is_tunnel = record.method == "CONNECT";
    *flow_id = record.flow_id.unwrap_or(record.id);
    *start_ms = millis(record.time);
    *end_ms = *start_ms + record.duration_ms.as_millis() as i64;
    *reporter = Cow::Borrowed("gateway");
    set(user, record.user.as_deref());
    set_all(groups, record.groups.iter().map(String::as_str));
    // Agent tunnel flows: the enrolled device and the endpoint process behind them.
    set(device_uid, record.device.as_deref());
    *device_hostname = None;
    let process = record.process.as_ref();
    set(process_name, process.map(|p| p.name.as_str()));
    *process_pid = process.and_then(|p| p.pid);
    set(process_path, process.and_then(|p| p.path.as_deref()));
    *bypass = process
        .filter(|p| p.steering.as_deref() == Some("tunnel-bypass"))
        .map(|p| rampart_events::Bypass {
            at: rampart_events::BypassSite::Gateway,
            reason: format!("tunnel-bypass by agent (process {})", p.name),
        });
    *src = Some(record.client);
    // A flow refused before connecting has no peer; its target still names where it
    // was going (an agent in transparent mode asks for the original IP and port).
    *dst = record.server.or_else(|| {
        let (host, port) = crate::config::split_host_port(&record.target)?;
        Some(std::net::SocketAddr::new(host.parse().ok()?, port))
    });
    set(host, Some(host_of(&record.target, is_tunnel)));
    set(method, Some(&record.method));
    set(url, (!is_tunnel).then_some(record.target.as_str()));
    *status = (record.status != 0).then_some(record.status);
    set(content_type, record.content_type.as_deref());
    *user_agent = None;
    *bytes_out = record.bytes_from_client;
    *bytes_in = record.bytes_to_client;
    set(egress, record.egress.as_deref());
    set(error, record.error.as_deref());
    let tls = record.tls.as_ref();
    set(sni, tls.and_then(|t| t.sni.as_deref()));
    set(tls_version, tls.and_then(|t| t.version.as_deref()));
    *tls_decision = tls.map(|tls| {
        if tls.pinned_client.is_some() || (tls.origin_problem.is_some() && record.status == 502) {
            TlsDecision::Failed
        } else {
            match tls.decision {
                crate::decision::TlsDecision::Decrypt => TlsDecision::Decrypt,
                crate::decision::TlsDecision::DoNotDecrypt => TlsDecision::DoNotDecrypt,
                crate::decision::TlsDecision::NotTls => TlsDecision::Plaintext,
                crate::decision::TlsDecision::Fronting => TlsDecision::Fronting,
            }
        }
    });
    let policy = record.policy.as_ref();
    *verdict = match policy.map(|p| p.action) {
        Some(PolicyAction::Access(AccessAction::Block)) => Verdict::Block,
        Some(action) if action.is_alert() => Verdict::Alert,
        // The gateway's own refusals are blocks too: admission (ACL,
        // authentication, ports, destinations), malformed or oversized
        // requests, loops, fronting, inspection.
        _ if matches!(record.status, 400 | 403 | 407 | 413 | 421 | 431 | 508) => Verdict::Block,
        _ => Verdict::Allow,
    };
    set(stage, policy.map(|p| p.stage.as_str()));
    set(rule_id, policy.map(|p| &*p.rule_id));
    set(rule_name, policy.map(|p| &*p.rule));
    set(policy_revision, policy.map(|p| &*p.revision));
    let policy_matched = policy.map_or(&[][..], |p| p.matched.as_slice());
    set_all_text(matched, policy_matched);
    // Taken from the typed objects: a category's (or app's) name, never parsed out of text.
    set_all(
        categories,
        crate::decision::categories(policy_matched).map(|m| &*m.name),
    );
    // The app the deciding rules matched (the access rule first, then the decryption rule).
    set(
        app,
        record
            .policy
            .iter()
            .chain(record.decryption.iter())
            .flat_map(|p| p.matched.iter())
            .find(|m| m.kind == ObjectKind::App)
            .map(|m| &*m.name),
    );
}

/// `slot = value`, reusing the string already there.
fn set(slot: &mut Option<String>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(buf), Some(v)) => {
            buf.clear();
            buf.push_str(v);
        }
        (None, Some(v)) => *slot = Some(v.to_owned()),
        (_, None) => *slot = None,
    }
}

/// `list = values`, reusing the strings already there.
fn set_all<'a>(list: &mut Vec<String>, values: impl Iterator<Item = &'a str>) {
    let mut n = 0;
    for v in values {
        match list.get_mut(n) {
            Some(buf) => {
                buf.clear();
                buf.push_str(v);
            }
            None => list.push(v.to_owned()),
        }
        n += 1;
    }
    list.truncate(n);
}

/// `list = the text of each matched object` (`category news`), written into
/// the strings already there.
fn set_all_text(list: &mut Vec<String>, values: &[MatchedObject]) {
    list.truncate(values.len());
    for (i, m) in values.iter().enumerate() {
        match list.get_mut(i) {
            Some(buf) => {
                buf.clear();
                let _ = write!(buf, "{m}");
            }
            None => list.push(m.to_string()),
        }
    }
}

/// The host of an absolute URL or of a `host:port` CONNECT target.
fn host_of(target: &str, is_tunnel: bool) -> &str {
    let authority = if is_tunnel {
        target
    } else {
        let rest = target.split_once("://").map(|(_, r)| r).unwrap_or(target);
        rest.split(['/', '?', '#']).next().unwrap_or(rest)
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::{PolicyRecord, ProcessRecord, TlsRecord};
    use std::sync::Arc;

    fn rich_record() -> FlowRecord {
        let mut r = FlowRecord::new(
            "10.0.0.9:40000".parse().unwrap(),
            "CONNECT",
            "bank.example:443".into(),
        );
        r.user = Some(Arc::from("alice"));
        r.groups = vec!["finance".into(), "staff".into()];
        r.device = Some(Arc::from("dev-1"));
        r.egress = Some(Arc::from("direct"));
        r.error = Some("origin certificate expired".into());
        r.status = 502;
        r.process = Some(ProcessRecord {
            name: "curl".into(),
            path: Some("/usr/bin/curl".into()),
            pid: Some(42),
            steering: Some("tunnel-bypass".into()),
            ..ProcessRecord::default()
        });
        r.tls = Some(TlsRecord {
            decision: crate::decision::TlsDecision::Decrypt,
            reason: "default".into(),
            sni: Some("bank.example".into()),
            version: Some("TLSv1.3".into()),
            alpn: None,
            origin_problem: Some("expired".into()),
            pinned_client: None,
        });
        r.policy = Some(PolicyRecord {
            revision: Arc::from("r7"),
            stage: rampart_policy::Stage::Access,
            rule_id: Arc::from("3"),
            rule: Arc::from("banks"),
            action: PolicyAction::Access(AccessAction::Alert),
            matched: vec![
                MatchedObject {
                    kind: ObjectKind::Category,
                    name: Arc::from("finance"),
                },
                MatchedObject {
                    kind: ObjectKind::App,
                    name: Arc::from("bank"),
                },
            ],
            proceeded: false,
            skipped: Vec::new(),
        });
        r
    }

    fn filled(record: &FlowRecord) -> FlowSummary {
        let mut s = FlowSummary::new(Uuid::nil(), 0);
        fill(&mut s, record);
        s
    }

    /// The per-thread summary is reused: a plain request after a rich tunnel
    /// must not inherit any of its fields.
    #[test]
    fn a_refilled_summary_keeps_nothing_of_the_previous_flow() {
        let rich = rich_record();
        let mut plain = FlowRecord::new(
            "127.0.0.1:5000".parse().unwrap(),
            "GET",
            "http://a.example/x".into(),
        );
        plain.status = 200;
        let mut reused = filled(&rich);
        assert_eq!(reused.user.as_deref(), Some("alice"));
        assert_eq!(reused.categories, vec!["finance".to_string()]);
        assert_eq!(reused.matched, vec!["category finance", "app bank"]);
        assert_eq!(reused.app.as_deref(), Some("bank"));
        assert_eq!(reused.verdict, Verdict::Alert);
        assert_eq!(reused.stage.as_deref(), Some("access"));
        assert!(reused.bypass.is_some());
        assert_eq!(reused.tls_decision, Some(TlsDecision::Failed));
        fill(&mut reused, &plain);
        assert_eq!(reused, filled(&plain));
        assert_eq!(reused.user, None);
        assert!(reused.groups.is_empty() && reused.matched.is_empty());
        assert_eq!(reused.host.as_deref(), Some("a.example"));
        fill(&mut reused, &rich);
        assert_eq!(reused, filled(&rich));
    }

    /// The event's categories and app come from the typed matched objects:
    /// custom categories count, a list or host named like a category does not.
    #[test]
    fn categories_and_app_come_from_the_matched_objects_kinds() {
        let mut r = rich_record();
        let object = |kind, name: &str| MatchedObject {
            kind,
            name: Arc::from(name),
        };
        if let Some(policy) = r.policy.as_mut() {
            policy.action = PolicyAction::Access(AccessAction::Block);
            policy.matched = vec![
                object(ObjectKind::List, "category news"),
                object(ObjectKind::CustomCategory, "partners"),
                object(ObjectKind::Category, "news"),
            ];
        }
        r.decryption = Some(PolicyRecord {
            stage: rampart_policy::Stage::Decryption,
            action: PolicyAction::Decryption(rampart_policy::DecryptionAction::DoNotDecrypt),
            matched: vec![object(ObjectKind::App, "dropbox")],
            ..r.policy.clone().unwrap()
        });
        let s = filled(&r);
        assert_eq!(s.categories, vec!["partners", "news"]);
        assert_eq!(
            s.matched,
            vec![
                "list category news",
                "custom-category partners",
                "category news"
            ]
        );
        assert_eq!(s.app.as_deref(), Some("dropbox"));
        assert_eq!(s.verdict, Verdict::Block);
        let alert = alerts(&rich_record(), true);
        let policy_alert = alert.iter().find(|a| a.types == ["policy"]).unwrap();
        assert_eq!(
            policy_alert.desc.as_deref(),
            Some("CONNECT bank.example:443 matched category finance, app bank")
        );
    }

    #[test]
    fn host_is_taken_from_url_or_connect_target() {
        assert_eq!(
            host_of("http://user@a.example:8080/x?y", false),
            "a.example"
        );
        assert_eq!(host_of("http://[::1]:80/", false), "::1");
        assert_eq!(host_of("b.example:443", true), "b.example");
    }
}
