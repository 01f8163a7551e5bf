//! Safe policy reloads on a real gateway: a policy file caught mid-write (empty,
//! only comments, cut before its rules, cut mid-rule) never replaces the serving
//! policy, so a blocked site stays blocked while an editor writes the file; an
//! empty policy applies only when forced through the API; `[policy] tests` refuses
//! a revision that fails one of the policy's own cases, at reload and at start;
//! `rampart policy check` fails on an empty file.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::Origin;
use support::{eventually, rampart_bin, raw_exchange, run, Rampart};

const POLICY: &str = r#"# news is blocked for everyone
[lists]
news = ["news.test"]

[[access]]
id = "no-news"
name = "no news"
when = { lists = ["news"] }
action = "block"
"#;

const CASES: &str = r#"
[[case]]
name = "news stays blocked"
url = "http://news.test/"
expect = { access = "block" }
"#;

/// A gateway whose policy is `policy_toml` plus `extra_toml`; news.test and
/// other.test resolve to the origin's address.
fn gateway(dir: &Path, policy_toml: &str, extra_toml: &str) -> Result<Rampart, String> {
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    Rampart::try_start(
        &format!(
            "{policy_toml}\n[proxy]\nallow_loopback_destinations = true\n\
             [resolve]\n\"news.test\" = \"127.0.0.1\"\n\"other.test\" = \"127.0.0.1\"\n{extra_toml}"
        ),
        &[],
    )
}

/// Waits until the gateway watches its policy file: the watcher starts after the
/// listeners answer, and a change made before it would go unseen.
fn wait_for_watcher(gw: &Rampart) {
    assert!(
        eventually(Duration::from_secs(10), || gw
            .stderr()
            .contains("watching the policy for changes")),
        "{}",
        gw.stderr()
    );
}

fn policy_path(dir: &Path) -> PathBuf {
    dir.join("policy.toml")
}

/// The status code of `GET http://HOST:PORT/hello` through the proxy.
fn status_through(proxy: SocketAddr, host: &str, port: u16) -> u16 {
    let request = format!(
        "GET http://{host}:{port}/hello HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(proxy, request.as_bytes(), Duration::from_secs(10));
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An admin API call; returns (status, JSON body).
fn api(gw: &Rampart, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    gw.admin_api(method, path, body)
}

fn last_error(gw: &Rampart) -> String {
    let (_, status) = api(gw, "GET", "/api/v1/policy/status", "");
    status["last_error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn truncating_the_policy_file_while_traffic_runs_never_lets_a_blocked_site_through() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let path = policy_path(dir.path());
    let gw = gateway(
        dir.path(),
        &format!("policy = {:?}", path.display().to_string()),
        "",
    )
    .unwrap();
    wait_for_watcher(&gw);
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);

    let stop = Arc::new(AtomicBool::new(false));
    let (blocked, passed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, blocked, passed) = (stop.clone(), blocked.clone(), passed.clone());
        let (proxy, port) = (gw.proxy, origin.port());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match status_through(proxy, "news.test", port) {
                    403 => blocked.fetch_add(1, Ordering::Relaxed),
                    _ => passed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // What a reader can see while the file is rewritten in place: nothing, only the
    // comment, the lists without the rule, and a rule cut in the middle. Each is
    // held from a few milliseconds (caught by the settle wait) to longer than the
    // debounce (caught by the refusals), then the whole file comes back.
    let rule_at = POLICY.find("[[access]]").unwrap();
    let prefixes = [
        "",
        &POLICY[..POLICY.find('\n').unwrap() + 1],
        &POLICY[..rule_at],
        &POLICY[..rule_at + 30],
    ];
    let holds = [5u64, 150, 900];
    let started = Instant::now();
    for (i, prefix) in prefixes.iter().cycle().take(12).enumerate() {
        std::fs::write(&path, prefix).unwrap();
        std::thread::sleep(Duration::from_millis(holds[i % holds.len()]));
        std::fs::write(&path, POLICY).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(60), "took too long");
    }
    // Let the last rewrite settle while the client keeps asking.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let (blocked, passed) = (
        blocked.load(Ordering::Relaxed),
        passed.load(Ordering::Relaxed),
    );
    assert_eq!(
        passed,
        0,
        "a blocked site got through {passed} times ({blocked} blocked):\n{}",
        gw.stderr()
    );
    assert!(blocked >= 50, "only {blocked} requests");
    let (_, status) = api(&gw, "GET", "/api/v1/policy/status", "");
    assert!(
        status["reloads_rejected"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);
}

#[test]
fn an_empty_policy_file_is_refused_and_applies_only_when_forced() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let path = policy_path(dir.path());
    let gw = gateway(
        dir.path(),
        &format!("policy = {:?}", path.display().to_string()),
        "",
    )
    .unwrap();
    wait_for_watcher(&gw);
    std::fs::write(&path, "").unwrap();
    // The watcher refuses it, says why, and the old policy keeps blocking.
    assert!(
        eventually(Duration::from_secs(10), || last_error(&gw)
            .contains("policy file is empty")),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("policy file is empty"));
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload", "");
    assert_eq!(code, 422, "{status}");
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("policy file is empty"),
        "{status}"
    );

    // A policy with no rules replacing one with rules: refused too, with the way out.
    std::fs::write(&path, "[lists]\nnews = [\"news.test\"]\n").unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload", "");
    assert_eq!(code, 422, "{status}");
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("the new policy has no rules"), "{message}");
    assert!(message.contains("force=true"), "{message}");
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);

    // Forced (JSON body), the empty policy applies and news is allowed.
    std::fs::write(&path, "# allow everything\n").unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload", r#"{"force": true}"#);
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["rules"], 0, "{status}");
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 200);
    // And the query form works the same.
    let (code, _) = api(&gw, "POST", "/api/v1/policy/reload?force=true", "");
    assert_eq!(code, 200);
}

