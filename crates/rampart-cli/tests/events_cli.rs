//! `rampart events` end to end: the real binary on a real store.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_events::{
    AlertSpec, Bypass, BypassSite, Event, FlowSummary, Severity, StoreReader, TlsDecision, Verdict,
};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");
const T0: i64 = 1_763_900_000_000; // 2025-11-23T12:13:20Z

fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("COLUMNS", "160")
        .output()
        .unwrap()
}

fn flow(device: &str, user: &str, t: i64) -> FlowSummary {
    let mut f = FlowSummary::new(rampart_events::new_flow_id(), t - 100);
    f.end_ms = t;
    f.device_uid = Some(device.into());
    f.user = Some(user.into());
    f.src = Some("10.1.2.3:50000".parse().unwrap());
    f
}

/// A day in the life of two laptops: browsing, a block, a do-not-decrypt tunnel,
/// a client bypass, and an alert on laptop-1 at T0 + 10 min.
fn scenario() -> (Vec<Event>, String) {
    let mut events = Vec::new();
    for i in 0..40i64 {
        let dev = if i % 2 == 0 { "laptop-1" } else { "laptop-2" };
        let mut f = flow(
            dev,
            if i % 2 == 0 { "alice" } else { "bob" },
            T0 + i * 30_000,
        );
        f.host = Some(format!("site{i}.example"));
        f.url = Some(format!("https://site{i}.example/"));
        f.method = Some("GET".into());
        f.status = Some(200);
        f.categories = vec!["search".into()];
        f.tls_decision = Some(TlsDecision::Decrypt);
        events.push(f.http_event());
    }
    let mut blocked = flow("laptop-1", "alice", T0 + 9 * 60_000);
    blocked.host = Some("news.example.com".into());
    blocked.url = Some("https://news.example.com/".into());
    blocked.method = Some("GET".into());
    blocked.status = Some(403);
    blocked.categories = vec!["news".into()];
    blocked.verdict = Verdict::Block;
    blocked.rule_name = Some("no news for engineering".into());
    events.push(blocked.http_event());
    let mut dnd = flow("laptop-1", "alice", T0 + 9 * 60_000 + 30_000);
    dnd.host = Some("bank.example".into());
    dnd.dst = Some("192.0.2.10:443".parse().unwrap());
    dnd.categories = vec!["finance".into()];
    dnd.tls_decision = Some(TlsDecision::DoNotDecrypt);
    dnd.rule_name = Some("pinned and private".into());
    events.push(dnd.network_event());
    let mut bypass = flow("laptop-1", "alice", T0 + 9 * 60_000 + 40_000);
    bypass.reporter = "agent".into();
    bypass.host = Some("pypi.org".into());
    bypass.process_name = Some("python3.12".into());
    bypass.tls_decision = Some(TlsDecision::Bypass);
    bypass.bypass = Some(Bypass {
        at: BypassSite::Client,
        reason: "python to PyPI goes direct".into(),
    });
    events.push(bypass.network_event());
    let mut shell = flow("laptop-1", "alice", T0 + 10 * 60_000);
    shell.dst = Some("192.0.2.66:4444".parse().unwrap());
    shell.process_name = Some("bash".into());
    shell.verdict = Verdict::Alert;
    let net = shell.network_event();
    let alert = shell.alert_event(
        &AlertSpec {
            title: "non-web port 4444".into(),
            desc: None,
            severity: Severity::High,
            types: vec!["non-web-port".into()],
        },
        Some(net.id()),
    );
    let alert_id = alert.id().to_string();
    events.push(net);
    events.push(alert);
    (events, alert_id)
}

