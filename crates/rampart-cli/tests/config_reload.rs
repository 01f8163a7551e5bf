//! What a reload of the configuration file does, through the real binary
//! (issue 15, "reload semantics on the config types"): an event sink added by
//! SIGHUP delivers; keys that need a restart are named in the reload answer
//! and the status; a policy file added by a reload is watched from then on.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::origin::Origin;
use support::{curl_status, eventually, Rampart};

const BASE: &str = "[proxy]\nallow_loopback_destinations = true\n";

fn status(gw: &Rampart) -> serde_json::Value {
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let out = support::run(std::process::Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("http://{}/api/v1/policy/status", gw.api),
    ]));
    let out = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status {out:?}: {e}"))
}

fn sink_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_sink_added_by_sighup_delivers_and_keys_needing_a_restart_are_named() {
    let origin = Origin::start();
    let gw = Rampart::start(BASE);
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?before"), &[]),
        200
    );

    let out = gw.dir.path().join("siem.ndjson");
    gw.rewrite_config(&format!(
        "{BASE}[access_log]\nenabled = false\n[[events.sinks]]\ntype = \"file\"\nname = \"siem\"\npath = {:?}\n",
        out.display().to_string()
    ));
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || status(&gw)["reloads_ok"] == 1),
        "the reload was not applied: {}\n{}",
        status(&gw),
        gw.stderr()
    );
    let st = status(&gw);
    assert_eq!(st["sinks_changed"], serde_json::json!(["siem (added)"]));
    assert_eq!(st["restart_required"], serde_json::json!(["access_log"]));
    assert!(
        gw.stderr().contains("take effect only after a restart")
            && gw.stderr().contains("access_log"),
        "the log names the keys that need a restart:\n{}",
        gw.stderr()
    );

    // Only requests after the reload reach the new sink, and they do.
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?after"), &[]),
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || sink_lines(&out)
            .iter()
            .any(|e| e.to_string().contains("after"))),
        "the sink added by SIGHUP got nothing: {:?}",
        sink_lines(&out)
    );
    // The access log was not turned off by the reload: it needs a restart.
    let log = gw.find_record(|r| r["target"].as_str().is_some_and(|u| u.contains("after")));
    assert_eq!(log["status"], 200);

    // Removing it stops delivery; the running process keeps serving.
    gw.rewrite_config(BASE);
    gw.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || status(&gw)
        ["reloads_ok"]
        == 2));
    let st = status(&gw);
    assert_eq!(st["sinks_changed"], serde_json::json!(["siem (removed)"]));
    assert_eq!(st["restart_required"], serde_json::json!([]));
    let delivered = sink_lines(&out).len();
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?gone"), &[]),
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink_lines(&out).len(), delivered);
}

#[test]
fn a_policy_added_by_a_reload_is_watched_for_changes() {
    let origin = Origin::start();
    let gw = Rampart::start(&format!("{BASE}[resolve]\n\"news.test\" = \"127.0.0.1\"\n"));
    let url = format!("http://news.test:{}/hello", origin.addr.port());
    assert_eq!(curl_status(&gw.proxy_url(), &url, &[]), 200);

    // The built-in policy served until now; SIGHUP adds a policy file.
    let policy = gw.dir.path().join("policy.toml");
    std::fs::write(&policy, "# nothing blocked yet\n[[access]]\nid = \"allow-all\"\nwhen = { hosts = [\"other.test\"] }\naction = \"allow\"\n").unwrap();
    gw.rewrite_config(&format!(
        "policy = {:?}\n{BASE}[resolve]\n\"news.test\" = \"127.0.0.1\"\n",
        policy.display().to_string()
    ));
    gw.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || status(&gw)
        ["reloads_ok"]
        == 1));
    assert_eq!(curl_status(&gw.proxy_url(), &url, &[]), 200);

    // Editing that file, without a signal, now reloads it.
    std::fs::write(
        &policy,
        "[[access]]\nid = \"no-news\"\nwhen = { hosts = [\"news.test\"] }\naction = \"block\"\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || curl_status(
            &gw.proxy_url(),
            &url,
            &[]
        ) == 403),
        "a policy added by SIGHUP was not watched: {}\n{}",
        status(&gw),
        gw.stderr()
    );
    assert_eq!(status(&gw)["reloads_ok"], 2);
}
