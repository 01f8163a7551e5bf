//! Gateways behind a real HAProxy 2.6 in TCP mode with `send-proxy-v2`
//! (docs/fleet.md, "Behind HAProxy"): the PROXY header is believed only from the
//! balancer's address (`proxy_protocol_from`), so the access log, the events and
//! the admission ACL see the client's address, not HAProxy's; a header from
//! anyone else is refused and counted; HAProxy's health checks on `/healthz` take
//! a killed gateway out, and a gateway draining on SIGTERM answers 503 there while
//! it finishes its requests.
//!
//! Addresses: clients bind 127.0.0.7 (or 127.0.0.8) with `curl --interface`,
//! HAProxy connects to the gateways from 127.0.0.2 (`source`), so the three are
//! told apart in every record.
mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::origin::Origin;
use support::*;

/// The address HAProxy connects to the gateways from.
const BALANCER: &str = "127.0.0.2";
/// The client behind HAProxy.
const CLIENT: &str = "127.0.0.7";

/// A running `haproxy -db` in front of some gateways; killed on drop.
struct Haproxy {
    _child: KillOnDrop,
    /// Frontend for the gateways' proxy listeners.
    proxy: SocketAddr,
    /// Frontend for the gateways' agent tunnel listeners, when asked for.
    tunnel: Option<SocketAddr>,
    admin_socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// One gateway as HAProxy sees it.
struct Backend {
    proxy: SocketAddr,
    api: SocketAddr,
    tunnel: Option<SocketAddr>,
}

impl Backend {
    fn of(gw: &Rampart) -> Backend {
        Backend {
            proxy: gw.proxy,
            api: gw.api,
            tunnel: None,
        }
    }
}

impl Haproxy {
    /// Starts HAProxy balancing `balance` over `backends`, health-checking each
    /// gateway's `/healthz` every 200 ms (down after 2 failures, up after 2 passes).
    fn start(backends: &[Backend], balance: &str) -> Haproxy {
        assert!(
            have("haproxy"),
            "haproxy is not installed: apt-get install -y haproxy (scripts/install-test-deps.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let admin_socket = dir.path().join("admin.sock");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let with_tunnel = backends.iter().all(|b| b.tunnel.is_some());
        let tunnel: Option<SocketAddr> =
            with_tunnel.then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let mut config = format!(
            "global\n\
             \x20   stats socket {sock} mode 600 level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   retries 3\n\
             \x20   option redispatch 1\n\
             frontend proxy\n\
             \x20   bind {proxy}\n\
             \x20   default_backend gateways\n\
             backend gateways\n\
             \x20   balance {balance}\n\
             \x20   source {BALANCER}\n\
             \x20   option httpchk GET /healthz\n\
             \x20   http-check expect status 200\n\
             \x20   default-server send-proxy-v2 check inter 200ms fall 2 rise 2\n",
            sock = admin_socket.display(),
        );
        for (i, b) in backends.iter().enumerate() {
            config.push_str(&format!(
                "    server gw{i} {} check port {}\n",
                b.proxy,
                b.api.port()
            ));
        }
        if let Some(tunnel) = tunnel {
            config.push_str(&format!(
                "frontend tunnel\n    bind {tunnel}\n    default_backend tunnels\n\
                 backend tunnels\n    balance roundrobin\n    source {BALANCER}\n\
                 \x20   option httpchk GET /healthz\n\
                 \x20   default-server send-proxy-v2 check inter 200ms fall 2 rise 2\n"
            ));
            for (i, b) in backends.iter().enumerate() {
                config.push_str(&format!(
                    "    server tgw{i} {} check port {}\n",
                    b.tunnel.unwrap(),
                    b.api.port()
                ));
            }
        }
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Haproxy {
            _child: KillOnDrop(child),
            proxy,
            tunnel,
            admin_socket,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(10), || {
            (0..backends.len()).all(|i| haproxy.server_status(&format!("gw{i}")) == "UP")
        });
        if !up {
            let _ = haproxy._child.0.kill();
            let log = std::fs::read_to_string(haproxy._dir.path().join("haproxy.log"));
            panic!("haproxy did not come up with every gateway UP:\n{config}\n{log:?}");
        }
        haproxy
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// HAProxy's view of one server (`UP`, `DOWN`, `NOLB`...), from `show stat` on
    /// the admin socket; empty while the socket is not there yet.
    fn server_status(&self, server: &str) -> String {
        let Ok(mut socket) = UnixStream::connect(&self.admin_socket) else {
            return String::new();
        };
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if socket.write_all(b"show stat\n").is_err() {
            return String::new();
        }
        let mut csv = String::new();
        let _ = socket.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return String::new();
        };
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let status = columns.iter().position(|c| *c == "status").unwrap();
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"gateways") && f.get(1) == Some(&server))
            .map(|f| f[status].to_string())
            .unwrap_or_default()
    }
}

/// A gateway that believes PROXY headers from [`BALANCER`] only, forwarding to
/// loopback origins; `extra` goes into its `[proxy]` section.
fn gateway(proxy_extra: &str, rest: &str) -> Rampart {
    Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n\
         proxy_protocol_from = [\"{BALANCER}/32\"]\n{proxy_extra}\n{rest}"
    ))
}