#[test]
fn a_policy_failing_its_own_test_case_is_refused_at_reload_and_the_answer_names_the_case() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let path = policy_path(dir.path());
    let cases = dir.path().join("cases.toml");
    std::fs::write(&cases, CASES).unwrap();
    let policy_table = format!(
        "[policy]\nfile = {:?}\ntests = {:?}",
        path.display().to_string(),
        cases.display().to_string()
    );
    let gw = gateway(dir.path(), &policy_table, "").unwrap();
    assert!(
        gw.stderr().contains("policy tests passed"),
        "{}",
        gw.stderr()
    );

    // A revision that blocks the wrong list: compiles, but fails "news stays blocked".
    std::fs::write(&path, POLICY.replace("news.test", "sports.test")).unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload", "");
    assert_eq!(code, 422, "{status}");
    let last = &status["last_error"];
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("case \"news stays blocked\""),
        "{status}"
    );
    assert_eq!(last["failed_cases"][0]["name"], "news stays blocked");
    assert!(
        last["failed_cases"][0]["failures"][0]
            .as_str()
            .unwrap()
            .contains("access: expected block, got allow"),
        "{status}"
    );
    assert!(
        gw.stderr().contains("news stays blocked"),
        "{}",
        gw.stderr()
    );
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);
    // Even forced: a failing case is never applied.
    let (code, _) = api(&gw, "POST", "/api/v1/policy/reload?force=true", "");
    assert_eq!(code, 422);
    assert_eq!(status_through(gw.proxy, "news.test", origin.port()), 403);

    // The same revision cannot start a gateway either.
    drop(gw);
    let out = run(Command::new(rampart_bin())
        .args(["server", "--config"])
        .arg(write_config(dir.path(), &policy_table)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("news stays blocked"), "{stderr}");
}

/// A minimal config for a start that must fail before it listens.
fn write_config(dir: &Path, policy_table: &str) -> PathBuf {
    let path = dir.join("failing.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n{policy_table}\n[proxy]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data2").display().to_string()
        ),
    )
    .unwrap();
    path
}

#[test]
fn policy_check_on_an_empty_or_comment_only_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.toml", ""), ("comments.toml", "# nothing yet\n\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(Command::new(rampart_bin())
            .args(["policy", "check"])
            .arg(&path));
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("policy file is empty"), "{name}: {stderr}");
    }
}
