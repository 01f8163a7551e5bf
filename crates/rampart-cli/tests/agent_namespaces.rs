//! The enrolled agent in transparent mode, end to end in network namespaces (root).
//!
//! An "endpoint" namespace runs `rampart agent enroll` + `rampart agent run` (mode
//! `transparent`: its own nftables table redirects ports 80/443) and the real clients,
//! curl and python3 requests, with no proxy settings. A "servers" namespace runs
//! `rampart server` (gateway with TLS interception, API, agent tunnel listener) and the
//! origins; a plain HTTP origin records each client's address, so a flow the endpoint
//! made directly (10.78.0.1) is told apart from one the gateway relayed (10.78.0.2).
//! The steering rules come from the server's policy `[[steering]]` stage, delivered
//! over the agent's mTLS tunnel.

mod support;

use std::process::Output;
use std::time::Duration;

use support::netns::{
    root_or_skip, NetPair, NsAgent, NsServer, NsTlsOrigin, PeerOrigin, ENDPOINT_ADDR, SERVERS_ADDR,
};
use support::{eventually, KillOnDrop};

const HOSTS: &[&str] = &[
    "shop.test",
    "pypi.test",
    "pinned.test",
    "blocked.test",
    "allowed.test",
];

/// The policy: decrypt shop.test; python3 → pypi.test goes direct; curl → pinned.test
/// is tunnelled without decryption; curl → blocked.test is refused on the endpoint.
fn policy(python_log: bool, block_curl: bool) -> String {
    let mut p = format!(
        r#"
[[decryption]]
id = "decrypt-shop"
name = "decrypt the shop"
when = {{ hosts = ["shop.test", "pinned.test"] }}
action = "decrypt"

[[steering]]
id = "python-pypi-direct"
name = "python to pypi goes direct"
when = {{ processes = ["python3*"], hosts = ["pypi.test"] }}
action = "bypass"
log = {python_log}

[[steering]]
id = "pinned-app"
name = "pinned app is tunnelled without decryption"
when = {{ processes = ["curl"], hosts = ["pinned.test"] }}
action = "tunnel-bypass"
"#
    );
    if block_curl {
        p.push_str(
            r#"
[[steering]]
id = "no-curl-blocked"
name = "curl may not reach blocked.test"
when = { processes = ["curl"], hosts = ["blocked.test"] }
action = "block"
"#,
        );
    }
    p
}

