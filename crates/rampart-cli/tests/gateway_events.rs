//! Traffic through the gateway becomes events in the embedded store: an
//! allowed request, a blocked one and an alert, found with `rampart events
//! search` and through the API with the admin token.

#[path = "console/common.rs"]
mod common;
mod support;

use std::process::Command;

use support::origin::Origin;

#[test]
fn allowed_blocked_and_alerted_requests_are_events_in_the_store_and_api() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    // Waits until the three requests are durable in the store.
    let gw = common::events_server(&origin, dir.path(), None);
    let blocked = gw.search_events("action = block", "json");
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0]["host"], "blocked.test");
    assert_eq!(blocked[0]["rule"], "blocked hosts");

    let allowed = gw.search_events("host = ok.test", "json");
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["status"], 200);

    let alerts = gw.search_events("type = alert", "json");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["host"], "watched.test");

    // The API answers the same query with the admin token from the data dir.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-G", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg("--data-urlencode")
        .arg("q=action = block")
        .arg(format!("http://{}/api/v1/events", gw.api))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("blocked.test"), "{body}");
    assert!(!body.contains("ok.test"), "{body}");
    let unauthorized = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/api/v1/events", gw.api))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unauthorized.stdout), "401");
    assert!(gw.metrics().contains("rampart_events_dropped 0"));
}
