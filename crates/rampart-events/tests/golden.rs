//! One golden OCSF document per event class. Run with `UPDATE_GOLDEN=1` to
//! rewrite the files after an intended schema change (and update docs/events.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use rampart_events::event::Event;
use rampart_events::{
    device_event, AlertSpec, Bypass, BypassSite, DeviceActivity, FlowSummary, Severity,
    TlsDecision, Verdict,
};
use uuid::Uuid;

const FLOW: &str = "01937a4e-6b00-7000-8000-00000000f10a";
const T0: i64 = 1_763_900_000_000; // 2025-11-23T12:13:20Z

fn fixed(mut e: Event, id: &str) -> Event {
    e.metadata.uid = Uuid::parse_str(id).unwrap();
    e.metadata.product.version = "0.1.0".into();
    e
}

fn alice_flow() -> FlowSummary {
    let mut f = FlowSummary::new(Uuid::parse_str(FLOW).unwrap(), T0);
    f.end_ms = T0 + 182;
    f.user = Some("alice".into());
    f.groups = vec!["engineering".into()];
    f.device_uid = Some("laptop-042".into());
    f.device_hostname = Some("alice-mbp".into());
    f.process_name = Some("firefox".into());
    f.process_pid = Some(4242);
    f.process_path = Some("/usr/lib/firefox/firefox".into());
    f.src = Some("10.0.0.15:52344".parse::<SocketAddr>().unwrap());
    f.dst = Some("203.0.113.80:443".parse::<SocketAddr>().unwrap());
    f.host = Some("news.example.com".into());
    f.sni = Some("news.example.com".into());
    f.tls_version = Some("TLSv1.3".into());
    f.policy_revision = Some("7".into());
    f
}

fn http_blocked() -> Event {
    let mut f = alice_flow();
    f.method = Some("GET".into());
    f.url = Some("https://news.example.com/world/today".into());
    f.status = Some(403);
    f.content_type = Some("text/html".into());
    f.user_agent = Some("Mozilla/5.0".into());
    f.categories = vec!["news".into()];
    f.verdict = Verdict::Block;
    f.stage = Some("request".into());
    f.rule_id = Some("access-2".into());
    f.rule_name = Some("no news for engineering".into());
    f.matched = vec!["group:engineering".into(), "category:news".into()];
    f.bytes_out = 517;
    f.bytes_in = 2_048;
    f.tls_decision = Some(TlsDecision::Decrypt);
    f.egress = Some("direct".into());
    fixed(f.http_event(), "01937a4e-6bb6-7000-8000-0000000000a1")
}

fn network_tunnel_bypass() -> Event {
    let mut f = alice_flow();
    f.process_name = Some("dropbox".into());
    f.process_pid = Some(777);
    f.process_path = Some("/opt/dropbox/dropbox".into());
    f.host = Some("api.dropbox.com".into());
    f.sni = Some("api.dropbox.com".into());
    f.dst = Some("198.51.100.7:443".parse().unwrap());
    f.end_ms = T0 + 60_000;
    f.app = Some("dropbox".into());
    f.categories = vec!["cloud-storage".into()];
    f.verdict = Verdict::Allow;
    f.stage = Some("steering".into());
    f.rule_id = Some("steering-1".into());
    f.rule_name = Some("dropbox is pinned".into());
    f.matched = vec!["app:dropbox".into()];
    f.bytes_out = 48_213;
    f.bytes_in = 1_204_772;
    f.tls_decision = Some(TlsDecision::Bypass);
    f.bypass = Some(Bypass {
        at: BypassSite::Gateway,
        reason: "steering exception `dropbox is pinned` (tunnel-bypass)".into(),
    });
    f.egress = Some("direct".into());
    fixed(f.network_event(), "01937a4f-5560-7000-8000-0000000000b2")
}