fn write_ndjson(path: &Path, events: &[Event]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for e in events {
        serde_json::to_writer(&mut f, e).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn imported() -> (tempfile::TempDir, PathBuf, Vec<Event>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (events, alert_id) = scenario();
    let file = dir.path().join("events.ndjson");
    write_ndjson(&file, &events);
    let data = dir.path().join("data");
    let out = rampart(&[
        "events",
        "import",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("stored {}", events.len())));
    (dir, data, events, alert_id)
}

#[test]
fn search_finds_blocks_do_not_decrypt_and_bypasses_in_every_format() {
    let (_dir, data, _events, _) = imported();
    let d = data.to_str().unwrap();
    let out = rampart(&[
        "events",
        "search",
        "action = block",
        "--data-dir",
        d,
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["host"], "news.example.com");
    assert_eq!(lines[0]["rule"], "no news for engineering");

    let out = rampart(&[
        "events",
        "search",
        "tls = do-not-decrypt or bypass = client",
        "--data-dir",
        d,
        "--format",
        "ocsf",
    ]);
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert!(docs.iter().all(|d| d["class_uid"] == 4001));
    assert!(docs
        .iter()
        .any(|d| d["unmapped"]["bypass"]["at"] == "client"));

    let out = rampart(&[
        "events",
        "search",
        "user = bob",
        "--data-dir",
        d,
        "--limit",
        "5",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].contains("TIME") && rows[0].contains("ACTION"));
    assert_eq!(rows.len(), 6, "header and 5 rows:\n{table}");
    assert!(
        rows.iter().all(|r| r.chars().count() <= 160),
        "fits the terminal"
    );

    let out = rampart(&[
        "events",
        "search",
        "",
        "--data-dir",
        d,
        "--from",
        "2025-11-23T12:13:20Z",
        "--to",
        "2025-11-23T12:15:20Z",
        "--format",
        "json",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}

#[test]
fn bad_query_fails_with_the_offending_column() {
    let (_dir, data, _, _) = imported();
    let out = rampart(&[
        "events",
        "search",
        "user = alice and actoin = block",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column 18") && err.contains("did you mean `action`"),
        "{err}"
    );
    assert!(
        err.contains("                 ^"),
        "caret under the column: {err}"
    );
}

#[test]
fn timeline_around_an_alert_is_complete_ordered_and_marks_the_alert() {
    let (_dir, data, events, alert_id) = imported();
    let d = data.to_str().unwrap();
    let out = rampart(&[
        "events",
        "timeline",
        "--alert",
        &alert_id,
        "--window",
        "5m",
        "--data-dir",
        d,
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alert_time = T0 + 10 * 60_000;
    let expected: Vec<String> = {
        let mut v: Vec<&Event> = events
            .iter()
            .filter(|e| {
                e.device_name() == Some("laptop-1") && (e.time - alert_time).abs() <= 300_000
            })
            .collect();
        v.sort_by_key(|e| e.time);
        v.iter().map(|e| e.id().to_string()).collect()
    };
    let got: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let got_set: std::collections::HashSet<_> = got.iter().collect();
    let want_set: std::collections::HashSet<_> = expected.iter().collect();
    assert_eq!(got_set, want_set, "complete");
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordered");
    let marked: Vec<_> = rows.iter().filter(|r| r["marked"] == true).collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0]["id"], alert_id.as_str());

    let out = rampart(&["events", "timeline", "--alert", &alert_id, "--data-dir", d]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("> ") && l.contains("ALERT non-web port 4444")),
        "{table}"
    );

    let out = rampart(&[
        "events",
        "timeline",
        "--device",
        "laptop-2",
        "--around",
        "2025-11-23T12:20:00Z",
        "--window",
        "1m",
        "--data-dir",
        d,
        "--format",
        "json",
    ]);
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        n, 2,
        "laptop-2 events every 60 s: two within ±1 min of 12:20:00"
    );
}

#[test]
fn tail_prints_events_as_they_are_stored() {
    let (dir, data, _, _) = imported();
    let d = data.to_str().unwrap().to_string();
    let mut tail = Command::new(BIN)
        .args([
            "events",
            "tail",
            "type = http",
            "--last",
            "0",
            "--count",
            "3",
            "--format",
            "json",
            "--data-dir",
            &d,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let fresh: Vec<Event> = (0..3)
        .map(|i| {
            let mut f = flow("laptop-9", "zoe", rampart_events::now_ms() + i);
            f.url = Some(format!("http://new{i}.example/"));
            f.http_event()
        })
        .collect();
    let file = dir.path().join("fresh.ndjson");
    write_ndjson(&file, &fresh);
    assert!(
        rampart(&["events", "import", file.to_str().unwrap(), "--data-dir", &d])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail did not print 3 events");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = tail.wait_with_output().unwrap();
    let users: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["user"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(users, vec!["zoe", "zoe", "zoe"]);
}

#[test]
fn kill_9_during_a_100k_event_burst_loses_nothing_that_was_reported_stored() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000u64;
    let now = rampart_events::now_ms();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let mut f = flow(&format!("dev-{}", i % 50), "burst", now + i as i64);
            f.url = Some(format!("https://burst.example/{i}"));
            f.http_event()
        })
        .collect();
    let file = dir.path().join("burst.ndjson");
    write_ndjson(&file, &events);
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args([
            "events",
            "import",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = 0u64;
    for line in lines.by_ref() {
        let line = line.unwrap();
        reported = line.strip_prefix("stored ").unwrap().parse().unwrap();
        if reported >= 20_000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        reported >= 20_000 && reported < n,
        "killed mid-burst at {reported}"
    );

    let store = StoreReader::open(&rampart_events::db_path(&data)).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let after_kill = store.count().unwrap();
    assert!(
        after_kill >= reported,
        "{after_kill} stored after kill, {reported} were reported durable"
    );
    drop(store);

    // Restart: the rest goes in, and nothing is stored twice.
    let out = rampart(&[
        "events",
        "import",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = StoreReader::open(&rampart_events::db_path(&data)).unwrap();
    assert_eq!(store.count().unwrap(), n);
    for e in events.iter().step_by(1009) {
        assert!(store.get(&e.id().to_string()).unwrap().is_some());
    }
}
