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
