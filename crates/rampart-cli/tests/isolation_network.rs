//! Issue 18 end to end, the network side, in network namespaces the tests create
//! (root; CI runs as root). An enrolled `rampart agent run` in steer-all mode on the
//! "endpoint" namespace; `rampart server`, an attacker (10.78.0.3 and fd78::3), a jump
//! host (10.78.0.4) and a second management host in the "servers" namespace; a "lan"
//! namespace with a real `dnsmasq` serving DHCP to the endpoint's real `udhcpc`.
//! Nothing leaves these namespaces.
//!
//! Proven here: IPv6 is cut as strictly as IPv4 and comes back at release; an open
//! TCP connection dies at isolation (its conntrack entry is gone, the flow stops);
//! the DHCP lease renews and DNS to the configured resolver (only) answers while
//! isolated; the `[isolation]` jump-host exception lets
//! exactly that TCP port through; the device's timeline shows who isolated and
//! released it and why; a kept host name that moves is refreshed without reloading
//! the rules. An ignored test measures the p95 figures of bench/RESULTS.md.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_testkit::netns::{addr_up, veth, Netns};
use support::netns::{in_netns, ip, root_or_skip, NetPair, NsAgent, NsServer};
use support::{eventually, have, rampart_bin, run, KillOnDrop};

const ATTACKER4: &str = "10.78.0.3";
const ATTACKER6: &str = "fd78::3";
const JUMP: &str = "10.78.0.4";
/// Where the management host name points first, and where it moves.
const MGMT_FIRST: &str = "10.78.0.5";
const MGMT_MOVED: &str = "10.78.0.6";
const MGMT_NAME: &str = "mgmt.rampart.test";
const DHCP_SERVER: &str = "10.79.0.2";
const DHCP_LEASE: &str = "10.79.0.10";
/// The name the lan's resolver gives the jump host.
const JUMP_NAME: &str = "jump.rampart.test";
/// How long a blocked attempt may take before it counts as dropped.
const BLOCKED: Duration = Duration::from_millis(700);

/// Root, the namespace tools, and `extra` tools; a missing one fails under CI.
fn ready(test: &str, extra: &[&str]) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let missing: Vec<&&str> = extra.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why =
        format!("{test}: needs {missing:?} (Debian packages conntrack, dnsmasq-base, udhcpc)");
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED {why}");
    false
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// IPv6 on the endpoint–servers link, the peers' addresses, and their echo servers:
/// TCP (every chunk answered with `echo:` + chunk, the connection kept open) on the
/// attacker's 4444 and 5555 (both families), the jump host's 22 and 23 and the
/// management addresses' 22; UDP on the attacker's 5556 (both families) and 53 (a
/// DNS server that is not the configured resolver).
fn start_peers(pair: &NetPair) -> KillOnDrop {
    ip(&[
        "-n",
        &pair.endpoint,
        "-6",
        "addr",
        "add",
        "fd78::1/64",
        "dev",
        "tosv",
        "nodad",
    ]);
    ip(&[
        "-n",
        &pair.servers,
        "-6",
        "addr",
        "add",
        &format!("{ATTACKER6}/64"),
        "dev",
        "toep",
        "nodad",
    ]);
    for addr in [ATTACKER4, JUMP, MGMT_FIRST, MGMT_MOVED] {
        ip(&[
            "-n",
            &pair.servers,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "toep",
        ]);
    }
    let script = format!(
        r#"import socket, threading
def serve(c):
    try:
        while True:
            data = c.recv(1024)
            if not data:
                break
            c.sendall(b"echo:" + data)
    except OSError:
        pass
    c.close()
def tcp(family, addr, port):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(family, addr, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(1024)
        s.sendto(b"echo:" + data, peer)
V4, V6 = socket.AF_INET, socket.AF_INET6
for f, a, p in ((V4, "{ATTACKER4}", 4444), (V4, "{ATTACKER4}", 5555), (V6, "{ATTACKER6}", 5555),
                (V4, "{JUMP}", 22), (V4, "{JUMP}", 23), (V4, "{MGMT_FIRST}", 22), (V4, "{MGMT_MOVED}", 22)):
    threading.Thread(target=tcp, args=(f, a, p), daemon=True).start()
for f, a, p in ((V4, "{ATTACKER4}", 5556), (V6, "{ATTACKER6}", 5556), (V4, "{ATTACKER4}", 53)):
    threading.Thread(target=udp, args=(f, a, p), daemon=True).start()
threading.Event().wait()
"#
    );
    pair.python_servers(
        &script,
        &[
            sock(ATTACKER4, 5555),
            sock(ATTACKER6, 5555),
            sock(MGMT_MOVED, 22),
        ],
    )
}

/// From the endpoint (steered by the agent like any process): send `id` over a new
/// TCP connection; the answer, or `error ...`.
fn tcp(pair: &NetPair, target: SocketAddr) -> String {
    in_netns(&pair.endpoint, move || {
        let mut stream = match TcpStream::connect_timeout(&target, BLOCKED) {
            Ok(s) => s,
            Err(e) => return format!("error connect: {e}"),
        };
        exchange(&mut stream, b"id", Duration::from_secs(5))
    })
}

/// One exchange on an open stream: the answer, or `error ...`.
fn exchange(stream: &mut TcpStream, data: &[u8], timeout: Duration) -> String {
    let _ = stream.set_read_timeout(Some(timeout));
    if let Err(e) = stream.write_all(data) {
        return format!("error write: {e}");
    }
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => "error closed".to_string(),
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => format!("error read: {e}"),
    }
}

