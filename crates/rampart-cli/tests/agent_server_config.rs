//! Steering configuration from the server and upload of the agent's decisions, end to
//! end with the real `rampart server` and an enrolled `rampart agent run` in
//! local-proxy mode (no root needed; the transparent path shares the same decision
//! code and is covered by crates/rampart-agent/tests/transparent_steering.rs).
//!
//! A policy `[[steering]]` rule reaches the agent over its mTLS tunnel and is applied:
//! python3 requests bypasses the gateway (the origin is reached, the gateway never sees
//! the flow) with the exact agent-log line, and the decision is searchable on the server
//! with `bypass = client`; a `block` rule refuses curl and is uploaded; `rampart agent
//! update` applies an edited policy without a restart (and `log = false` keeps the
//! decision off the server); the config endpoint answers 304 to the current ETag;
//! decisions made while the server is down are uploaded once it is back.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::origin::Origin;
use support::{events_search, eventually, free_port, rampart_bin, run, Rampart};

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rampart(args: &[&str]) -> Output {
    run(Command::new(rampart_bin()).args(args))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn policy(python_action: &str, python_log: bool) -> String {
    format!(
        r#"
[[steering]]
name = "python goes direct"
when = {{ processes = ["python3*"], hosts = ["localhost"] }}
action = "{python_action}"
log = {python_log}

[[steering]]
name = "no curl to localhost"
when = {{ processes = ["curl"], hosts = ["localhost"] }}
action = "block"
"#
    )
}

fn start_server(data: Option<&Path>, policy: &Path, tunnel: SocketAddr) -> Rampart {
    let mut args = vec![
        "--tunnel-listen".to_string(),
        tunnel.to_string(),
        "--policy".to_string(),
        policy.display().to_string(),
    ];
    if let Some(data) = data {
        args.push("--data-dir".into());
        args.push(data.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Rampart::start_with_args("[proxy]\nallow_loopback_destinations = true\n", &args);
    assert!(
        eventually(Duration::from_secs(15), || TcpStream::connect(tunnel)
            .is_ok()),
        "tunnel listener never came up:\n{}",
        gw.stderr()
    );
    gw
}

fn search(data: &Path, query: &str) -> Vec<serde_json::Value> {
    events_search(data, &[query, "--format", "json", "--since", "1h"])
}

fn python_get(proxy: SocketAddr, url: &str) -> (bool, String) {
    let script = "import sys, requests\n\
        try:\n    r = requests.get(sys.argv[2], proxies={'http': sys.argv[1]}, timeout=20)\n    print(r.status_code)\n\
        except Exception as e:\n    print('error', type(e).__name__)\n";
    let out = run(Command::new("python3")
        .args(["-c", script, &format!("http://{proxy}"), url])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy"));
    let (stdout, stderr) = text(&out);
    (stdout.trim() == "200", format!("{stdout}{stderr}"))
}

fn curl_status(proxy: SocketAddr, url: &str) -> String {
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
        "-x",
        &format!("http://{proxy}"),
        url,
    ]));
    text(&out).0.trim().to_string()
}

fn agent_log(state: &Path) -> String {
    std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
}

/// GET /api/v1/agent/config with the device certificate, as the agent does: status and ETag.
fn config_over_tunnel(state: &Path, tunnel: SocketAddr, etag: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--http2",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--max-time",
        "20",
    ])
    .arg("--cacert")
    .arg(state.join("gateway-ca.pem"))
    .arg("--cert")
    .arg(state.join("device.pem"))
    .arg("--key")
    .arg(state.join("device.key"));
    if let Some(etag) = etag {
        cmd.args(["-H", &format!("If-None-Match: {etag}")]);
    }
    cmd.arg(format!(
        "https://localhost:{}/api/v1/agent/config",
        tunnel.port()
    ));
    let (headers, _) = text(&run(&mut cmd));
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let etag = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("etag:")
                .then(|| l[5..].trim().to_string())
        })
        .unwrap_or_default();
    (status, etag)
}