/// The server's configuration: interception trusting the test origin's CA, the test
/// names resolved to the servers' address, and `agent_toml` as its `[agent]` table.
fn server_toml(policy: &std::path::Path, origin_ca: &std::path::Path, agent_toml: &str) -> String {
    let resolve: String = HOSTS
        .iter()
        .map(|h| format!("\"{h}\" = \"{SERVERS_ADDR}\"\n"))
        .collect();
    format!(
        "policy = {:?}\n[proxy]\n# Only the agent tunnel serves the endpoint; the proxy listener stays closed to it.\nallow_networks = [\"127.0.0.0/8\"]\nallow_loopback_destinations = true\ntls_ports = [443]\n\
         [resolve]\n{resolve}[tls]\nsystem_roots = false\nextra_roots = [{:?}]\n{agent_toml}",
        policy.display().to_string(),
        origin_ca.display().to_string(),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl from the endpoint namespace: (exit code, body, verbose stderr).
fn curl(pair: &NetPair, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-sS", "--max-time", "40"];
    all.extend_from_slice(args);
    let out = pair.on_endpoint("curl", &all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// python3 requests from the endpoint namespace: the body, or `error <Type>`.
fn python_get(pair: &NetPair, url: &str) -> String {
    let script = "import sys, requests\n\
        try:\n    r = requests.get(sys.argv[1], timeout=40)\n    print(r.status_code, r.text)\n\
        except Exception as e:\n    print('error', type(e).__name__, e)\n";
    text(&pair.on_endpoint("python3", &["-c", script, url]))
}

/// Waits for events matching `query` that satisfy `pred`; panics with all events.
fn wait_events(
    server: &NsServer,
    query: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let found = eventually(Duration::from_secs(30), || {
        events = server.search(query);
        pred(&events)
    });
    assert!(
        found,
        "no events for `{query}` as expected: {events:#?}\nall events: {:#?}",
        server.search("")
    );
    events
}

fn log_line<'a>(log: &'a str, prefix: &str, host: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.contains(prefix) && l.ends_with(&format!(", host: {host}")))
}

#[test]
fn server_steering_rules_steer_bypass_tunnel_bypass_and_block_in_transparent_mode() {
    if !root_or_skip(
        "server_steering_rules_steer_bypass_tunnel_bypass_and_block_in_transparent_mode",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(HOSTS);
    let http = PeerOrigin::start(&pair.servers, format!("{SERVERS_ADDR}:80").parse().unwrap());
    let tls = NsTlsOrigin::start(
        &pair,
        &pair.servers,
        format!("{SERVERS_ADDR}:443").parse().unwrap(),
        &["shop.test", "pinned.test"],
    );
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy(true, true)).unwrap();
    let server = NsServer::start(
        &pair,
        dir.path(),
        &server_toml(&policy_path, &tls.ca_pem, ""),
    );
    let mut agent = NsAgent::enroll_and_run(
        &pair,
        &server,
        dir.path(),
        "alice",
        "eng",
        "[gateway]\nconnect_timeout = \"5s\"\n[sync]\npoll_interval = \"1h\"\nupload_interval = \"300ms\"\n",
    );
    let agent_pid = agent.pid();

    // 1. Steered: curl and python3 reach the origin through the gateway, which sees
    // their process names, the device and the enrolled user.
    let (code, body, err) = curl(&pair, &["http://shop.test/hello"]);
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    assert_eq!(
        body,
        format!("origin saw {SERVERS_ADDR} for shop.test/hello")
    );
    let said = python_get(&pair, "http://shop.test/from-python");
    assert_eq!(
        said.trim(),
        format!("200 origin saw {SERVERS_ADDR} for shop.test/from-python"),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log_line(&log, "Tunneling connection from process: curl", "shop.test").is_some(),
        "{log}"
    );
    assert!(
        log_line(
            &log,
            "Tunneling connection from process: python3",
            "shop.test"
        )
        .is_some(),
        "{log}"
    );
    let events = wait_events(
        &server,
        &format!("device = {} and host = shop.test", agent.device),
        |events| {
            ["curl", "python3"].iter().all(|p| {
                events.iter().any(|e| {
                    e["process"].as_str().is_some_and(|n| n.starts_with(p)) && e["user"] == "alice"
                })
            })
        },
    );
    assert!(
        events
            .iter()
            .all(|e| e["bypass"].is_null() || e["bypass"] == ""),
        "steered flows are not bypasses: {events:#?}"
    );

    // 2. Bypass: python3 → pypi.test goes directly; the origin sees the endpoint.
    let said = python_get(&pair, "http://pypi.test/simple/");
    assert_eq!(
        said.trim(),
        format!("200 origin saw {ENDPOINT_ADDR} for pypi.test/simple/"),
        "{}",
        agent.log()
    );
    let seen = http.requests_for("pypi.test");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].peer.to_string(), ENDPOINT_ADDR);
    let log = agent.log();
    let line = log_line(
        &log,
        "Bypassing connection from process: python3",
        "pypi.test",
    )
    .unwrap_or_else(|| panic!("no bypass line:\n{log}"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        !server.access_log().iter().any(|r| r["target"]
            .as_str()
            .is_some_and(|t| t.contains("pypi.test"))),
        "the bypassed flow went through the gateway"
    );
    let events = wait_events(&server, "bypass = client and host = pypi.test", |e| {
        !e.is_empty()
    });
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert!(
        event["process"]
            .as_str()
            .unwrap_or("")
            .starts_with("python3"),
        "{event}"
    );
    assert_eq!(event["device"], agent.device.as_str(), "{event}");
    assert_eq!(event["user"], "alice", "{event}");
    assert_eq!(event["rule"], "python to pypi goes direct", "{event}");

    // 3. Tunnel-bypass: curl → pinned.test goes through the gateway, which has
    // interception on (a steered HTTPS flow to shop.test is re-signed by Rampart),
    // but relays pinned.test untouched: the origin's own certificate.
    let rampart_ca = server.interception_ca();
    let (code, body, err) = curl(
        &pair,
        &[
            "-v",
            "--cacert",
            rampart_ca.to_str().unwrap(),
            "https://shop.test/",
        ],
    );
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    assert!(err.contains("issuer: CN=Rampart Gateway CA"), "{err}");
    assert!(body.contains("s_server"), "{body}");
    let (code, body, err) = curl(
        &pair,
        &[
            "-v",
            "--cacert",
            tls.ca_pem.to_str().unwrap(),
            "https://pinned.test/",
        ],
    );
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    assert!(err.contains("issuer: CN=Rampart-Test-Origin-CA"), "{err}");
    assert!(body.contains("s_server"), "{body}");
    let log = agent.log();
    assert!(
        log_line(
            &log,
            "Bypassing connection by tunneling from process: curl",
            "pinned.test"
        )
        .is_some(),
        "{log}"
    );
    let mut record = None;
    eventually(Duration::from_secs(20), || {
        record = server
            .access_log()
            .into_iter()
            .find(|r| r["method"] == "CONNECT" && r["tls"]["sni"] == "pinned.test");
        record.is_some()
    });
    let record = record.unwrap_or_else(|| panic!("no gateway record: {:#?}", server.access_log()));
    // In transparent mode the agent tunnels to the original destination address and
    // names the host in its metadata; the ClientHello's SNI is what the gateway saw.
    assert_eq!(record["target"], format!("{SERVERS_ADDR}:443"), "{record}");
    assert_eq!(record["device"], agent.device.as_str(), "{record}");
    assert_eq!(record["process"]["name"], "curl", "{record}");
    assert_eq!(record["process"]["steering"], "tunnel-bypass", "{record}");
    assert_eq!(record["tls"]["decision"], "do-not-decrypt", "{record}");
    wait_events(
        &server,
        &format!(
            "device = {} and host = pinned.test and tls = do-not-decrypt",
            agent.device
        ),
        |e| {
            e.iter()
                .any(|e| e["process"] == "curl" && e["bypass"] == "gateway")
        },
    );

    // 4. Block: curl → blocked.test is refused on the endpoint and logged on both sides.
    let (_, body, err) = curl(&pair, &["-w", "\n%{http_code}", "http://blocked.test/x"]);
    assert!(body.ends_with("403"), "{body}{err}");
    assert!(http.requests_for("blocked.test").is_empty());
    let log = agent.log();
    let line = log_line(
        &log,
        "Dropping connection from process: curl",
        "blocked.test",
    )
    .unwrap_or_else(|| panic!("no block line:\n{log}"));
    assert!(line.contains(" WARN "), "{line}");
    let events = wait_events(
        &server,
        "bypass = client and action = block and host = blocked.test",
        |e| !e.is_empty(),
    );
    assert_eq!(events[0]["process"], "curl", "{events:#?}");
    assert_eq!(events[0]["device"], agent.device.as_str());

    // 5. Config update without a restart: the block rule goes, and python3's bypass
    // is no longer logged to the server (`log = false`).
    let old = agent
        .log()
        .matches("Agent config updated to revision")
        .count();
    std::fs::write(&policy_path, policy(false, false)).unwrap();
    let mut said = String::new();
    let applied = eventually(Duration::from_secs(60), || {
        let (ok, out) = agent.update();
        said = out;
        ok && agent
            .log()
            .matches("Agent config updated to revision")
            .count()
            > old
    });
    assert!(
        applied,
        "agent update never applied a new revision: {said}\n{}",
        agent.log()
    );
    assert!(
        agent.still_running() && agent.pid() == agent_pid,
        "the agent restarted"
    );
    let (code, body, err) = curl(&pair, &["http://blocked.test/x"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        body,
        format!("origin saw {SERVERS_ADDR} for blocked.test/x")
    );
    let said = python_get(&pair, "http://pypi.test/simple/again");
    assert!(
        said.contains(&format!("origin saw {ENDPOINT_ADDR}")),
        "{said}"
    );
    assert_eq!(
        agent
            .log()
            .matches("Bypassing connection from process: python3")
            .count(),
        2,
        "{}",
        agent.log()
    );
    // A later logged decision reaches the server, python3's second bypass never does.
    let before = server
        .search("bypass = client and host = pinned.test")
        .len();
    let (code, _, err) = curl(
        &pair,
        &[
            "--cacert",
            tls.ca_pem.to_str().unwrap(),
            "https://pinned.test/",
        ],
    );
    assert_eq!(code, 0, "{err}");
    wait_events(&server, "bypass = client and host = pinned.test", |e| {
        e.len() > before
    });
    assert_eq!(
        server.search("bypass = client and host = pypi.test").len(),
        1,
        "a log = false bypass was uploaded"
    );
}

#[test]
fn a_revoked_device_cannot_open_the_tunnel_and_the_agent_fails_closed() {
    revoked_device_follows_the_fail_mode(
        "a_revoked_device_cannot_open_the_tunnel_and_the_agent_fails_closed",
        true,
    );
}

#[test]
fn a_revoked_device_in_fail_open_mode_fails_closed_and_never_reaches_the_origin_directly() {
    revoked_device_follows_the_fail_mode(
        "a_revoked_device_in_fail_open_mode_fails_closed_and_never_reaches_the_origin_directly",
        false,
    );
}

/// The servers namespace with a plain and a TLS origin and `rampart server` (the
/// policy of [`policy`], with `server_tables` added to its config), and an agent
/// enrolled as bob (ops) with `agent_toml`, whose first request to shop.test went
/// through the tunnel. Fields drop in order: agent, server, origins, namespaces.
struct TunnelledAgent {
    agent: NsAgent,
    server: NsServer,
    _tls: NsTlsOrigin,
    http: PeerOrigin,
    pair: NetPair,
    dir: tempfile::TempDir,
}

impl TunnelledAgent {
    fn start(server_tables: &str, agent_toml: &str) -> TunnelledAgent {
        let dir = tempfile::tempdir().unwrap();
        let pair = NetPair::create(HOSTS);
        let http = PeerOrigin::start(&pair.servers, format!("{SERVERS_ADDR}:80").parse().unwrap());
        let tls = NsTlsOrigin::start(
            &pair,
            &pair.servers,
            format!("{SERVERS_ADDR}:443").parse().unwrap(),
            &["shop.test"],
        );
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy(true, true)).unwrap();
        let server = NsServer::start(
            &pair,
            dir.path(),
            &server_toml(&policy_path, &tls.ca_pem, server_tables),
        );
        let agent = NsAgent::enroll_and_run(&pair, &server, dir.path(), "bob", "ops", agent_toml);
        let (code, body, err) = curl(&pair, &["http://shop.test/before"]);
        assert_eq!(code, 0, "{err}\n{}", agent.log());
        assert_eq!(
            body,
            format!("origin saw {SERVERS_ADDR} for shop.test/before")
        );
        TunnelledAgent {
            agent,
            server,
            _tls: tls,
            http,
            pair,
            dir,
        }
    }
}

/// `rampart device revoke` in the data dir while the server runs: the tunnel
/// connection already open is closed at the listener's next check, the device
/// certificate opens no new tunnel, and steered flows fail closed (allowlist kept)
/// whatever the fail mode: a revoked device never goes direct. With `fail_closed`
/// the mode is closed, from the server's `[agent]` table (it overrides the agent's
/// local `fail_mode = "open"`); without, it is the agent's own `fail_mode = "open"`,
/// and the revocation still contains the device.
fn revoked_device_follows_the_fail_mode(test: &str, fail_closed: bool) {
    if !root_or_skip(test) {
        return;
    }
    let agent_table = if fail_closed {
        "[agent]\nfail_mode = \"closed\"\nfail_closed_allow = [\"allowed.test\"]\n"
    } else {
        ""
    };
    let scene = TunnelledAgent::start(
        agent_table,
        "[gateway]\nconnect_timeout = \"3s\"\nfail_mode = \"open\"\nfail_closed_allow = [\"allowed.test\"]\n[sync]\npoll_interval = \"1h\"\n",
    );
    let TunnelledAgent {
        agent,
        server,
        http,
        pair,
        ..
    } = &scene;

    // Revoke; the device certificate no longer opens a tunnel connection.
    let out = support::run(
        std::process::Command::new(support::rampart_bin())
            .args(["device", "revoke", &agent.device, "--data-dir"])
            .arg(server.data_dir()),
    );
    assert!(out.status.success(), "revoke: {}", text(&out));
    let url = format!("https://{}/api/v1/agent/config", server.tunnel);
    let with_device_cert = |pair: &NetPair| {
        curl(
            pair,
            &[
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                agent.state.join("gateway-ca.pem").to_str().unwrap(),
                "--cert",
                agent.state.join("device.pem").to_str().unwrap(),
                "--key",
                agent.state.join("device.key").to_str().unwrap(),
                &url,
            ],
        )
    };
    let (code, status, err) = with_device_cert(pair);
    assert!(
        code != 0 && status != "200",
        "a revoked device fetched its config: {status} {err}"
    );
    let refusals = |server: &NsServer| {
        server
            .stderr()
            .matches("agent tunnel refused: device revoked")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || refusals(server) >= 1),
        "{}",
        server.stderr()
    );

    // The agent's open tunnel connection is closed without a restart (the revocation
    // went to the data dir, so the listener finds it at its periodic check).
    assert!(
        eventually(Duration::from_secs(10), || server
            .stderr()
            .contains("agent tunnel closed: device revoked")),
        "the revoked device kept its open tunnel:\n{}",
        server.stderr()
    );
    let requests_before = http.requests_for("shop.test").len();
    let (code, body, _) = curl(pair, &["http://shop.test/after"]);
    let log = agent.log();
    assert!(
        code != 0 || !body.contains("origin saw"),
        "a steered flow of a revoked device passed without a tunnel: {body}"
    );
    assert_eq!(
        http.requests_for("shop.test").len(),
        requests_before,
        "a revoked device reached the origin directly"
    );
    assert!(
        log.lines().any(
            |l| l.contains("Dropping connection from process: curl, host: shop.test")
                && l.ends_with("(device revoked, fail-closed)")
        ),
        "{log}"
    );
    assert!(
        log.contains("Device certificate revoked by gateway"),
        "the agent's log does not say it fails closed:\n{log}"
    );
    assert!(
        !log.contains("(gateway unreachable, fail-open)"),
        "a revoked device went direct:\n{log}"
    );
    // The allowlisted host stays reachable, directly from the endpoint.
    let (code, body, err) = curl(pair, &["http://allowed.test/fix"]);
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    assert_eq!(
        body,
        format!("origin saw {ENDPOINT_ADDR} for allowed.test/fix")
    );
    assert!(agent.log().lines().any(|l| l
        .contains("Bypassing connection from process: curl, host: allowed.test")
        && l.ends_with("(device revoked, fail-closed allowlist)")));
    // Later flows dial the gateway again (after the agent's back-off) and are refused.
    assert!(
        eventually(Duration::from_secs(30), || {
            let _ = curl(pair, &["--max-time", "10", "http://shop.test/retry"]);
            refusals(server) >= 2
        }),
        "the agent never dialled the gateway again:\n{}",
        server.stderr()
    );
    let (code, _, _) = with_device_cert(pair);
    assert_ne!(code, 0, "the gateway admitted a revoked device");
}

