//! Traffic through the gateway becomes events in the embedded store: an
//! allowed request, a blocked one and an alert, found with `rampart events
//! search` and through the API with the admin token.

mod support;

use std::process::Command;
use std::time::Duration;

use support::origin::Origin;
use support::{curl, eventually, Rampart};

const POLICY: &str = r#"
[lists]
blocked = ["blocked.test"]
watched = ["watched.test"]

[[access]]
id = "block-list"
name = "blocked hosts"
when = { lists = ["blocked"] }
action = "block"

[[access]]
id = "watch-list"
name = "watched hosts"
when = { lists = ["watched"] }
action = "alert"
"#;

#[test]
fn allowed_blocked_and_alerted_requests_are_events_in_the_store_and_api() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let gw = Rampart::start(&format!(
        "policy = {:?}\n[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"ok.test\" = \"127.0.0.1\"\n\"blocked.test\" = \"127.0.0.1\"\n\"watched.test\" = \"127.0.0.1\"\n",
        policy.display().to_string()
    ));
    let port = origin.port();
    for host in ["ok.test", "blocked.test", "watched.test"] {
        curl(&gw.proxy_url(), &[&format!("http://{host}:{port}/hello")]);
    }

    // Durable within about a second of the flow's end (group commit).
    assert!(
        eventually(Duration::from_secs(10), || gw
            .search_events("", "json")
            .len()
            >= 4),
        "events: {:?}",
        gw.search_events("", "json")
    );
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
