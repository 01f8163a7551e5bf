//! Hostile or broken input: each gets its error or a closed connection, and
//! the gateway keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::origin::Origin;
use support::{curl, raw_exchange, Rampart};

fn still_serves(gw: &Rampart, origin: &Origin) {
    let (code, body, err) = curl(&gw.proxy_url(), &[&origin.url("/hello")]);
    assert_eq!((code, body.as_str()), (0, "hello from origin"), "{err}");
}

#[test]
fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let origin = Origin::start();
    let gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET http://a b c HTTP/1.1\r\n\r\n",
        b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-bytes\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nBad Header\r\n\r\n",
    ];
    for case in cases {
        let reply = raw_exchange(gw.proxy, case, Duration::from_secs(3));
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
            "{:?} → {reply}",
            String::from_utf8_lossy(case)
        );
    }
    still_serves(&gw, &origin);
}

#[test]
fn conflicting_content_length_and_transfer_encoding_cannot_smuggle_a_request() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the
    // connection is closed after the response, so the bytes behind the
    // chunked body are never read as a second request.
    let origin = Origin::start();
    let gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let smuggle = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.url("/sink"),
        origin.url("/smuggled")
    );
    let reply =
        support::raw_exchange_until_close(gw.proxy, smuggle.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        reply.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response, then close: {reply}"
    );
    assert!(
        !reply.contains("not found"),
        "the smuggled request reached the origin: {reply}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Two different Content-Length values are a framing error: 400, nothing forwarded.
    let double = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        origin.url("/sink")
    );
    let reply = raw_exchange(gw.proxy, double.as_bytes(), Duration::from_secs(3));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // TE that does not end in chunked cannot be framed: 400.
    let bad_te = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        origin.url("/sink")
    );
    let reply = raw_exchange(gw.proxy, bad_te.as_bytes(), Duration::from_secs(3));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    still_serves(&gw, &origin);
}

#[test]
fn oversized_headers_get_431() {
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[limits]\nmax_header_bytes = 16384\n",
    );
    let big = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        origin.url("/hello"),
        "a".repeat(64 * 1024)
    );
    let reply = raw_exchange(gw.proxy, big.as_bytes(), Duration::from_secs(3));
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let reply = raw_exchange(
        gw.proxy,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\n{many}\r\n",
            origin.url("/hello")
        )
        .as_bytes(),
        Duration::from_secs(3),
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    still_serves(&gw, &origin);
}

#[test]
fn slowloris_client_is_closed_while_others_are_served() {
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[limits]\nheader_timeout = \"1s\"\n",
    );
    let mut slow = TcpStream::connect(gw.proxy).unwrap();
    slow.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    // Trickle a header byte every 200 ms; the gateway must give up on us.
    let mut closed = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(200));
        still_serves_quietly(&gw, &origin);
        if slow.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = slow.read(&mut buf) {
            // EOF or an error response: the connection is being closed.
            if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "slow client still connected after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serves(&gw, &origin);
}

fn still_serves_quietly(gw: &Rampart, origin: &Origin) {
    let (_, body, _) = curl(&gw.proxy_url(), &["--max-time", "2", &origin.url("/hello")]);
    assert_eq!(body, "hello from origin");
}

#[test]
fn per_source_connection_cap_refuses_the_excess() {
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[limits]\nmax_connections_per_source = 3\n",
    );
    // Let the readiness probe's connection close first.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(gw.proxy).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let reply = raw_exchange(
        gw.proxy,
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(
        reply.is_empty(),
        "the fourth connection must be closed: {reply}"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    still_serves(&gw, &origin);
    assert!(gw
        .metrics()
        .contains("rampart_connections_rejected_total{listener=\"proxy\",reason=\"max_connections_per_source\"}"));
}