#[test]
fn a_gateway_that_goes_silent_is_dropped_by_the_keepalive_and_flows_fail_open() {
    if !root_or_skip("a_gateway_that_goes_silent_is_dropped_by_the_keepalive_and_flows_fail_open") {
        return;
    }
    // Both ends ping: the agent every second, the gateway after 2 s of silence.
    let scene = TunnelledAgent::start(
        "[tunnel]\nkeepalive = \"2s\"\n",
        "[gateway]\nconnect_timeout = \"2s\"\nkeepalive = \"1s\"\nfail_mode = \"open\"\n[sync]\npoll_interval = \"1h\"\n",
    );
    let TunnelledAgent {
        agent,
        server,
        http,
        pair,
        dir,
        ..
    } = &scene;
    let up = format!("Tunnel to gateway {} up", server.tunnel);
    let ups_before = agent.log().matches(&up).count();
    assert!(ups_before >= 1, "{}", agent.log());

    // The gateway goes silent without closing anything: every packet to its tunnel
    // port is dropped (a cut link, or a NAT entry that expired on the way). No FIN,
    // no reset: only the keep-alive can tell.
    let port = server.tunnel.port();
    let blackhole = format!(
        "table inet rampart_test_blackhole {{\n chain input {{\n  type filter hook input priority -10;\n  tcp dport {port} drop\n }}\n}}\n"
    );
    let script = dir.path().join("blackhole.nft");
    let nft = |pair: &NetPair, rules: &str| {
        std::fs::write(&script, rules).unwrap();
        let out = support::run(pair.command(&pair.servers, "nft").arg("-f").arg(&script));
        assert!(out.status.success(), "nft: {}", text(&out));
    };
    nft(pair, &blackhole);
    let down = format!(
        "Tunnel to gateway {} down: no answer to a keep-alive PING in 1s",
        server.tunnel
    );
    assert!(
        eventually(Duration::from_secs(10), || agent.log().contains(&down)),
        "the agent kept a dead tunnel:\n{}",
        agent.log()
    );
    // The gateway, too, closes the connection of the agent it no longer hears.
    let gateway_closed = |server: &NsServer| {
        server.stderr().lines().any(|l| {
            l.contains("agent tunnel connection ended")
                && l.contains(&agent.device)
                && l.contains("keep-alive timed out")
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || gateway_closed(server)),
        "the gateway kept a dead agent connection:\n{}",
        server.stderr()
    );
    // The next flow dials again, times out, and takes the fail mode: directly.
    let (code, body, err) = curl(pair, &["--max-time", "15", "http://shop.test/silent"]);
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    assert_eq!(
        body,
        format!("origin saw {ENDPOINT_ADDR} for shop.test/silent")
    );
    assert!(
        agent.log().lines().any(|l| l
            .contains("Bypassing connection from process: curl, host: shop.test")
            && l.ends_with("(gateway unreachable, fail-open)")),
        "{}",
        agent.log()
    );

    // The gateway is back: flows are tunnelled again, on a new connection.
    nft(pair, "delete table inet rampart_test_blackhole");
    assert!(
        eventually(Duration::from_secs(40), || {
            let (_, body, _) = curl(pair, &["--max-time", "10", "http://shop.test/back"]);
            body == format!("origin saw {SERVERS_ADDR} for shop.test/back")
        }),
        "flows never went through the gateway again:\n{}",
        agent.log()
    );
    // On a new connection (counted loosely: a busy machine may miss a 1 s answer once).
    assert!(
        agent.log().matches(&up).count() > ups_before,
        "{}",
        agent.log()
    );
    assert!(!http.requests_for("shop.test").is_empty());
}

/// Echo servers on 4444 (a "reverse shell" port) and 5555 in the servers namespace.
fn start_echo_servers(pair: &NetPair) -> KillOnDrop {
    let script = format!(
        r#"import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{SERVERS_ADDR}", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: (c.sendall(b"echo:" + c.recv(1024)), c.close()), daemon=True).start()
for p in (4444, 5555):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
"#
    );
    let listening = [4444, 5555].map(|port| {
        format!("{SERVERS_ADDR}:{port}")
            .parse()
            .expect("socket address")
    });
    pair.python_servers(&script, &listening)
}

/// A raw TCP exchange from python3 in the endpoint namespace: what came back, or
/// `closed` / `error ...`.
fn python_tcp(pair: &NetPair, port: u16) -> String {
    let script = format!(
        r#"import socket
try:
    s = socket.create_connection(("{SERVERS_ADDR}", {port}), timeout=30)
    s.sendall(b"id")
    data = s.recv(1024)
    print(data.decode() if data else "closed")
except Exception as e:
    print("error", type(e).__name__, e)
"#
    );
    text(&pair.on_endpoint("python3", &["-c", &script]))
        .trim()
        .to_string()
}

/// Issue 6 item 7: in "steer all" mode a connection to any port (here a reverse
/// shell to 4444) goes through the gateway's policy and is logged with its process,
/// so it can be searched and alerted on; other ports are tunnelled and logged too.
#[test]
fn steer_all_sends_non_web_ports_through_policy_and_logs_their_process() {
    if !root_or_skip("steer_all_sends_non_web_ports_through_policy_and_logs_their_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(HOSTS);
    let tls = NsTlsOrigin::start(
        &pair,
        &pair.servers,
        format!("{SERVERS_ADDR}:443").parse().unwrap(),
        &["shop.test"],
    );
    let _echo = start_echo_servers(&pair);
    let policy_path = dir.path().join("policy.toml");
    let mut policy_text = policy(true, false);
    policy_text.push_str(
        r#"
[[access]]
id = "no-reverse-shells"
name = "no reverse shells"
when = { ports = [4444] }
action = "block"
"#,
    );
    std::fs::write(&policy_path, policy_text).unwrap();
    let server = NsServer::start(
        &pair,
        dir.path(),
        &server_toml(&policy_path, &tls.ca_pem, ""),
    );
    let agent = NsAgent::enroll_and_run_steering(
        &pair,
        &server,
        dir.path(),
        "carol",
        "eng",
        "steer_all = true",
        "[sync]\npoll_interval = \"1h\"\n",
    );

    // An allowed non-web port is tunnelled through the gateway and answered.
    assert_eq!(python_tcp(&pair, 5555), "echo:id", "{}", agent.log());
    // The reverse-shell port is refused by the gateway's policy.
    let refused = python_tcp(&pair, 4444);
    assert!(!refused.contains("echo:"), "{refused}\n{}", agent.log());

    let blocked = wait_events(&server, "dst_port = 4444", |e| !e.is_empty());
    assert!(
        blocked.iter().any(|e| e["process"] == "python3"
            && e["action"] == "block"
            && e["rule"] == "no reverse shells"
            && e["user"] == "carol"),
        "{blocked:#?}"
    );
    let allowed = wait_events(&server, "dst_port = 5555", |e| !e.is_empty());
    assert!(
        allowed
            .iter()
            .any(|e| e["process"] == "python3" && e["action"] == "allow"),
        "{allowed:#?}"
    );
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("Tunneling connection from process: python3")),
        "{}",
        agent.log()
    );
}
