//! Hostile input at the gateway's edges, against the real binary with raw
//! sockets: the header limit holds at its configured size, a malformed client
//! body is the client's fault, an invalid origin response is never a 200,
//! credentials in URLs never reach a log, destinations on the gateway's own
//! segment (link-local, metadata, multicast, broadcast) and the process's own
//! listeners are refused, and an open public listener is announced loudly.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::origin::Origin;
use support::{eventually, raw_exchange, Rampart};

const LOOPBACK_OK: &str = "[proxy]\nallow_loopback_destinations = true\n";

/// A request head of exactly `size` bytes on the wire (canonical form: one
/// space after each colon), padded with an `X-Pad` field.
fn head_of_size(url: &str, size: usize) -> String {
    let bare = format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n");
    assert!(size > bare.len());
    let head = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(size - bare.len())
    );
    assert_eq!(head.len(), size);
    head
}

#[test]
fn max_header_bytes_holds_at_the_configured_size() {
    let origin = Origin::start();
    let gw = Rampart::start(&format!(
        "{LOOPBACK_OK}[limits]\nmax_header_bytes = 65536\n"
    ));
    let url = origin.url("/hello");
    let at_limit = raw_exchange(
        gw.proxy,
        head_of_size(&url, 65536).as_bytes(),
        Duration::from_secs(5),
    );
    assert!(at_limit.starts_with("HTTP/1.1 200"), "{at_limit}");
    for size in [65537, 100 * 1024] {
        let reply = raw_exchange(
            gw.proxy,
            head_of_size(&url, size).as_bytes(),
            Duration::from_secs(5),
        );
        assert!(reply.starts_with("HTTP/1.1 431"), "{size} bytes: {reply}");
    }
    let record = gw.find_record(|r| r["status"] == 431);
    assert!(
        record["error"]
            .as_str()
            .unwrap_or("")
            .contains("max_header_bytes"),
        "{record}"
    );
    // Only the request at the limit reached the origin.
    assert_eq!(origin.requests.load(Ordering::Relaxed), 1);
}

#[test]
fn malformed_chunked_request_body_gets_400_and_is_logged_as_the_clients_fault() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        origin.url("/sink")
    );
    let reply = raw_exchange(gw.proxy, request.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.contains("malformed request body from the client"),
        "{reply}"
    );
    let record = gw.find_record(|r| r["method"] == "POST");
    assert_eq!(record["status"], 400, "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap_or("")
            .contains("from the client"),
        "{record}"
    );
}

/// An origin that answers every connection with `reply` and closes.
fn raw_origin(reply: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    addr
}