/// `curl` from `source` through HAProxy; returns the HTTP status (0: no answer).
fn curl_from(source: &str, haproxy: &Haproxy, extra: &[&str], url: &str) -> u16 {
    let mut args = vec!["--interface", source, "--max-time", "10"];
    args.extend_from_slice(extra);
    curl_status(&haproxy.proxy_url(), url, &args)
}

/// The access-log records of `gw` whose client is `source`.
fn records_from(gw: &Rampart, source: &str) -> Vec<serde_json::Value> {
    gw.access_log()
        .into_iter()
        .filter(|r| {
            r["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{source}:")))
        })
        .collect()
}

fn rejected(gw: &Rampart, listener: &str, reason: &str) -> u64 {
    let series = format!(
        "rampart_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    );
    gw.metrics()
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn plain_and_connect_requests_through_haproxy_are_logged_with_the_client_address() {
    let origin = Origin::start();
    let tunnel_ports = [free_port(), free_port()];
    let gws: Vec<Rampart> = tunnel_ports
        .iter()
        .map(|port| {
            gateway(
                "",
                &format!(
                    "[tunnel]\nlisten = \"127.0.0.1:{port}\"\nproxy_protocol_from = [\"{BALANCER}/32\"]\n"
                ),
            )
        })
        .collect();
    let backends: Vec<Backend> = gws
        .iter()
        .zip(tunnel_ports)
        .map(|(gw, port)| Backend {
            tunnel: Some(format!("127.0.0.1:{port}").parse().unwrap()),
            ..Backend::of(gw)
        })
        .collect();
    let haproxy = Haproxy::start(&backends, "roundrobin");

    // Round robin over two gateways: three of each kind (an odd count) reach both.
    for tunnel in [false, false, false, true, true, true] {
        let extra: &[&str] = if tunnel { &["--proxytunnel"] } else { &[] };
        assert_eq!(
            curl_from(CLIENT, &haproxy, extra, &origin.url("/hello")),
            200
        );
    }
    for gw in &gws {
        gw.find_record(|r| r["method"] == "GET");
        gw.find_record(|r| r["method"] == "CONNECT");
        let all = gw.access_log();
        let from_client = records_from(gw, CLIENT);
        assert_eq!(
            from_client.len(),
            all.len(),
            "every record names the client {CLIENT}, none HAProxy's {BALANCER}: {all:#?}"
        );
        assert!(from_client.iter().any(|r| r["method"] == "CONNECT"));
        assert!(from_client.iter().any(|r| r["method"] == "GET"));
        let events = gw.search_events(&format!("src_ip = {CLIENT}"), "json");
        assert!(!events.is_empty(), "no event with src_ip = {CLIENT}");
        assert!(
            gw.search_events(&format!("src_ip = {BALANCER}"), "json")
                .is_empty(),
            "an event names the balancer as the source"
        );
    }

    // The agent tunnel listener reads the header too: a TLS client without a device
    // certificate is refused, and the refusal names the client, not HAProxy.
    let tunnel = haproxy.tunnel.unwrap();
    let out = support::run(Command::new("curl").args([
        "-sS",
        "-k",
        "--max-time",
        "5",
        "--interface",
        CLIENT,
        &format!("https://{tunnel}/"),
    ]));
    assert!(
        !out.status.success(),
        "a client without a certificate got in"
    );
    assert!(
        eventually(Duration::from_secs(5), || gws.iter().any(|gw| {
            gw.stderr().lines().any(|l| {
                l.contains("agent tunnel TLS handshake refused")
                    && l.contains(&format!("peer={CLIENT}:"))
            })
        })),
        "no tunnel refusal naming {CLIENT}:\n{}",
        gws.iter().map(|g| g.stderr()).collect::<String>()
    );
}

#[test]
fn a_proxy_header_from_an_address_that_is_not_a_balancer_is_refused_and_counted() {
    let origin = Origin::start();
    let tunnel_port = free_port();
    let gw = gateway(
        "",
        &format!(
            "[tunnel]\nlisten = \"127.0.0.1:{tunnel_port}\"\nproxy_protocol_from = [\"{BALANCER}/32\"]\n"
        ),
    );
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        origin.url("/hello")
    );
    // v1 and v2 headers claiming 10.9.9.9, sent straight from 127.0.0.1.
    let v1 = format!("PROXY TCP4 10.9.9.9 127.0.0.1 4444 3128\r\n{request}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[10, 9, 9, 9, 127, 0, 0, 1, 0x11, 0x5c, 0x0c, 0x38]);
    v2.extend_from_slice(request.as_bytes());
    for forged in [v1.as_bytes(), &v2] {
        let answer = raw_exchange_until_close(gw.proxy, forged, Duration::from_secs(5));
        assert_eq!(answer, "", "a forged header was answered: {answer}");
    }
    assert_eq!(rejected(&gw, "proxy", "proxy_header_untrusted"), 2);
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The same on the agent tunnel listener.
    let tunnel: SocketAddr = format!("127.0.0.1:{tunnel_port}").parse().unwrap();
    let answer = raw_exchange_until_close(tunnel, &v2, Duration::from_secs(5));
    assert_eq!(answer, "");
    assert_eq!(rejected(&gw, "agent_tunnel", "proxy_header_untrusted"), 1);

    // From the balancer's address, the header is mandatory: a bare request is refused.
    let status = curl_status(
        &gw.proxy_url(),
        &origin.url("/hello"),
        &["--interface", BALANCER],
    );
    assert_eq!(
        status, 0,
        "a balancer connection without a header was served"
    );
    assert_eq!(rejected(&gw, "proxy", "proxy_header_invalid"), 1);

    // Clients that send no header are served as before, under their own address.
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello"), &[]),
        200
    );
    gw.find_record(|r| r["status"] == 200);
    let records = gw.access_log();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(records[0]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn the_admission_acl_judges_the_client_behind_haproxy_not_haproxy() {
    let origin = Origin::start();
    // HAProxy's own address (127.0.0.2) is not allowed: only the header can admit.
    let gw = gateway(&format!("allow_networks = [\"{CLIENT}/32\"]"), "");
    let haproxy = Haproxy::start(&[Backend::of(&gw)], "roundrobin");
    assert_eq!(curl_from(CLIENT, &haproxy, &[], &origin.url("/hello")), 200);
    assert_eq!(
        curl_from("127.0.0.8", &haproxy, &[], &origin.url("/hello")),
        403
    );
    let refused = gw.find_record(|r| r["status"] == 403);
    assert!(
        refused["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.8:"),
        "{refused}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_gateway_killed_mid_traffic_is_taken_out_by_haproxy_and_later_requests_succeed() {
    let origin = Origin::start();
    let mut gw0 = gateway("", "");
    let gw1 = gateway("", "");
    let haproxy = Haproxy::start(&[Backend::of(&gw0), Backend::of(&gw1)], "roundrobin");

    let url = origin.url("/hello");
    let proxy = haproxy.proxy_url();
    let traffic = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            statuses.push(curl_status(&proxy, &url, &["--interface", CLIENT]));
        }
        statuses
    });
    std::thread::sleep(Duration::from_millis(500));
    gw0.child.kill().unwrap(); // SIGKILL
    gw0.child.wait().unwrap();
    let killed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || haproxy
            .server_status("gw0")
            .starts_with("DOWN")),
        "haproxy still has the killed gateway: {}",
        haproxy.server_status("gw0")
    );
    let taken_out_after = killed_at.elapsed();
    let during = traffic.join().unwrap();
    let after: Vec<u16> = (0..10)
        .map(|_| curl_from(CLIENT, &haproxy, &[], &origin.url("/hello")))
        .collect();
    assert!(
        after.iter().all(|s| *s == 200),
        "requests after the kill: {after:?}"
    );
    let failed = during.iter().filter(|s| **s != 200).count();
    eprintln!(
        "kill -9: taken out after {taken_out_after:?}; {failed} of {} requests during the kill failed",
        during.len()
    );
    // With `retries` and `option redispatch`, a refused connect is retried on the
    // other gateway: only a request in flight on the killed one may fail.
    assert!(failed <= 1, "statuses during the kill: {during:?}");
}