#[test]
fn server_steering_rules_reach_the_agent_and_its_decisions_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy("bypass", true)).unwrap();
    let tunnel: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = start_server(None, &policy_path, tunnel);
    let data = gw.data_dir();
    let origin = Origin::start();
    let url = format!("http://localhost:{}/hello", origin.port());

    // Enroll, then run the agent with a long poll interval: only start-up and
    // `agent update` fetch.
    let out = rampart(&[
        "device",
        "token",
        "create",
        "--user",
        "alice",
        "--groups",
        "eng",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let token = text(&out).0.trim().to_string();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n[local_proxy]\nlisten = \"{proxy}\"\n\
             [gateway]\nconnect_timeout = \"2s\"\n[sync]\npoll_interval = \"1h\"\nupload_interval = \"300ms\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = rampart(&[
        "agent",
        "enroll",
        "--server",
        &format!("http://{}", gw.api),
        "--token",
        &token,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "enroll failed: {:?}", text(&out));
    let start_agent = || {
        ChildGuard(
            Command::new(rampart_bin())
                .args(["agent", "run", "--config", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = start_agent();
    assert!(eventually(Duration::from_secs(15), || TcpStream::connect(
        proxy
    )
    .is_ok()));
    assert!(
        eventually(Duration::from_secs(15), || agent_log(&state)
            .contains("Agent config updated to revision")),
        "the agent never applied the server config:\n{}",
        agent_log(&state)
    );
    assert!(state.join("server-config.json").exists());

    // bypass: python3 reaches the origin directly; the gateway never sees the flow.
    let before = origin.requests.load(Ordering::SeqCst);
    let (ok, said) = python_get(proxy, &url);
    assert!(ok, "python3 requests through the agent failed: {said}");
    assert_eq!(origin.requests.load(Ordering::SeqCst), before + 1);
    let log = agent_log(&state);
    assert!(
        log.lines()
            .any(|l| l.contains("Bypassing connection from process: python3")
                && l.ends_with(", host: localhost")),
        "{log}"
    );
    assert!(
        !gw.access_log().iter().any(|r| r["target"]
            .as_str()
            .is_some_and(|t| t.contains(&origin.port().to_string()))),
        "the bypassed flow went through the gateway:\n{:#?}",
        gw.access_log()
    );
    assert!(
        eventually(Duration::from_secs(15), || !search(
            &data,
            "bypass = client and process = python3 and user = alice"
        )
        .is_empty()),
        "no client bypass event for python3 on the server"
    );
    let event = &search(&data, "bypass = client and process = python3")[0];
    assert_eq!(
        event["device"].as_str().map(|d| d.starts_with("dev-")),
        Some(true),
        "{event}"
    );
    assert_eq!(event["rule"], "python goes direct", "{event}");

    // block: curl is refused by the agent and the decision is uploaded.
    assert_eq!(curl_status(proxy, &url), "403");
    assert!(agent_log(&state).contains("Dropping connection from process: curl, host: localhost"));
    assert!(
        eventually(Duration::from_secs(15), || search(
            &data,
            "process = curl and action = block and bypass = client"
        )
        .len()
            == 1),
        "no uploaded block event for curl"
    );

    // ETag: the current revision answers 304.
    let (status, etag) = config_over_tunnel(&state, tunnel, None);
    assert_eq!(status, 200);
    assert!(!etag.is_empty());
    assert_eq!(config_over_tunnel(&state, tunnel, Some(&etag)).0, 304);
    let old_revision = etag.trim_matches('"').to_string();

    // Edit the policy: python3 is now blocked, without logging to the server.
    std::fs::write(&policy_path, policy("block", false)).unwrap();
    let mut applied = String::new();
    let updated = eventually(Duration::from_secs(30), || {
        let out = rampart(&["agent", "update", "--config", config.to_str().unwrap()]);
        applied = text(&out).0;
        out.status.success() && applied.contains("applied") && !applied.contains(&old_revision)
    });
    assert!(
        updated,
        "agent update never applied a new revision: {applied}"
    );
    assert!(applied.starts_with("config revision "), "{applied}");
    let new_revision = applied.split_whitespace().nth(2).unwrap().to_string();
    assert!(agent_log(&state).contains(&format!("config updated to revision {new_revision}")));
    let before = origin.requests.load(Ordering::SeqCst);
    let (ok, _) = python_get(proxy, &url);
    assert!(!ok, "python3 must be refused after the update");
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);
    assert!(agent_log(&state).contains("Dropping connection from process: python3"));
    let (status, _) =
        rampart(&["agent", "status", "--config", config.to_str().unwrap()]).pipe(|o| text(&o));
    assert!(
        status.contains(&format!("revision {new_revision}")),
        "{status}"
    );
    // A later logged decision is uploaded, the python3 one (log = false) never is.
    assert_eq!(curl_status(proxy, &url), "403");
    assert!(eventually(Duration::from_secs(15), || search(
        &data,
        "process = curl and action = block"
    )
    .len()
        == 2));
    assert!(search(&data, "process = python3 and action = block").is_empty());

    // Server down: decisions are spooled, and uploaded once it is back.
    gw.signal(nix::sys::signal::Signal::SIGKILL);
    gw.wait_exit(Duration::from_secs(10));
    assert_eq!(curl_status(proxy, &url), "403", "the rule stays in force");
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(state.join("upload-spool.jsonl"))
                .unwrap_or_default()
                .contains("curl")
        }),
        "the decision was not spooled"
    );
    // A restart of the agent while the server is down keeps the last config and spool.
    drop(agent);
    agent = start_agent();
    assert!(eventually(Duration::from_secs(15), || TcpStream::connect(
        proxy
    )
    .is_ok()));
    assert_eq!(curl_status(proxy, &url), "403", "persisted config applies");
    let gw = start_server(Some(&data), &policy_path, tunnel);
    assert!(
        eventually(Duration::from_secs(60), || search(
            &data,
            "process = curl and action = block"
        )
        .len()
            == 4),
        "spooled decisions were not uploaded after the server came back: {:#?}\n{}",
        search(&data, "process = curl"),
        agent_log(&state)
    );
    drop(agent);
    drop(gw);
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}
