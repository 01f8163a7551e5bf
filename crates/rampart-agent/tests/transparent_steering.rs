//! Transparent steering proved in network namespaces the tests create: an "endpoint"
//! namespace runs the agent, a "gateway" namespace a stand-in for the gateway's proxy
//! listener, an "origin" namespace a web server. Clients are real curl and python3.

mod support;

use rampart_agent::AgentConfig;
use support::*;

const PYTHON_GET: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
conn.request("GET", "/", headers={"Host": sys.argv[2]})
body = conn.getresponse().read().decode()
print(open("/proc/self/comm").read().strip() + "|" + body)
"#;

fn config(test: &str, gateway_port: u16, extra: &str) -> AgentConfig {
    let dir = data_dir(test);
    let text = format!(
        r#"
data_dir = "{dir}"
{extra}
[steering]
mode = "transparent"
[[steering.exceptions]]
name = "python to PyPI goes direct"
processes = ["python3*"]
hosts = ["pypi.org", "files.pythonhosted.org"]
action = "bypass"
[[steering.exceptions]]
name = "blocked host"
hosts = ["blocked.example"]
action = "block"
[gateway]
proxy = "{GATEWAY_ADDR}:{gateway_port}"
connect_timeout = "2s"
fail_closed_allow = ["allowed.example"]
[transparent]
table = "rampart_agent_test"
"#,
        dir = dir.display()
    );
    AgentConfig::from_toml(&text, "test agent.toml").expect("valid config")
}

fn with_fail_mode(test: &str, gateway_port: u16, mode: &str) -> AgentConfig {
    let mut config = config(test, gateway_port, "");
    config.gateway.fail_mode = match mode {
        "closed" => rampart_agent::FailMode::Closed,
        _ => rampart_agent::FailMode::Open,
    };
    config
}

fn python_get(topo: &Topology, addr: &str, host: &str) -> (String, String) {
    let out = topo.exec(&topo.endpoint, "python3", &["-c", PYTHON_GET, addr, host]);
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let (comm, body) = text.trim().split_once('|').expect("comm|body");
    (comm.to_string(), body.to_string())
}

#[test]
fn curl_is_steered_to_the_gateway_with_its_process_name() {
    if !root_or_skip("curl_is_steered_to_the_gateway_with_its_process_name") {
        return;
    }
    let topo = Topology::create();
    let records = start_gateway(&topo, 3128);
    start_origin(&topo);
    let agent = start_agent(Some(&topo.endpoint), config("steer-curl", 3128, "")).expect("agent");

    let out = topo.curl(&[&format!("http://{ORIGIN_ADDR}/")]);
    assert_eq!(out, "via-gateway", "curl went around the gateway");

    // HTTPS: the host comes from the SNI of curl's ClientHello.
    let _ = topo.exec(
        &topo.endpoint,
        "curl",
        &[
            "-sk",
            "-m",
            "5",
            "--resolve",
            &format!("origin.test:443:{ORIGIN_ADDR}"),
            "https://origin.test/",
        ],
    );
    let records = records.lock().expect("records").clone();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].target, format!("{ORIGIN_ADDR}:80"));
    assert_eq!(records[0].header("X-Rampart-Process"), Some("curl"));
    assert_eq!(records[0].header("X-Rampart-Steering"), Some("steer"));
    assert!(records[0].header("X-Rampart-Pid").is_some());
    assert_eq!(records[0].header("X-Rampart-User"), Some("root"));
    assert_eq!(records[1].target, format!("{ORIGIN_ADDR}:443"));
    assert_eq!(records[1].header("X-Rampart-Host"), Some("origin.test"));
    assert_eq!(records[1].header("X-Rampart-Process"), Some("curl"));

    let log = agent.log();
    assert!(
        log.contains(&format!(
            "INFO Tunneling connection from process: curl, host: {ORIGIN_ADDR}\n"
        )),
        "{log}"
    );
    assert!(
        log.contains("INFO Tunneling connection from process: curl, host: origin.test\n"),
        "{log}"
    );
    agent.stop().expect("clean shutdown");
}