/// A UDP round trip from the endpoint.
fn udp(pair: &NetPair, target: SocketAddr) -> bool {
    in_netns(&pair.endpoint, move || {
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let Ok(socket) = UdpSocket::bind(bind) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(BLOCKED));
        if socket.send_to(b"id", target).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(socket.recv_from(&mut buf), Ok((n, from)) if from == target && &buf[..n] == b"echo:id")
    })
}

/// An ICMP or ICMPv6 echo from the endpoint (a raw socket in python3; no ping binary
/// needed); true when it was answered within `BLOCKED`.
fn ping(pair: &NetPair, target: &str) -> bool {
    let script = format!(
        r#"import socket, struct, time
target = "{target}"
v6 = ":" in target
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    pkt = struct.pack("!BBHHH", 128, 0, 0, 0x5241, 1) + b"rampart!"
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    body = struct.pack("!BBHHH", 8, 0, 0, 0x5241, 1) + b"rampart!"
    pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s.settimeout({timeout})
s.sendto(pkt, (target, 0))
end = time.time() + {timeout}
try:
    while time.time() < end:
        data, peer = s.recvfrom(1024)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if peer[0] == target and icmp[0] == (129 if v6 else 0):
            print("reply")
            break
except Exception as e:
    print("error", e)
"#,
        timeout = BLOCKED.as_secs_f64()
    );
    let out = pair.on_endpoint("python3", &["-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim() == "reply"
}

/// Everything the IPv6 attacker can be reached by: (what, reached).
fn attacker6_reachable(pair: &NetPair) -> Vec<(&'static str, bool)> {
    vec![
        ("tcp6", tcp(pair, sock(ATTACKER6, 5555)) == "echo:id"),
        ("udp6", udp(pair, sock(ATTACKER6, 5556))),
        ("icmp6", ping(pair, ATTACKER6)),
    ]
}

fn conntrack_entries(pair: &NetPair, family: &str, peer: &str) -> String {
    let out = pair.on_endpoint("conntrack", &["-L", "-f", family, "-d", peer]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A third namespace, "lan", joined to the endpoint by a second veth pair: a real
/// `dnsmasq` serves DHCP on it (one address, 10.79.0.10) and DNS (the configured
/// resolver: it knows the jump host's name), and a real
/// `udhcpc` on the endpoint holds the lease. `udhcpc` renews on SIGUSR1 by unicast
/// to the server through the kernel's UDP socket, so the renewal crosses the
/// endpoint's nftables hooks (its first discovery uses raw sockets, which do not).
struct DhcpLan {
    dir: PathBuf,
    dnsmasq: Option<KillOnDrop>,
    udhcpc: Option<KillOnDrop>,
    // Deleted after the two programs have stopped (fields drop in order).
    _ns: Netns,
}

impl DhcpLan {
    fn start(pair: &NetPair, dir: &Path) -> DhcpLan {
        let ns = format!("{}dh", pair.endpoint);
        let dir = dir.join("dhcp");
        std::fs::create_dir_all(&dir).expect("dhcp dir");
        let lan_ns = Netns::create(&ns);
        let mut lan = DhcpLan {
            dir: dir.clone(),
            dnsmasq: None,
            udhcpc: None,
            _ns: lan_ns,
        };
        veth(&pair.endpoint, "todh", &ns, "toep");
        ip(&["-n", &pair.endpoint, "link", "set", "todh", "up"]);
        addr_up(&ns, "toep", &format!("{DHCP_SERVER}/24"));
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--interface=toep",
                "--bind-interfaces",
                "--no-ping",
                "--user=root",
                "--log-dhcp",
            ])
            .arg(format!(
                "--dhcp-range={DHCP_LEASE},{DHCP_LEASE},255.255.255.0,2m"
            ))
            .arg(format!("--listen-address={DHCP_SERVER}"))
            .arg(format!("--address=/{JUMP_NAME}/{JUMP}"))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        lan.dnsmasq = Some(KillOnDrop(dnsmasq));
        // The client's script records each event and configures the address, as a
        // distribution's default script would.
        let script = dir.join("udhcpc.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1 $ip $serverid\" >> {events}\ncase \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;; esac\n",
                events = dir.join("events").display()
            ),
        )
        .expect("udhcpc script");
        run(Command::new("chmod").arg("755").arg(&script));
        let log = std::fs::File::create(dir.join("udhcpc.log")).expect("udhcpc log");
        let udhcpc = pair
            .command(&pair.endpoint, "udhcpc")
            .args(["-f", "-i", "todh", "-t", "10", "-T", "1", "-s"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start udhcpc");
        lan.udhcpc = Some(KillOnDrop(udhcpc));
        assert!(
            eventually(Duration::from_secs(20), || lan.events().contains("bound")),
            "no DHCP lease: {}\n{}",
            lan.client_log(),
            lan.server_log()
        );
        lan
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.dir.join("events")).unwrap_or_default()
    }

    fn client_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("udhcpc.log")).unwrap_or_default()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Ask `udhcpc` to renew now (SIGUSR1); true when the lease was renewed by the
    /// unicast exchange with the server, not by the raw-socket broadcast `udhcpc`
    /// falls back to when the kernel refuses its packet.
    fn renew(&self) -> Result<(), String> {
        let Some(client) = &self.udhcpc else {
            return Err("udhcpc is not running".into());
        };
        let (renewals, log_before, acks) = (
            self.events().matches("renew").count(),
            self.client_log().len(),
            self.server_log().matches("DHCPACK").count(),
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(client.0.id() as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| format!("signal udhcpc: {e}"))?;
        let renewed = eventually(Duration::from_secs(5), || {
            self.events().matches("renew").count() > renewals
        });
        let log = self.client_log();
        let said = log.get(log_before..).unwrap_or_default().to_string();
        if !renewed {
            return Err(format!("no renewal within 5 s; udhcpc said:\n{said}"));
        }
        if !said.contains("sending renew to server") || said.contains("broadcasting renew") {
            return Err(format!("the unicast renewal did not get through:\n{said}"));
        }
        if said.contains("Operation not permitted") {
            return Err(format!("the kernel refused the renewal:\n{said}"));
        }
        if self.server_log().matches("DHCPACK").count() <= acks {
            return Err(format!(
                "dnsmasq acknowledged nothing:\n{}",
                self.server_log()
            ));
        }
        Ok(())
    }
}

/// The endpoint's resolver is the lan's dnsmasq: `ip netns exec` mounts this file over
/// /etc/resolv.conf for the processes it starts afterwards.
fn use_lan_resolver(pair: &NetPair) {
    let etc = PathBuf::from("/etc/netns").join(&pair.endpoint);
    std::fs::write(
        etc.join("resolv.conf"),
        format!("nameserver {DHCP_SERVER}\noptions timeout:1 attempts:1\n"),
    )
    .expect("write the endpoint's resolv.conf");
}

/// `getent ahostsv4 NAME` on the endpoint (glibc's resolver, as any program uses it):
/// the first address, or the error.
fn lookup(pair: &NetPair, name: &str) -> String {
    let out = pair.on_endpoint("getent", &["ahostsv4", name]);
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(addr) if out.status.success() => addr.to_string(),
        _ => format!("error: exit {:?}", out.status.code()),
    }
}

/// `rampart device ...` against the server's API, from the servers namespace.
fn device(pair: &NetPair, server: &NsServer, args: &[&str]) -> (bool, String) {
    let out = run(pair
        .command(&pair.servers, rampart_bin())
        .arg("device")
        .args(args)
        .args(["--server", &format!("http://{}", server.api)])
        .arg(format!("--token={}", admin_token(server))));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The device's console page as an admin sees it: a console user added with
/// `rampart user add`, then curl in the servers' namespace: the login form's
/// CSRF token, the login, the page. Cookies are passed by hand: the API here is
/// plain HTTP beyond loopback, so they carry `Secure` (a TLS proxy is assumed in
/// front) and curl would not keep them.
fn console_device_page(pair: &NetPair, server: &NsServer, id: &str) -> String {
    const PASSWORD: &str = "console-password-1";
    let mut add = pair
        .command(&pair.servers, rampart_bin())
        .args(["user", "add", "root", "--role", "admin", "--data-dir"])
        .arg(server.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("rampart user add");
    writeln!(add.stdin.take().expect("stdin"), "{PASSWORD}").expect("password");
    assert!(
        add.wait().expect("user add").success(),
        "rampart user add failed"
    );
    let base = format!("http://{}", server.api);
    let curl = |args: &[&str]| -> String {
        let out = run(pair
            .command(&pair.servers, "curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cookie = |answer: &str, name: &str| -> String {
        answer
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .find_map(|l| l.split_once(&format!("{name}=")))
            .and_then(|(_, v)| v.split(';').next())
            .map(|v| format!("{name}={}", v.trim()))
            .unwrap_or_else(|| panic!("no {name} cookie in: {answer}"))
    };
    let form = curl(&[&format!("{base}/login")]);
    let login_csrf = cookie(&form, "rampart_login_csrf");
    let marker = "name=\"csrf\" value=\"";
    let csrf = form
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_string())
        .unwrap_or_else(|| panic!("no csrf field in the login form: {form}"));
    let login = curl(&[
        "-H",
        &format!("Cookie: {login_csrf}"),
        "--data-urlencode",
        "username=root",
        "--data-urlencode",
        &format!("password={PASSWORD}"),
        "--data-urlencode",
        &format!("csrf={csrf}"),
        &format!("{base}/login"),
    ]);
    let session = cookie(&login, "rampart_session");
    curl(&[
        "-H",
        &format!("Cookie: {session}"),
        &format!("{base}/devices/{id}"),
    ])
}

fn admin_token(server: &NsServer) -> String {
    std::fs::read_to_string(server.data_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string()
}

/// `GET /api/v1/devices/{id}/isolation` straight over HTTP (no process start: the
/// latency measurement polls it every few milliseconds).
fn isolation_view(pair: &NetPair, server: &NsServer, id: &str) -> serde_json::Value {
    let (api, token, path) = (
        server.api,
        admin_token(server),
        format!("/api/v1/devices/{id}/isolation"),
    );
    let body = in_netns(&pair.servers, move || {
        let mut stream = TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok()?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    })
    .unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn wait_state(
    pair: &NetPair,
    server: &NsServer,
    agent: &NsAgent,
    state: &str,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = eventually(Duration::from_secs(30), || {
        last = isolation_view(pair, server, &agent.device);
        last["state"] == state && last["pending"] == false
    });
    assert!(
        ok,
        "device never {state}: {last:#}\nagent log:\n{}\nserver:\n{}",
        agent.log(),
        server.stderr()
    );
    last
}

/// The server (with `server_toml` first: top-level keys, then tables) and an enrolled
/// agent in steer-all mode.
fn server_and_agent(pair: &NetPair, dir: &Path, server_toml: &str) -> (NsServer, NsAgent) {
    let server = NsServer::start(
        pair,
        dir,
        &format!("{server_toml}\n[proxy]\nallow_networks = [\"127.0.0.0/8\"]\n"),
    );
    let agent =
        NsAgent::enroll_and_run_steering(pair, &server, dir, "dana", "eng", "steer_all = true", "");
    (server, agent)
}

#[test]
fn while_isolated_ipv6_and_open_flows_are_cut_dhcp_and_dns_keep_working_and_only_the_jump_host_passes(
) {
    let test =
        "while_isolated_ipv6_and_open_flows_are_cut_dhcp_and_dns_keep_working_and_only_the_jump_host_passes";
    if !ready(test, &["conntrack", "dnsmasq", "udhcpc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(&[]);
    let _peers = start_peers(&pair);
    let lan = DhcpLan::start(&pair, dir.path());
    use_lan_resolver(&pair);
    let exceptions = dir.path().join("exceptions.pf");
    std::fs::write(
        &exceptions,
        format!("# the incident team's jump host, SSH only\njump = \"{JUMP}\"\npass out proto tcp to $jump port ssh\n"),
    )
    .unwrap();
    let (server, agent) = server_and_agent(
        &pair,
        dir.path(),
        &format!(
            "[isolation]\nexceptions = {:?}\nresolvers = [\"{DHCP_SERVER}\"]\n",
            exceptions.display().to_string()
        ),
    );
    let id = agent.device.clone();

    // Before: every peer answers, over both families; two connections are open.
    let reach = attacker6_reachable(&pair);
    assert!(
        reach.iter().all(|(_, ok)| *ok),
        "before isolation: {reach:?}\n{}",
        agent.log()
    );
    assert_eq!(tcp(&pair, sock(ATTACKER4, 5555)), "echo:id");
    assert_eq!(tcp(&pair, sock(JUMP, 23)), "echo:id");
    assert!(
        ping(&pair, DHCP_SERVER),
        "the DHCP server answers ping before"
    );
    assert_eq!(
        lookup(&pair, JUMP_NAME),
        JUMP,
        "DNS through the lan's resolver"
    );
    assert!(udp(&pair, sock(ATTACKER4, 53)), "another DNS server before");
    let open = |target: SocketAddr| {
        in_netns(&pair.endpoint, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("open a connection")
        })
    };
    let mut shell4 = open(sock(ATTACKER4, 5555));
    let mut shell6 = open(sock(ATTACKER6, 5555));
    assert_eq!(
        exchange(&mut shell4, b"ls", Duration::from_secs(5)),
        "echo:ls"
    );
    assert_eq!(
        exchange(&mut shell6, b"ls", Duration::from_secs(5)),
        "echo:ls"
    );
    assert!(
        conntrack_entries(&pair, "ipv4", ATTACKER4).contains("dport=5555"),
        "the open flow is tracked before isolation"
    );

    // Isolate by command, with a reason.
    let (ok, text) = device(
        &pair,
        &server,
        &["isolate", &id, "--reason", "IR-7 beaconing"],
    );
    assert!(ok, "{text}");
    let view = wait_state(&pair, &server, &agent, "isolated");
    assert!(view["self_test_error"].is_null(), "{view:#}");
    assert_eq!(view["by"], "admin", "{view:#}");
    // The console shows what the agent confirmed, not only what was asked.
    let page = console_device_page(&pair, &server, &id);
    assert!(
        page.contains("<dd id=\"isolation-state\" class=\"bad\">isolated</dd>"),
        "{page}"
    );
    assert!(page.contains("<dt>Confirmed</dt>"), "{page}");
    assert!(!page.contains("<dt>Pending</dt>"), "{page}");

    // IPv6 is isolated as strictly as IPv4.
    let reach = attacker6_reachable(&pair);
    assert!(
        reach.iter().all(|(_, ok)| !*ok),
        "IPv6 peer reachable while isolated: {reach:?}"
    );
    assert!(tcp(&pair, sock(ATTACKER4, 5555)).starts_with("error"));
    assert!(!ping(&pair, ATTACKER4));

    // The open connections are cut: no conntrack entry left, and no answer.
    assert!(
        !conntrack_entries(&pair, "ipv4", ATTACKER4).contains("dport=5555"),
        "the open IPv4 flow's entry is deleted:\n{}",
        conntrack_entries(&pair, "ipv4", ATTACKER4)
    );
    assert!(
        !conntrack_entries(&pair, "ipv6", ATTACKER6).contains("dport=5555"),
        "the open IPv6 flow's entry is deleted"
    );
    let said = exchange(&mut shell4, b"id", BLOCKED);
    assert!(
        said.starts_with("error"),
        "the open IPv4 connection still answers: {said}"
    );
    let said = exchange(&mut shell6, b"id", BLOCKED);
    assert!(
        said.starts_with("error"),
        "the open IPv6 connection still answers: {said}"
    );

    // DHCP keeps working: the lease renews by unicast to a server that is otherwise
    // unreachable.
    assert!(
        !ping(&pair, DHCP_SERVER),
        "the DHCP server is not kept otherwise"
    );
    lan.renew()
        .unwrap_or_else(|e| panic!("DHCP renewal while isolated: {e}"));

    // DNS goes to the configured resolver only.
    assert_eq!(
        lookup(&pair, JUMP_NAME),
        JUMP,
        "DNS to the configured resolver while isolated"
    );
    assert!(
        !udp(&pair, sock(ATTACKER4, 53)),
        "no DNS to a server that is not a configured resolver"
    );

    // The jump-host exception: exactly its SSH port.
    assert_eq!(
        tcp(&pair, sock(JUMP, 22)),
        "echo:id",
        "the jump host's SSH passes\n{}",
        agent.log()
    );
    assert!(
        tcp(&pair, sock(JUMP, 23)).starts_with("error"),
        "only port 22"
    );
    assert!(!ping(&pair, JUMP), "only TCP to port 22");
    assert!(
        tcp(&pair, sock(ATTACKER4, 22)).starts_with("error"),
        "only the jump host"
    );
    let listing = pair.on_endpoint("nft", &["list", "table", "inet", "rampart_isolate"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains(&format!("ip daddr {JUMP} tcp dport 22")) && listing.contains("line 3"),
        "{listing}"
    );

    // Release: both families come back, the lease still renews.
    let (ok, text) = device(
        &pair,
        &server,
        &["release", &id, "--reason", "IR-7 closed: false positive"],
    );
    assert!(ok, "{text}");
    wait_state(&pair, &server, &agent, "released");
    let reach = attacker6_reachable(&pair);
    assert!(reach.iter().all(|(_, ok)| *ok), "after release: {reach:?}");
    assert_eq!(tcp(&pair, sock(ATTACKER4, 5555)), "echo:id");
    assert!(ping(&pair, DHCP_SERVER));
    lan.renew()
        .unwrap_or_else(|e| panic!("DHCP renewal after release: {e}"));

    // The device's timeline: isolated and released, who and why.
    let out = run(Command::new(rampart_bin())
        .args([
            "events",
            "timeline",
            "--device",
            &id,
            "--window",
            "10m",
            "--data-dir",
        ])
        .arg(server.data_dir()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let events: Vec<serde_json::Value> = {
        let out = run(Command::new(rampart_bin())
            .args([
                "events",
                "timeline",
                "--device",
                &id,
                "--window",
                "10m",
                "--format",
                "json",
                "--data-dir",
            ])
            .arg(server.data_dir()));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // Who is the event's user; what and why are its message.
    let said = |what: &str, why: &str| {
        events.iter().any(|e| {
            e["type"] == "device"
                && e["user"] == "admin"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m == format!("{what} by admin: {why}"))
        })
    };
    assert!(
        said("isolated", "IR-7 beaconing") && said("released", "IR-7 closed: false positive"),
        "the timeline shows who isolated and released the device and why:\n{table}\n{events:#?}"
    );
    assert!(
        table.contains("Isolated: isolated by admin")
            && table.contains("Released: released by admin"),
        "{table}"
    );
    // The connections around it are there too, for "5 minutes before and after".
    assert!(
        events
            .iter()
            .any(|e| e["dst_ip"] == ATTACKER6 && e["dst_port"] == 5555),
        "{table}"
    );
}

#[test]
fn a_kept_host_name_that_moves_is_refreshed_in_place_without_reloading_the_rules() {
    let test = "a_kept_host_name_that_moves_is_refreshed_in_place_without_reloading_the_rules";
    if !ready(test, &["conntrack"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(&[MGMT_NAME]);
    let _peers = start_peers(&pair);
    // `ip netns exec` mounts this file over /etc/hosts for the agent: written in
    // place, the agent's next lookup sees the new address.
    let hosts = PathBuf::from("/etc/netns")
        .join(&pair.endpoint)
        .join("hosts");
    let point_at = |addr: &str| {
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n::1 localhost\n{addr} {MGMT_NAME}\n"),
        )
        .expect("write the endpoint's hosts file")
    };
    point_at(MGMT_FIRST);
    let (server, agent) = server_and_agent(
        &pair,
        dir.path(),
        &format!("[isolation]\nkeep = [\"{MGMT_NAME}\"]\n"),
    );
    let (ok, text) = device(
        &pair,
        &server,
        &["isolate", &agent.device, "--reason", "keep test"],
    );
    assert!(ok, "{text}");
    wait_state(&pair, &server, &agent, "isolated");
    assert!(
        ping(&pair, MGMT_FIRST),
        "the management name's address is kept"
    );
    assert!(!ping(&pair, MGMT_MOVED), "its next address is not yet");
    let rules = |chain: &str| {
        let out = pair.on_endpoint(
            "nft",
            &["-a", "list", "chain", "inet", "rampart_isolate", chain],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (output_before, input_before) = (rules("output"), rules("input"));

    point_at(MGMT_MOVED);
    assert!(
        eventually(Duration::from_secs(20), || agent
            .log()
            .contains("Isolation addresses refreshed")),
        "the agent refreshes the kept addresses\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("{MGMT_FIRST}] -> ["))
            && log.contains(&format!("{MGMT_MOVED}]; rules unchanged")),
        "{log}"
    );
    assert!(ping(&pair, MGMT_MOVED), "the new address is kept");
    assert!(!ping(&pair, MGMT_FIRST), "the old one is not");
    assert_eq!(
        rules("output"),
        output_before,
        "the rules were not reloaded"
    );
    assert_eq!(rules("input"), input_before, "the rules were not reloaded");
    assert_eq!(
        log.matches("Device isolated").count(),
        1,
        "loaded once only:\n{log}"
    );
    let view = isolation_view(&pair, &server, &agent.device);
    assert_eq!(view["state"], "isolated", "{view:#}");
    assert!(view["self_test_error"].is_null(), "{view:#}");
    assert!(!log.contains("Isolation drift"), "{log}");
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The issue's p95 figures through the whole product: a blocked reverse-shell attempt
/// to the device being confirmed isolated (the response rule's path), and an
/// administrator's request to the agent's confirmation, for isolate and release.
/// Not part of the suite: run it with
/// `cargo nextest run -p rampart-cli --test isolation_network --run-ignored ignored-only --no-capture`.
#[test]
#[ignore = "measurement: prints p50/p95 of alert-to-isolated and request-to-confirmed"]
fn isolation_latency_p95_alert_to_isolated_and_request_to_confirmed() {
    let test = "isolation_latency_p95_alert_to_isolated_and_request_to_confirmed";
    if !ready(test, &["conntrack"]) {
        return;
    }
    const RUNS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let pair = NetPair::create(&[]);
    let _peers = start_peers(&pair);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[access]]\nid = \"no-reverse-shells\"\nname = \"no reverse shells\"\nwhen = { ports = [4444] }\naction = \"block\"\n",
    )
    .unwrap();
    let (server, agent) = server_and_agent(
        &pair,
        dir.path(),
        &format!(
            "policy = {:?}\n[[response]]\nname = \"reverse shell\"\nquery = \"dst_port = 4444 and action = block\"\naction = \"isolate\"\nrate_limit = 1000\n",
            policy.display().to_string()
        ),
    );
    let poll = |state: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = isolation_view(&pair, &server, &agent.device);
            if view["state"] == state && view["pending"] == false {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "never {state}: {view:#}\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (mut alert, mut isolate_confirm, mut release_seen, mut release_confirm) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let started = Instant::now();
        let shell = tcp(&pair, sock(ATTACKER4, 4444));
        assert!(!shell.starts_with("echo:"), "{shell}");
        let view = poll("isolated");
        alert.push(started.elapsed().as_millis());
        isolate_confirm.push(view["confirm_latency_ms"].as_u64().unwrap_or(u64::MAX) as u128);
        let started = Instant::now();
        let (ok, text) = device(&pair, &server, &["release", &agent.device]);
        assert!(ok, "{text}");
        let view = poll("released");
        release_seen.push(started.elapsed().as_millis());
        release_confirm.push(view["confirm_latency_ms"].as_u64().unwrap_or(u64::MAX) as u128);
    }
    for v in [
        &mut alert,
        &mut isolate_confirm,
        &mut release_seen,
        &mut release_confirm,
    ] {
        v.sort();
    }
    eprintln!(
        "ISOLATION LATENCY over {RUNS} runs (ms): reverse-shell attempt -> confirmed isolated, seen by polling the API every 10 ms: p50 {} p95 {} max {}; \
         server request -> agent confirmation (isolate): p50 {} p95 {}; `device release` -> confirmed released seen: p50 {} p95 {}; \
         server request -> agent confirmation (release): p50 {} p95 {}",
        percentile(&alert, 50.0),
        percentile(&alert, 95.0),
        alert[alert.len() - 1],
        percentile(&isolate_confirm, 50.0),
        percentile(&isolate_confirm, 95.0),
        percentile(&release_seen, 50.0),
        percentile(&release_seen, 95.0),
        percentile(&release_confirm, 50.0),
        percentile(&release_confirm, 95.0),
    );
}
