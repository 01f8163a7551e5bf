//! Turns a finished flow record into events (OCSF-based, see
//! `rampart_events`): HTTP Activity for a forwarded request, Network Activity
//! for a tunnel, plus a Detection Finding when an `alert` rule matched. Built
//! once, when the flow ends; handing them over never waits on disk.

use std::time::{SystemTime, UNIX_EPOCH};

use rampart_events::{
    AlertSpec, EventSender, FlowEvent, FlowKind, FlowSummary, Severity, TlsDecision, Verdict,
};

use crate::access_log::FlowRecord;

pub fn emit(record: &FlowRecord, events: &EventSender) {
    // `[events] enabled = false`: don't pay for building events nobody stores.
    if !events.enabled() {
        return;
    }
    let is_tunnel = record.method == "CONNECT";
    let kind = if is_tunnel {
        FlowKind::Network
    } else {
        FlowKind::Http
    };
    // Sent in its flow form: the store keeps it that way and builds the OCSF
    // event only when it is read (or a sink needs it).
    let flow = FlowEvent::new(kind, summary(record));
    // Built before the flow record moves into the pipeline; each links to it.
    let alerts: Vec<_> = alerts(record, is_tunnel)
        .iter()
        .map(|alert| flow.summary.alert_event(alert, Some(flow.id)))
        .collect();
    events.send_flow(flow);
    for alert in alerts {
        events.send(alert);
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
    if let Some(policy) = &record.policy {
        if matches!(policy.action, "alert" | "user-alert") {
            let title = match (policy.action, policy.proceeded) {
                ("user-alert", true) => format!("User proceeded past coaching: {}", policy.rule),
                ("user-alert", false) => format!("Coaching page shown: {}", policy.rule),
                _ => format!("Policy alert: {}", policy.rule),
            };
            out.push(AlertSpec {
                title,
                desc: Some(format!(
                    "{} {} matched {}",
                    record.method,
                    record.target,
                    policy.matched.join(", ")
                )),
                severity: Severity::Medium,
                types: vec!["policy".to_string()],
            });
        }
    }
    out
}

fn summary(record: &FlowRecord) -> FlowSummary {
    let start_ms = millis(record.time);
    let mut s = FlowSummary::new(record.id, start_ms);
    s.end_ms = start_ms + record.duration_ms.as_millis() as i64;
    s.user = record.user.as_deref().map(str::to_string);
    s.groups = record.groups.clone();
    // Agent tunnel flows: the enrolled device and the endpoint process behind them.
    s.device_uid = record.device.as_deref().map(str::to_string);
    if let Some(process) = &record.process {
        s.process_name = Some(process.name.clone());
        s.process_pid = process.pid;
        s.process_path = process.path.clone();
        if process.steering.as_deref() == Some("tunnel-bypass") {
            s.bypass = Some(rampart_events::Bypass {
                at: rampart_events::BypassSite::Gateway,
                reason: format!("tunnel-bypass by agent (process {})", process.name),
            });
        }
    }
    s.src = Some(record.client);
    // A flow refused before connecting has no peer; its target still names where it
    // was going (an agent in transparent mode asks for the original IP and port).
    s.dst = record.server.or_else(|| {
        let (host, port) = crate::config::split_host_port(&record.target)?;
        Some(std::net::SocketAddr::new(host.parse().ok()?, port))
    });
    let is_tunnel = record.method == "CONNECT";
    s.host = Some(host_of(&record.target, is_tunnel).to_string());
    s.method = Some(record.method.clone());
    if !is_tunnel {
        s.url = Some(record.target.clone());
    }
    s.status = (record.status != 0).then_some(record.status);
    s.content_type = record.content_type.clone();
    s.bytes_out = record.bytes_from_client;
    s.bytes_in = record.bytes_to_client;
    s.egress = record.egress.as_deref().map(str::to_string);
    s.error = record.error.clone();
    if let Some(tls) = &record.tls {
        s.sni = tls.sni.clone();
        s.tls_version = tls.version.clone();
        s.tls_decision = Some(
            if tls.pinned_client.is_some() || (tls.origin_problem.is_some() && record.status == 502)
            {
                TlsDecision::Failed
            } else if tls.decision == "decrypt" {
                TlsDecision::Decrypt
            } else if tls.decision == "do-not-decrypt" {
                TlsDecision::DoNotDecrypt
            } else {
                TlsDecision::Plaintext
            },
        );
    }
    s.verdict = match record.policy.as_ref().map(|p| p.action) {
        Some("block") => Verdict::Block,
        Some("alert" | "user-alert") => Verdict::Alert,
        // Admission refusals (ACL, authentication, ports) are blocks too.
        _ if matches!(record.status, 403 | 407) => Verdict::Block,
        _ => Verdict::Allow,
    };
    if let Some(policy) = &record.policy {
        s.stage = Some(policy.stage.to_string());
        s.rule_id = Some(policy.rule_id.to_string());
        s.rule_name = Some(policy.rule.to_string());
        s.policy_revision = Some(policy.revision.to_string());
        s.matched = policy.matched.clone();
        s.categories = policy
            .matched
            .iter()
            .filter_map(|m| {
                m.strip_prefix("category ")
                    .or_else(|| m.strip_prefix("custom-category "))
            })
            .map(str::to_string)
            .collect();
    }
    // The app the deciding rules matched (the access rule first, then the decryption rule).
    s.app = record
        .policy
        .iter()
        .chain(record.decryption.iter())
        .flat_map(|p| p.matched.iter())
        .find_map(|m| m.strip_prefix("app "))
        .map(str::to_string);
    s
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
    use super::host_of;

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