#[test]
fn sigterm_turns_healthz_503_so_haproxy_drains_the_gateway_while_requests_in_flight_finish() {
    let origin = Origin::start();
    let drain = "[limits]\ndrain_delay = \"1500ms\"\nshutdown_grace = \"10s\"\n";
    let mut gw0 = gateway("", drain);
    let gw1 = gateway("", drain);
    // `first`: every connection goes to gw0 while it is up.
    let haproxy = Haproxy::start(&[Backend::of(&gw0), Backend::of(&gw1)], "first");

    let slow_url = origin.url("/slow/2500");
    let proxy = haproxy.proxy_url();
    let slow = std::thread::spawn(move || curl_status(&proxy, &slow_url, &["--interface", CLIENT]));
    assert!(eventually(Duration::from_secs(5), || origin
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1));
    gw0.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        eventually(Duration::from_secs(1), || http_get_status(
            gw0.api, "/healthz"
        ) == Some(503)),
        "/healthz of a draining gateway is not 503"
    );
    assert!(
        eventually(Duration::from_secs(3), || haproxy
            .server_status("gw0")
            .starts_with("DOWN")),
        "haproxy did not take the draining gateway out: {}",
        haproxy.server_status("gw0")
    );
    // New requests go to gw1 and succeed.
    for _ in 0..5 {
        assert_eq!(curl_from(CLIENT, &haproxy, &[], &origin.url("/hello")), 200);
    }
    assert!(
        eventually(Duration::from_secs(15), || records_from(&gw1, CLIENT).len()
            == 5),
        "gw1 did not log the five requests: {:#?}",
        gw1.access_log()
    );
    // The request in flight on gw0 finishes, then gw0 exits cleanly.
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(gw0.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(gw0.stderr().contains("SIGTERM: draining"));
}