#[test]
fn origin_reply_with_content_length_and_transfer_encoding_is_502_never_200() {
    let origin = raw_origin(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    );
    let gw = Rampart::start(LOOPBACK_OK);
    let request = format!("GET http://{origin}/smuggle HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = raw_exchange(gw.proxy, request.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert!(
        reply.contains("Content-Length and Transfer-Encoding"),
        "{reply}"
    );
    let record = gw.find_record(|r| {
        r["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("/smuggle"))
    });
    assert_eq!(record["status"], 502, "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap_or("")
            .contains("Content-Length and Transfer-Encoding"),
        "{record}"
    );
}

#[test]
fn userinfo_in_the_url_never_reaches_the_access_log_or_events() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let request = format!(
        "GET http://alice:hunter2pw@{}/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.addr
    );
    let reply = raw_exchange(gw.proxy, request.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A CONNECT target is host:port only: refused, and logged without the userinfo.
    let connect = format!(
        "CONNECT alice:hunter2pw@{} HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.addr
    );
    let reply = raw_exchange(gw.proxy, connect.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert_eq!(tunnel["status"], 400, "{tunnel}");
    let record = gw.find_record(|r| r["status"] == 200);
    assert_eq!(record["target"], format!("http://{}/hello", origin.addr));
    let log = std::fs::read_to_string(gw.data_dir().join("access.log")).unwrap();
    assert!(
        !log.contains("hunter2pw") && !log.contains("alice:"),
        "{log}"
    );
    let mut events = Vec::new();
    assert!(eventually(Duration::from_secs(15), || {
        events = gw.search_events("", "json");
        !events.is_empty()
    }));
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("/hello"), "{text}");
    assert!(!text.contains("hunter2pw"), "{text}");
}

#[test]
fn agent_tunnel_port_is_never_a_destination_of_the_proxy() {
    let tunnel = support::free_port();
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n\
         [tunnel]\nlisten = \"127.0.0.1:{tunnel}\"\n"
    ));
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            tunnel
        ))
        .is_ok()),
        "the tunnel listener is up"
    );
    let get = format!("GET http://127.0.0.1:{tunnel}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = raw_exchange(gw.proxy, get.as_bytes(), Duration::from_secs(5));
    assert!(
        reply.starts_with("HTTP/1.1 403") && reply.contains("forwarding loop"),
        "{reply}"
    );
    let connect = format!("CONNECT 127.0.0.1:{tunnel} HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = raw_exchange(gw.proxy, connect.as_bytes(), Duration::from_secs(5));
    assert!(
        reply.starts_with("HTTP/1.1 403") && reply.contains("forwarding loop"),
        "{reply}"
    );
}

/// A network namespace with nothing but a loopback interface: a destination
/// the gateway fails to refuse cannot leave the machine from here. Deleted on drop.
struct LoopbackOnlyNs {
    name: String,
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

impl LoopbackOnlyNs {
    /// `None` (with a loud note) when not root; under CI, where tests run as root, a panic.
    fn create(test: &str) -> Option<LoopbackOnlyNs> {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root || !support::have("ip") {
            let why = "needs root and iproute2 to create a network namespace";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let name = format!(
            "rpedge{}x{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        let ns = LoopbackOnlyNs { name };
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        Some(ns)
    }
}

impl Drop for LoopbackOnlyNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = support::run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `request` to the proxy and returns the reply (inside the caller's namespace).
fn ask(proxy: SocketAddr, request: &str) -> String {
    raw_exchange(proxy, request.as_bytes(), Duration::from_secs(10))
}

#[test]
fn link_local_metadata_multicast_and_broadcast_destinations_are_refused_by_default() {
    let test = "link_local_metadata_multicast_and_broadcast_destinations_are_refused_by_default";
    let Some(ns) = LoopbackOnlyNs::create(test) else {
        return;
    };
    support::netns::in_netns(&ns.name, || {
        // Loopback destinations allowed, so only the new defaults refuse these.
        let gw = Rampart::start(LOOPBACK_OK);
        for (target, reason) in [
            ("169.254.169.254", "cloud metadata address"),
            ("169.254.10.1", "link-local destinations are disabled"),
            ("[fe80::1]", "link-local destinations are disabled"),
            ("224.0.0.251", "multicast destinations are disabled"),
            ("[ff02::1]", "multicast destinations are disabled"),
            ("255.255.255.255", "broadcast address is disabled"),
            ("0.0.0.0", "unspecified address"),
        ] {
            let reply = ask(
                gw.proxy,
                &format!("GET http://{target}/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            );
            assert!(reply.starts_with("HTTP/1.1 403"), "{target}: {reply}");
            assert!(reply.contains(reason), "{target}: {reply}");
            let record =
                gw.find_record(|r| r["target"].as_str().is_some_and(|t| t.contains(target)));
            assert_eq!(record["status"], 403, "{record}");
            assert!(
                record["error"].as_str().unwrap_or("").contains(reason),
                "{record}"
            );
        }
        let reply = ask(
            gw.proxy,
            "CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            reply.starts_with("HTTP/1.1 403") && reply.contains("cloud metadata address"),
            "{reply}"
        );
    });
}

#[test]
fn link_local_opt_in_allows_the_segment_but_listed_metadata_stays_refused() {
    let test = "link_local_opt_in_allows_the_segment_but_listed_metadata_stays_refused";
    let Some(ns) = LoopbackOnlyNs::create(test) else {
        return;
    };
    support::netns::in_netns(&ns.name, || {
        let gw = Rampart::start(
            "[proxy]\nallow_link_local_destinations = true\nmetadata_addresses = [\"169.254.169.254\"]\n",
        );
        // No route in this namespace: allowed means the gateway tried and failed (502).
        let reply = ask(
            gw.proxy,
            "GET http://169.254.10.1/ HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
        let reply = ask(
            gw.proxy,
            "GET http://169.254.169.254/ HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            reply.starts_with("HTTP/1.1 403") && reply.contains("cloud metadata address"),
            "{reply}"
        );
    });
}

#[test]
fn public_listener_open_to_every_address_without_auth_warns_loudly() {
    let test = "public_listener_open_to_every_address_without_auth_warns_loudly";
    let Some(ns) = LoopbackOnlyNs::create(test) else {
        return;
    };
    // Bound to every address of a namespace that has only loopback: reachable from nowhere.
    support::netns::in_netns(&ns.name, || {
        let port = support::free_port();
        let listen = format!("0.0.0.0:{port}");
        let open = Rampart::start_with_args(
            "[proxy]\nallow_networks = [\"0.0.0.0/0\"]\n",
            &["--proxy-listen", &listen],
        );
        assert!(
            eventually(Duration::from_secs(5), || open
                .stderr()
                .contains("OPEN PROXY")),
            "{}",
            open.stderr()
        );
        drop(open);
        let port = support::free_port();
        let listen = format!("0.0.0.0:{port}");
        let scoped = Rampart::start_with_args(
            "[proxy]\nallow_networks = [\"10.0.0.0/8\"]\n",
            &["--proxy-listen", &listen],
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !scoped.stderr().contains("OPEN PROXY"),
            "{}",
            scoped.stderr()
        );
    });
}
