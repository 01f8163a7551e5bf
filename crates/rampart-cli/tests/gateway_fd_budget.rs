//! The descriptor budget (docs/configuration.md, "Descriptor budget"): under a
//! low `RLIMIT_NOFILE`, spliced tunnels past what the limit holds are refused
//! with a clean 503 and counted, the process never runs out of descriptors (no
//! "Too many open files" flood) and plain clients keep being served; a
//! `max_connections` the limit cannot hold refuses to start.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use support::origin::Origin;
use support::{curl, Rampart};

/// The open-files limit the server runs under (soft and hard, so that
/// `raise_fd_limit` cannot lift it).
const NOFILE: u64 = 512;

/// More tunnels than the budget can hold at this limit (about 50): the loop is
/// bounded, and it must see refusals long before its end.
const ATTEMPTS: usize = 200;

fn limit_descriptors(command: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                NOFILE,
                NOFILE,
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// The status of the reply to a CONNECT on a fresh connection, `None` when the
/// connection was closed without a reply (a closed accept).
fn open_tunnel(gw: &Rampart, target: &str) -> (Option<u16>, TcpStream) {
    let mut stream = TcpStream::connect(gw.proxy).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (None, stream);
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, stream)
}

fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

fn plain_request_succeeds(gw: &Rampart, origin: &Origin) {
    let (code, body, err) = curl(&gw.proxy_url(), &["--max-time", "5", &origin.url("/hello")]);
    assert_eq!((code, body.as_str()), (0, "hello from origin"), "{err}");
}

#[test]
fn spliced_tunnels_past_the_descriptor_budget_get_503_counted_while_plain_clients_are_served() {
    let origin = Origin::start();
    let gw = Rampart::try_start_with(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n\
         [api]\nmax_connections = 16\n",
        &[],
        limit_descriptors,
    )
    .unwrap_or_else(|log| panic!("rampart did not start under RLIMIT_NOFILE={NOFILE}:\n{log}"));
    let target = origin.addr.to_string();

    let mut open = Vec::new();
    let mut refused = 0;
    let mut closed = 0;
    for attempt in 0..ATTEMPTS {
        let (status, stream) = open_tunnel(&gw, &target);
        match status {
            Some(200) => open.push(stream),
            Some(503) => refused += 1,
            None => closed += 1,
            Some(other) => panic!("attempt {attempt}: CONNECT answered {other}"),
        }
        // A plain client is served while the tunnels pile up.
        if attempt % 50 == 49 {
            plain_request_succeeds(&gw, &origin);
        }
    }
    assert!(
        !open.is_empty(),
        "no tunnel was opened at all:\n{}",
        gw.stderr()
    );
    assert!(
        refused > 0,
        "{} tunnels open, none refused with 503 ({closed} closed) under RLIMIT_NOFILE={NOFILE}",
        open.len()
    );
    // The open tunnels still carry bytes: splice pipes were created for them.
    let mut probe = &open[0];
    probe
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write through the tunnel");
    let mut reply = String::new();
    let _ = probe.read_to_string(&mut reply);
    assert!(reply.contains("hello from origin"), "{reply}");

    // Served while every tunnel the budget holds is open.
    plain_request_succeeds(&gw, &origin);
    let metrics = gw.metrics();
    let counted = metric_value(
        &metrics,
        "rampart_connections_rejected_total{listener=\"proxy\",reason=\"fd_budget\"}",
    );
    assert!(
        counted >= refused as f64,
        "{refused} refusals, counter at {counted}:\n{metrics}"
    );

    // Served after the tunnels close, and their units came back.
    drop(open);
    std::thread::sleep(Duration::from_millis(500));
    plain_request_succeeds(&gw, &origin);
    let (status, _again) = open_tunnel(&gw, &target);
    assert_eq!(
        status,
        Some(200),
        "a tunnel after the others closed must open"
    );

    let stderr = gw.stderr();
    let emfile = stderr.matches("Too many open files").count();
    assert!(
        emfile <= 3,
        "the process ran out of descriptors {emfile} times:\n{stderr}"
    );
    let budget_warnings = stderr.matches("descriptor budget is spent").count();
    assert!(
        (1..=3).contains(&budget_warnings),
        "{refused} refusals gave {budget_warnings} warnings (one per 10 s expected):\n{stderr}"
    );
}

