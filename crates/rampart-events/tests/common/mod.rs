//! Event generators shared by the integration tests.
#![allow(dead_code)]

use rampart_events::{Event, FlowEvent, FlowKind, FlowSummary, TlsDecision, Verdict};

pub const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
pub const CATEGORIES: [&str; 4] = ["news", "gambling", "search", "cloud-storage"];

/// A deterministic HTTP event number `i` at `time_ms`.
pub fn http(i: u64, time_ms: i64) -> Event {
    summary(i, time_ms).http_event()
}

/// The same HTTP event in its flow form (what the gateway sends).
pub fn http_flow(i: u64, time_ms: i64) -> FlowEvent {
    FlowEvent::new(FlowKind::Http, summary(i, time_ms))
}

/// The flow summary behind [`http`] number `i`.
pub fn summary(i: u64, time_ms: i64) -> FlowSummary {
    let mut f = FlowSummary::new(rampart_events::new_flow_id(), time_ms - 50);
    f.end_ms = time_ms;
    f.user = Some(USERS[(i % 5) as usize].to_string());
    f.groups = vec![if i.is_multiple_of(2) {
        "engineering"
    } else {
        "sales"
    }
    .to_string()];
    f.device_uid = Some(format!("dev-{}", i % 7));
    let host = format!("h{}.{}.example", i % 13, CATEGORIES[(i % 4) as usize]);
    f.url = Some(format!("https://{host}/p/{i}"));
    f.host = Some(host);
    f.method = Some("GET".into());
    f.status = Some(if i.is_multiple_of(10) { 403 } else { 200 });
    f.categories = vec![CATEGORIES[(i % 4) as usize].to_string()];
    f.verdict = if i.is_multiple_of(10) {
        Verdict::Block
    } else {
        Verdict::Allow
    };
    f.rule_name = Some(
        if i.is_multiple_of(10) {
            "block gambling"
        } else {
            "default"
        }
        .to_string(),
    );
    f.tls_decision = Some(TlsDecision::Decrypt);
    f.src = Some("10.0.0.9:40000".parse().unwrap());
    f.dst = Some("192.0.2.1:443".parse().unwrap());
    f.bytes_in = 1000 + i;
    f.bytes_out = 100;
    f
}

/// An alert (Detection Finding) on the device of event `i`, at `time_ms`.
pub fn alert(i: u64, time_ms: i64) -> Event {
    let mut f = summary(i, time_ms);
    f.start_ms = time_ms;
    f.alert_event(
        &rampart_events::AlertSpec {
            title: format!("alert {i}"),
            desc: None,
            severity: rampart_events::Severity::High,
            types: vec!["malware".into()],
        },
        None,
    )
}
