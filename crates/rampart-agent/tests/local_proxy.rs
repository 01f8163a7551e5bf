//! Local proxy mode without privileges: applications use the agent as HTTP(S)_PROXY on
//! 127.0.0.1; each request is attributed to its process and steered, bypassed or
//! blocked. The gateway and the origin are in-process stand-ins on loopback.

mod support;

use rampart_agent::AgentConfig;
use std::net::SocketAddr;
use std::process::Command;
use support::*;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn config(test: &str, gateway: SocketAddr) -> AgentConfig {
    let dir = data_dir(test);
    AgentConfig::from_toml(
        &format!(
            r#"
data_dir = "{dir}"
[steering]
mode = "local-proxy"
[[steering.exceptions]]
name = "python to the local index goes direct"
processes = ["python3*"]
hosts = ["localhost"]
action = "bypass"
[[steering.exceptions]]
name = "blocked host"
hosts = ["blocked.example"]
action = "block"
[gateway]
proxy = "{gateway}"
[local_proxy]
listen = "127.0.0.1:0"
"#,
            dir = dir.display()
        ),
        "test agent.toml",
    )
    .expect("valid config")
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn local_proxy_steers_curl_through_the_gateway_chain() {
    let (gateway, records) = start_gateway_at(None, loopback());
    let origin = start_origin_at(None, loopback());
    let agent = start_agent(None, config("lp-steer", gateway)).expect("agent");
    let proxy = format!("http://{}", agent.listen[0]);

    // Absolute-form request: tunneled with CONNECT to the origin's authority.
    let body = curl(&["-s", "-m", "5", "-x", &proxy, &format!("http://{origin}/")]);
    assert_eq!(body, "via-gateway");
    // CONNECT request (HTTPS): the gateway stand-in closes after recording it.
    let _ = curl(&[
        "-sk",
        "-m",
        "5",
        "-x",
        &proxy,
        "https://secure.example:8443/",
    ]);

    let records = records.lock().expect("records").clone();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].target, origin.to_string());
    assert_eq!(records[0].header("X-Rampart-Process"), Some("curl"));
    assert_eq!(records[1].target, "secure.example:8443");
    assert_eq!(records[1].header("X-Rampart-Host"), Some("secure.example"));
    let log = agent.log();
    assert!(
        log.contains("INFO Tunneling connection from process: curl, host: secure.example\n"),
        "{log}"
    );
    agent.stop().expect("clean shutdown");
}

#[test]
fn local_proxy_bypasses_python_directly_and_logs_it() {
    let (gateway, records) = start_gateway_at(None, loopback());
    let origin = start_origin_at(None, loopback());
    let agent = start_agent(None, config("lp-bypass", gateway)).expect("agent");
    let script = format!(
        "import urllib.request\nopener = urllib.request.build_opener(urllib.request.ProxyHandler({{'http': 'http://{}'}}))\nbody = opener.open('http://localhost:{}/', timeout=5).read().decode()\nprint(open('/proc/self/comm').read().strip() + '|' + body)\n",
        agent.listen[0],
        origin.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (comm, body) = text.trim().split_once('|').expect("comm|body");
    assert_eq!(body, "origin saw 127.0.0.1");
    assert!(
        records.lock().expect("records").is_empty(),
        "bypass went through the gateway"
    );
    let line = format!("INFO Bypassing connection from process: {comm}, host: localhost\n");
    assert!(
        agent.log().contains(&line),
        "missing {line:?} in\n{}",
        agent.log()
    );
    agent.stop().expect("clean shutdown");
}

#[test]
fn local_proxy_answers_blocked_hosts_with_403_and_logs_the_drop() {
    let (gateway, records) = start_gateway_at(None, loopback());
    let agent = start_agent(None, config("lp-block", gateway)).expect("agent");
    let proxy = format!("http://{}", agent.listen[0]);
    let status = curl(&[
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy,
        "http://blocked.example/",
    ]);
    assert_eq!(status, "403");
    let connect = curl(&[
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "-x",
        &proxy,
        "https://blocked.example/",
    ]);
    assert_eq!(connect, "403");
    assert!(records.lock().expect("records").is_empty());
    let log = agent.log();
    assert_eq!(
        log.matches("WARN Dropping connection from process: curl, host: blocked.example\n")
            .count(),
        2,
        "{log}"
    );
    agent.stop().expect("clean shutdown");
}

#[test]
fn local_proxy_reports_an_unreachable_gateway_as_502_in_fail_closed_mode() {
    // A port nobody listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut config = config("lp-fail-closed", dead);
    config.gateway.fail_mode = rampart_agent::FailMode::Closed;
    let agent = start_agent(None, config).expect("agent");
    let proxy = format!("http://{}", agent.listen[0]);
    let status = curl(&[
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy,
        "http://example.invalid/",
    ]);
    assert_eq!(status, "403");
    assert!(agent.log().contains("Dropping connection from process: curl, host: example.invalid (gateway unreachable, fail-closed)"));
    agent.stop().expect("clean shutdown");
}