/// Holds open as many decrypted tunnels as the gateway lets through (up to
/// `max`): each a CONNECT, a TLS handshake verified against `ca`, and one
/// request answered inside it. Prints how many were held, then waits for
/// stdin to close.
const HOLD_DECRYPTED: &str = r#"
import socket, ssl, sys
proxy_port, target, ca, max_n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = target.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
held = []
for _ in range(max_n):
    try:
        s = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            break
        t = ctx.wrap_socket(s, server_hostname=host)
        t.sendall(f"GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        if b"200" not in t.recv(64):
            break
        held.append(t)
    except OSError:
        break
print(len(held), flush=True)
sys.stdin.read()
"#;

#[test]
fn decrypted_tunnels_give_back_the_splice_pipes_units() {
    // A decrypted tunnel holds two descriptors (client and origin sockets),
    // a spliced one six (its two pipes too): under the same limit the budget
    // must hold about three times as many decrypted tunnels. Before, the
    // pipes' units stayed taken by tunnels that never splice.
    let origin = support::tls_origin::TlsOrigin::start("tls.test");
    let gw = Rampart::try_start_with(
        &format!(
            "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [\"1025-65535\"]\ntls_ports = [{port}]\n\
             [api]\nmax_connections = 16\n\
             [resolve]\n\"tls.test\" = \"127.0.0.1\"\n\
             [tls]\nsystem_roots = false\nextra_roots = [{ca:?}]\n",
            port = origin.port,
            ca = origin.ca_pem.display().to_string(),
        ),
        &[],
        limit_descriptors,
    )
    .unwrap_or_else(|log| panic!("rampart did not start under RLIMIT_NOFILE={NOFILE}:\n{log}"));
    let ca = gw.gateway_ca();
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(HOLD_DECRYPTED)
        .arg(gw.proxy.port().to_string())
        .arg(format!("tls.test:{}", origin.port))
        .arg(&ca)
        .arg("400")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the holder's count");
    let held: usize = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    println!("decrypted tunnels held: {held}");
    // The spliced test above holds about 50 at this limit; without the
    // pipes' units each decrypted tunnel costs a third of that.
    assert!(
        held >= 100,
        "only {held} decrypted tunnels held open under RLIMIT_NOFILE={NOFILE}:\n{}",
        gw.stderr()
    );
    // Every one of them was decrypted (not spliced), and the process kept
    // its descriptors: a plain request is still served.
    let decrypted = gw
        .access_log()
        .iter()
        .filter(|r| r["tls"]["decision"] == "decrypt")
        .count();
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(
        eventually_count(&gw, held),
        "{decrypted} of {held} tunnels logged as decrypted"
    );
    let stderr = gw.stderr();
    assert!(
        stderr.matches("Too many open files").count() <= 3,
        "the process ran out of descriptors:\n{stderr}"
    );
}

/// Whether the access log comes to hold `n` decrypted tunnel records (they are
/// written when the tunnels close).
fn eventually_count(gw: &Rampart, n: usize) -> bool {
    support::eventually(Duration::from_secs(10), || {
        gw.access_log()
            .iter()
            .filter(|r| r["method"] == "CONNECT" && r["tls"]["decision"] == "decrypt")
            .count()
            >= n
    })
}

#[test]
fn max_connections_above_what_the_descriptor_limit_allows_refuses_to_start_naming_the_fix() {
    let result = Rampart::try_start_with(
        "[limits]\nmax_connections = 20000\n[api]\nmax_connections = 16\n",
        &[],
        limit_descriptors,
    );
    let Err(stderr) = result else {
        panic!("rampart started with max_connections = 20000 under RLIMIT_NOFILE={NOFILE}");
    };
    for expected in [
        "max_connections = 20000",
        "RLIMIT_NOFILE) is 512",
        "LimitNOFILE=",
        "ulimit -n",
        "lower [limits] max_connections to at most",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn max_connections_defaults_to_what_the_descriptor_limit_allows() {
    let origin = Origin::start();
    let gw = Rampart::try_start_with(
        "[proxy]\nallow_loopback_destinations = true\n[api]\nmax_connections = 16\n",
        &[],
        limit_descriptors,
    )
    .unwrap_or_else(|log| panic!("rampart did not start:\n{log}"));
    plain_request_succeeds(&gw, &origin);
    let stderr = gw.stderr();
    // 512 − (128 + 51) headroom − 16 for the API = 317 units, 2 per connection.
    assert!(
        stderr.contains("max_connections=158"),
        "the budget line is missing or wrong:\n{stderr}"
    );
}