fn alert_non_web_port() -> Event {
    let mut f = alice_flow();
    f.process_name = Some("bash".into());
    f.process_pid = Some(9001);
    f.process_path = Some("/usr/bin/bash".into());
    f.host = None;
    f.sni = None;
    f.tls_version = None;
    f.dst = Some("192.0.2.66:4444".parse().unwrap());
    f.end_ms = T0 + 300_000;
    f.verdict = Verdict::Alert;
    f.stage = Some("connection".into());
    f.rule_id = Some("access-9".into());
    f.rule_name = Some("alert on non-web ports".into());
    f.matched = vec!["port:4444".into()];
    f.tls_decision = None;
    let spec = AlertSpec {
        title: "Outbound connection to non-web port 4444".into(),
        desc: Some(
            "bash opened a TCP connection to 192.0.2.66:4444 (possible reverse shell)".into(),
        ),
        severity: Severity::High,
        types: vec!["non-web-port".into()],
    };
    let mut e = f.alert_event(
        &spec,
        Some(Uuid::parse_str("01937a53-7f00-7000-8000-0000000000c0").unwrap()),
    );
    let id = "01937a53-7f00-7000-8000-0000000000c3";
    if let Some(fi) = e.finding_info.as_mut() {
        fi.uid = id.into();
    }
    fixed(e, id)
}

fn device_isolated() -> Event {
    let e = device_event(
        DeviceActivity::Isolated,
        "laptop-042",
        Some("alice-mbp"),
        Some("secops-admin"),
        Some("isolated after alert 01937a53-7f00-7000-8000-0000000000c3"),
        T0 + 360_000,
    );
    fixed(e, "01937a54-6960-7000-8000-0000000000d4")
}

fn check(name: &str, event: Event) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(&event).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    let want: serde_json::Value = serde_json::from_str(&expected).unwrap();
    let got: serde_json::Value = serde_json::from_str(&actual).unwrap();
    assert_eq!(got, want, "{name} differs from {}", path.display());
    // The golden document also reads back into the same typed event.
    let back: Event = serde_json::from_str(&expected).unwrap();
    assert_eq!(back, event);
}

#[test]
fn http_activity_matches_golden() {
    let e = http_blocked();
    assert_eq!(
        (e.class_uid, e.type_uid, e.disposition_id),
        (4002, 400203, Some(2))
    );
    check("http_activity", e);
}

#[test]
fn network_activity_matches_golden() {
    let e = network_tunnel_bypass();
    assert_eq!(
        (e.class_uid, e.type_uid, e.disposition_id),
        (4001, 400102, Some(1))
    );
    check("network_activity", e);
}

#[test]
fn detection_finding_matches_golden() {
    let e = alert_non_web_port();
    assert_eq!(
        (e.class_uid, e.type_uid, e.disposition_id),
        (2004, 200401, Some(19))
    );
    check("detection_finding", e);
}

#[test]
fn device_event_matches_golden() {
    let e = device_isolated();
    assert_eq!((e.class_uid, e.type_uid), (5002, 500299));
    check("device_config_state", e);
}

#[test]
fn squid_lines_of_the_golden_events_match_squid_native_format() {
    use rampart_events::sink::squid::render;
    assert_eq!(
        render(&http_blocked()).unwrap(),
        "1763900000.182    182 10.0.0.15 TCP_DENIED/403 2048 GET https://news.example.com/world/today alice HIER_NONE/- text/html"
    );
    assert_eq!(
        render(&network_tunnel_bypass()).unwrap(),
        "1763900060.000  60000 10.0.0.15 TCP_TUNNEL/200 1204772 CONNECT api.dropbox.com:443 alice HIER_DIRECT/198.51.100.7 -"
    );
    assert_eq!(render(&alert_non_web_port()), None);
    assert_eq!(render(&device_isolated()), None);
}

#[test]
fn cef_line_of_the_golden_alert() {
    let line = rampart_events::sink::cef::render(&alert_non_web_port());
    assert_eq!(
        line,
        "CEF:0|Rampart|Rampart|0.1.0|200401|Outbound connection to non-web port 4444|8|rt=1763900300000 \
         externalId=01937a53-7f00-7000-8000-0000000000c3 act=alert suser=alice shost=laptop-042 sproc=bash \
         src=10.0.0.15 spt=52344 dst=192.0.2.66 dpt=4444 in=0 out=0 cs1Label=rule cs1=alert on non-web ports \
         cs3Label=flow cs3=01937a4e-6b00-7000-8000-00000000f10a"
    );
}
