//! Issue 18 end to end in network namespaces (root): the seed 003/004 scenario. An
//! enrolled agent in steer-all mode on the "endpoint" namespace; `rampart server` and
//! an "attacker" (a second address, 10.78.0.3, never kept open by isolation) in the
//! "servers" namespace. A reverse shell to the attacker's port 4444 is blocked by
//! policy, the block event matches a `[[response]]` rule, the server isolates the
//! device and the agent confirms; the test measures the time from the attempt to the
//! confirmation and prints it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::netns::{root_or_skip, NetPair, NsAgent, NsServer, SERVERS_ADDR};
use support::{eventually, rampart_bin, run, KillOnDrop};

/// The attacker's address: in the servers namespace, but not the server's.
const ATTACKER: &str = "10.78.0.3";

/// TCP echo on the attacker's 4444 and 5555 and the server's 5555, UDP echo on the
/// attacker's 5556.
fn start_attacker(pair: &NetPair) -> KillOnDrop {
    let out = run(Command::new("ip").args([
        "-n",
        &pair.servers,
        "addr",
        "add",
        &format!("{ATTACKER}/24"),
        "dev",
        "toep",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = format!(
        r#"import socket, threading
def tcp(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: (c.sendall(b"echo:" + c.recv(1024)), c.close()), daemon=True).start()
def udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(1024)
        s.sendto(b"echo:" + data, peer)
for a, p in (("{ATTACKER}", 4444), ("{ATTACKER}", 5555), ("{SERVERS_ADDR}", 5555)):
    threading.Thread(target=tcp, args=(a, p), daemon=True).start()
threading.Thread(target=udp, args=("{ATTACKER}", 5556), daemon=True).start()
threading.Event().wait()
"#
    );
    let listening = [format!("{ATTACKER}:4444"), format!("{SERVERS_ADDR}:5555")]
        .map(|addr| addr.parse().expect("socket address"));
    pair.python_servers(&script, &listening)
}

/// From the endpoint: a TCP exchange with `addr:port` (`echo:id`, or `error ...`).
fn tcp(pair: &NetPair, addr: &str, port: u16) -> String {
    let script = format!(
        r#"import socket
try:
    s = socket.create_connection(("{addr}", {port}), timeout=3)
    s.settimeout(5)
    s.sendall(b"id")
    data = s.recv(1024)
    print(data.decode() if data else "closed")
except Exception as e:
    print("error", type(e).__name__, e)
"#
    );
    output(&pair.on_endpoint("python3", &["-c", &script]))
}

/// From the endpoint: a UDP datagram to the attacker's echo (`echo:id` or `error ...`).
fn udp(pair: &NetPair) -> String {
    let script = format!(
        r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(b"id", ("{ATTACKER}", 5556))
    print(s.recvfrom(1024)[0].decode())
except Exception as e:
    print("error", type(e).__name__, e)
"#
    );
    output(&pair.on_endpoint("python3", &["-c", &script]))
}

/// An ICMP echo to the attacker from the endpoint (a raw socket in python3: no ping
/// binary needed); true when it answered within a second.
fn ping(pair: &NetPair) -> bool {
    let script = format!(
        r#"import socket, struct, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1)
body = struct.pack("!BBHHH", 8, 0, 0, 0x5241, 1) + b"rampart!"
pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s.sendto(pkt, ("{ATTACKER}", 0))
end = time.time() + 1
try:
    while time.time() < end:
        data, peer = s.recvfrom(1024)
        if peer[0] == "{ATTACKER}" and data[20] == 0:
            print("reply")
            break
except Exception as e:
    print("error", e)
"#
    );
    output(&pair.on_endpoint("python3", &["-c", &script])) == "reply"
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

fn table_present(pair: &NetPair, table: &str) -> bool {
    pair.on_endpoint("nft", &["list", "table", "inet", table])
        .status
        .success()
}

/// `rampart device ...` against the running server's API, from the servers namespace.
fn device(pair: &NetPair, server: &NsServer, args: &[&str]) -> (bool, String) {
    let token = std::fs::read_to_string(server.data_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let out = run(pair
        .command(&pair.servers, rampart_bin())
        .arg("device")
        .args(args)
        .args([
            "--server",
            &format!("http://{}", server.api),
            "--token",
            &token,
        ]));
    (out.status.success(), output(&out))
}

fn status(pair: &NetPair, server: &NsServer, id: &str) -> serde_json::Value {
    let (ok, text) = device(pair, server, &["status", id, "--json"]);
    assert!(ok, "device status: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn wait_state(
    pair: &NetPair,
    server: &NsServer,
    agent_log: impl Fn() -> String,
    id: &str,
    state: &str,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = eventually(Duration::from_secs(30), || {
        last = status(pair, server, id);
        last["state"] == state && last["pending"] == false
    });
    assert!(
        ok,
        "device never {state}: {last:#}\nagent log:\n{}\nserver:\n{}",
        agent_log(),
        server.stderr()
    );
    last
}

#[test]
fn a_reverse_shell_alert_isolates_the_device_which_stays_isolated_until_released() {
    let test = "a_reverse_shell_alert_isolates_the_device_which_stays_isolated_until_released";
    if !root_or_skip(test) {
        return;
    }
    for tool in ["conntrack"] {
        if !support::have(tool) {
            assert!(std::env::var_os("CI").is_none(), "{test}: needs {tool}");
            eprintln!("SKIPPED {test}: needs {tool}");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(&[]);
    let _attacker = start_attacker(&pair);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[access]]
id = "no-reverse-shells"
name = "no reverse shells"
when = { ports = [4444] }
action = "block"
"#,
    )
    .unwrap();
    let server_toml = format!(
        "policy = {:?}\n[proxy]\nallow_networks = [\"127.0.0.0/8\"]\n\
         [[response]]\nname = \"reverse shell\"\nquery = \"dst_port = 4444 and action = block\"\naction = \"isolate\"\nrate_limit = 5\n",
        policy.display().to_string()
    );
    let server = NsServer::start(&pair, dir.path(), &server_toml);
    let agent = NsAgent::enroll_and_run_steering(
        &pair,
        &server,
        dir.path(),
        "carol",
        "eng",
        "steer_all = true",
        "",
    );
    let id = agent.device.clone();
    let log = || agent.log();

    // Before: the attacker answers on TCP (through the gateway), UDP and ICMP.
    assert_eq!(tcp(&pair, ATTACKER, 5555), "echo:id", "{}", log());
    assert_eq!(udp(&pair), "echo:id");
    assert!(ping(&pair), "the attacker answers ping before isolation");
    assert_eq!(status(&pair, &server, &id)["state"], "released");

    // The reverse shell: refused by policy; the block event triggers the rule.
    let started = Instant::now();
    let shell = tcp(&pair, ATTACKER, 4444);
    assert!(!shell.contains("echo:"), "{shell}");
    let view = wait_state(&pair, &server, log, &id, "isolated");
    let observed = started.elapsed();
    eprintln!(
        "ISOLATION LATENCY: reverse shell attempt -> isolation confirmed seen by the test: {} ms; \
         server request -> agent confirmation: {} ms",
        observed.as_millis(),
        view["confirm_latency_ms"]
    );
    assert_eq!(view["by"], "response:reverse shell", "{view:#}");
    let trigger = view["trigger_event"]
        .as_str()
        .expect("trigger event")
        .to_string();
    let blocked = server.search("dst_port = 4444");
    assert!(
        blocked
            .iter()
            .any(|e| e["id"] == trigger.as_str() && e["action"] == "block"),
        "the trigger {trigger} is the block event: {blocked:#?}"
    );
    assert!(view["self_test_error"].is_null(), "{view:#}");
    assert!(
        observed < Duration::from_secs(10),
        "isolation took {observed:?}"
    );

    // Isolated: nothing reaches the attacker, the tunnel and the server still work.
    assert!(table_present(&pair, "rampart_isolate"));
    assert!(
        tcp(&pair, ATTACKER, 5555).starts_with("error"),
        "TCP to the attacker"
    );
    assert!(udp(&pair).starts_with("error"), "UDP to the attacker");
    assert!(!ping(&pair), "ICMP to the attacker");
    assert_eq!(
        tcp(&pair, SERVERS_ADDR, 5555),
        "echo:id",
        "the agent's tunnel through the gateway still works\n{}",
        log()
    );
    let (ok, list) = device(&pair, &server, &["list"]);
    assert!(
        ok && list.contains(&id) && list.contains("isolated"),
        "{list}"
    );
    let events = server.search("type = device");
    assert!(
        events.iter().any(|e| e["device"] == id.as_str()
            && e["rule"] == "reverse shell"
            && e["message"].as_str().unwrap_or("").contains(&trigger)),
        "an isolated device event names the rule and the trigger: {events:#?}"
    );

    // Deleting the table by hand is drift: reported and repaired within the check.
    assert!(pair
        .on_endpoint("nft", &["delete", "table", "inet", "rampart_isolate"])
        .status
        .success());
    assert!(
        eventually(Duration::from_secs(15), || table_present(
            &pair,
            "rampart_isolate"
        ) && log()
            .contains("Isolation drift")),
        "drift repaired\n{}",
        log()
    );
    assert!(!ping(&pair), "isolated again after the drift was repaired");

    // Reports the server got so far: the restarted agent must add one.
    let reports_before = server.stderr().matches("isolation report").count();
    // kill -9: the table stays; a restarted agent finds it and reports isolated again.
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        table_present(&pair, "rampart_isolate"),
        "the table outlives the agent"
    );
    assert!(!ping(&pair), "still isolated with no agent running");
    let restarted = KillOnDrop(
        pair.command(&pair.endpoint, rampart_bin())
            .args(["agent", "run", "--config"])
            .arg(&agent.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart the agent"),
    );
    assert!(
        eventually(Duration::from_secs(30), || log()
            .contains("Isolation at start: isolated")),
        "{}",
        log()
    );
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(30), || {
            last = status(&pair, &server, &id);
            last["state"] == "isolated"
                && server.stderr().matches("isolation report").count() > reports_before
        }),
        "the restarted agent reports isolated: {last:#}\n{}",
        log()
    );

    // Release: connectivity back, and another table is left alone.
    assert!(pair
        .on_endpoint("nft", &["add", "table", "inet", "test_keep"])
        .status
        .success());
    let (ok, text) = device(
        &pair,
        &server,
        &["release", &id, "--reason", "investigated"],
    );
    assert!(ok, "{text}");
    wait_state(&pair, &server, log, &id, "released");
    assert!(!table_present(&pair, "rampart_isolate"));
    assert!(
        table_present(&pair, "test_keep"),
        "release deletes only its own table"
    );
    assert!(ping(&pair), "ICMP after release");
    assert_eq!(udp(&pair), "echo:id", "UDP after release");
    let (ok, text) = device(&pair, &server, &["release", &id]);
    assert!(
        ok && text.contains("nothing changed"),
        "release is idempotent: {text}"
    );

    // Break-glass: isolate again, issue a code, use it on the endpoint once.
    let (ok, text) = device(&pair, &server, &["isolate", &id, "--reason", "second look"]);
    assert!(ok, "{text}");
    wait_state(&pair, &server, log, &id, "isolated");
    let (ok, code) = device(&pair, &server, &["release-code", &id]);
    assert!(ok, "{code}");
    let code = code.lines().next().unwrap_or_default().trim().to_string();
    let state_file = agent.state.join("isolation-server.json");
    assert!(
        eventually(Duration::from_secs(15), || std::fs::read_to_string(
            &state_file
        )
        .unwrap_or_default()
        .contains("\"salt\"")),
        "the code's hash reaches the agent"
    );
    let release = |code: &str| {
        let out = run(pair
            .command(&pair.endpoint, rampart_bin())
            .args(["agent", "release", "--code", code, "--config"])
            .arg(&agent.config));
        (out.status.success(), output(&out))
    };
    let (ok, text) = release("WRONG-CODE0-00000-00000");
    assert!(!ok && text.contains("wrong break-glass code"), "{text}");
    assert!(!ping(&pair), "a wrong code releases nothing");
    let (ok, text) = release(&code.to_lowercase());
    assert!(ok, "{text}");
    assert!(ping(&pair), "break-glass released the device");
    let (ok, text) = release(&code);
    assert!(
        !ok && text.contains("already used"),
        "works once only: {text}"
    );
    let view = wait_state(&pair, &server, log, &id, "released");
    assert_eq!(view["by"], "break-glass", "{view:#}");
    assert!(
        log().contains("Isolation released with break-glass code"),
        "{}",
        log()
    );
    assert!(
        eventually(Duration::from_secs(15), || log()
            .contains("Break-glass release reported")),
        "{}",
        log()
    );
    assert!(
        ping(&pair),
        "the agent does not re-isolate after break-glass"
    );
    drop(restarted);
}