#[test]
fn bypass_exception_sends_python_direct_and_logs_on_client() {
    if !root_or_skip("bypass_exception_sends_python_direct_and_logs_on_client") {
        return;
    }
    let topo = Topology::create();
    let records = start_gateway(&topo, 3128);
    start_origin(&topo);
    let agent =
        start_agent(Some(&topo.endpoint), config("bypass-python", 3128, "")).expect("agent");

    let (comm, body) = python_get(&topo, ORIGIN_ADDR, "pypi.org");
    assert_eq!(
        body,
        format!("origin saw {ENDPOINT_TO_ORIGIN}"),
        "not direct from the endpoint"
    );
    assert!(
        records.lock().expect("records").is_empty(),
        "bypass went through the gateway"
    );
    let line = format!("INFO Bypassing connection from process: {comm}, host: pypi.org\n");
    assert!(
        agent.log().contains(&line),
        "missing {line:?} in\n{}",
        agent.log()
    );

    // The same process to another host is steered, and the gateway learns it is python.
    let (_, body) = python_get(&topo, ORIGIN_ADDR, "example.org");
    assert_eq!(body, "via-gateway");
    let records = records.lock().expect("records").clone();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].header("X-Rampart-Process"), Some(comm.as_str()));
    assert!(comm.starts_with("python3"));
    agent.stop().expect("clean shutdown");
}

#[test]
fn block_exception_refuses_and_logs_the_drop() {
    if !root_or_skip("block_exception_refuses_and_logs_the_drop") {
        return;
    }
    let topo = Topology::create();
    let records = start_gateway(&topo, 3128);
    start_origin(&topo);
    let agent = start_agent(Some(&topo.endpoint), config("block", 3128, "")).expect("agent");

    let out = topo.curl_status(&[
        "-H",
        "Host: blocked.example",
        &format!("http://{ORIGIN_ADDR}/"),
    ]);
    assert_eq!(out, "403");
    assert!(records.lock().expect("records").is_empty());
    let log = agent.log();
    assert!(
        log.contains("WARN Dropping connection from process: curl, host: blocked.example\n"),
        "{log}"
    );
    assert_eq!(agent_counters_blocked(&log), 1);
    agent.stop().expect("clean shutdown");
}

fn agent_counters_blocked(log: &str) -> usize {
    log.matches("Dropping connection").count()
}

#[test]
fn quic_udp_443_is_rejected_only_while_steering() {
    if !root_or_skip("quic_udp_443_is_rejected_only_while_steering") {
        return;
    }
    let topo = Topology::create();
    start_origin(&topo);
    let probe = |port: &str| {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect(('{ORIGIN_ADDR}', {port}))\ntry:\n    s.send(b'quic?')\n    print(s.recv(100).decode())\nexcept (ConnectionRefusedError, PermissionError):\n    print('refused')\nexcept socket.timeout:\n    print('timeout')\n"
        );
        stdout(&topo.exec(&topo.endpoint, "python3", &["-c", &script]))
            .trim()
            .to_string()
    };
    assert_eq!(
        probe("443"),
        "quic?",
        "UDP 443 must work before the agent starts"
    );
    let agent = start_agent(Some(&topo.endpoint), config("quic", 3128, "")).expect("agent");
    assert_eq!(
        probe("443"),
        "refused",
        "QUIC must be rejected so clients fall back to TCP"
    );
    assert_eq!(probe("8443"), "quic?", "other UDP ports are untouched");
    agent.stop().expect("clean shutdown");
    assert_eq!(
        probe("443"),
        "quic?",
        "UDP 443 must work again after the agent stops"
    );
}

#[test]
fn deleting_the_steering_table_leaves_other_tables_untouched() {
    if !root_or_skip("deleting_the_steering_table_leaves_other_tables_untouched") {
        return;
    }
    let topo = Topology::create();
    topo.nft_script(
        &topo.endpoint,
        "table inet site_firewall {\n chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }\n}\ntable ip legacy_nat {\n chain post { type nat hook postrouting priority 100; policy accept; }\n}\n",
    );
    let before = topo.nft(&topo.endpoint, &["list", "ruleset"]);
    let agent = start_agent(Some(&topo.endpoint), config("table", 3128, "")).expect("agent");
    let during = topo.nft(&topo.endpoint, &["list", "tables"]);
    assert!(during.contains("table inet rampart_agent_test"), "{during}");
    assert!(during.contains("table inet site_firewall"), "{during}");
    let ours = topo.nft(
        &topo.endpoint,
        &["list", "table", "inet", "rampart_agent_test"],
    );
    assert!(ours.contains("redirect to :3131"), "{ours}");

    // A second start replaces the table atomically instead of failing or duplicating.
    agent.stop().expect("clean shutdown");
    let after = topo.nft(&topo.endpoint, &["list", "ruleset"]);
    assert_eq!(after, before, "other tables changed");
}

#[test]
fn unreachable_gateway_goes_direct_in_fail_open_mode() {
    if !root_or_skip("unreachable_gateway_goes_direct_in_fail_open_mode") {
        return;
    }
    let topo = Topology::create();
    start_origin(&topo);
    // Nothing listens on the gateway port: connections are refused at once.
    let agent = start_agent(
        Some(&topo.endpoint),
        with_fail_mode("fail-open", 3999, "open"),
    )
    .expect("agent");
    let out = topo.curl(&[&format!("http://{ORIGIN_ADDR}/")]);
    assert_eq!(out, format!("origin saw {ENDPOINT_TO_ORIGIN}"));
    let log = agent.log();
    assert!(
        log.contains(&format!("INFO Bypassing connection from process: curl, host: {ORIGIN_ADDR} (gateway unreachable, fail-open)\n")),
        "{log}"
    );
    agent.stop().expect("clean shutdown");
}

#[test]
fn unreachable_gateway_refuses_in_fail_closed_mode_except_the_allowlist() {
    if !root_or_skip("unreachable_gateway_refuses_in_fail_closed_mode_except_the_allowlist") {
        return;
    }
    let topo = Topology::create();
    start_origin(&topo);
    let agent = start_agent(
        Some(&topo.endpoint),
        with_fail_mode("fail-closed", 3999, "closed"),
    )
    .expect("agent");
    let refused = topo.curl_status(&[&format!("http://{ORIGIN_ADDR}/")]);
    assert_eq!(refused, "403");
    let allowed = topo.curl(&[
        "-H",
        "Host: allowed.example",
        &format!("http://{ORIGIN_ADDR}/"),
    ]);
    assert_eq!(allowed, format!("origin saw {ENDPOINT_TO_ORIGIN}"));
    let log = agent.log();
    assert!(
        log.contains(&format!("WARN Dropping connection from process: curl, host: {ORIGIN_ADDR} (gateway unreachable, fail-closed)\n")),
        "{log}"
    );
    assert!(log.contains("Bypassing connection from process: curl, host: allowed.example (gateway unreachable, fail-closed allowlist)"), "{log}");
    agent.stop().expect("clean shutdown");
}

const SILENT_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
time.sleep(1)  # say nothing at first, like a server-speaks-first protocol
try:
    s.sendall(b"PING / HTTP/1.1\r\n\r\n")
    data = s.recv(4096)
    print("closed" if not data else data.decode().split("\r\n\r\n")[-1])
except (ConnectionResetError, BrokenPipeError):
    print("closed")
"#;

#[test]
fn steer_all_mode_tunnels_and_blocks_non_web_ports_by_process() {
    if !root_or_skip("steer_all_mode_tunnels_and_blocks_non_web_ports_by_process") {
        return;
    }
    let topo = Topology::create();
    let records = start_gateway(&topo, 3128);
    start_origin(&topo);
    let mut config = config("steer-all", 3128, "");
    config.steering.steer_all = true;
    config.steering.exceptions.insert(
        0,
        rampart_agent::steering::ExceptionConfig {
            name: "no reverse shells".into(),
            processes: Vec::new(),
            paths: Vec::new(),
            hosts: Vec::new(),
            ports: vec![4444],
            action: rampart_agent::SteeringAction::Block,
            log: true,
        },
    );
    let agent = start_agent(Some(&topo.endpoint), config).expect("agent");

    // A client that stays silent is decided on the destination address after the
    // sniff timeout and still reaches the gateway.
    let out = topo.exec(
        &topo.endpoint,
        "python3",
        &["-c", SILENT_CLIENT, ORIGIN_ADDR, "2222"],
    );
    assert_eq!(
        stdout(&out).trim(),
        "via-gateway",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = topo.exec(
        &topo.endpoint,
        "python3",
        &["-c", SILENT_CLIENT, ORIGIN_ADDR, "4444"],
    );
    assert_eq!(stdout(&out).trim(), "closed");

    let records = records.lock().expect("records").clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].target, format!("{ORIGIN_ADDR}:2222"));
    assert!(records[0]
        .header("X-Rampart-Process")
        .is_some_and(|p| p.starts_with("python3")));
    assert_eq!(records[0].header("X-Rampart-Host"), None);
    let log = agent.log();
    assert!(
        log.contains("Tunneling connection from process: python3"),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("WARN Dropping connection from process: python3")
                && l.ends_with(&format!("host: {ORIGIN_ADDR}"))
        ),
        "{log}"
    );
    agent.stop().expect("clean shutdown");
}
