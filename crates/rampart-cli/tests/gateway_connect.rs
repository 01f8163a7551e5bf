//! CONNECT tunnels through the real gateway: a TLS origin reached with curl,
//! port rules, malformed targets, and tunnel logging.

mod support;

use std::time::Duration;
use support::tls_origin::TlsOrigin;
use support::{curl, raw_exchange, Rampart};

fn gateway_for_tls(extra: &str) -> Rampart {
    Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n[resolve]\n\"origin.test\" = \"127.0.0.1\"\n{extra}"
    ))
}

#[test]
fn curl_reaches_a_tls_origin_through_connect_with_the_origins_certificate() {
    let origin = TlsOrigin::start("origin.test");
    let gw = gateway_for_tls("");
    let url = format!("https://origin.test:{}/", origin.port);
    let ca = origin.ca_pem.display().to_string();
    // curl resolves origin.test itself only for the proxy's CONNECT line; the gateway resolves it via [resolve].
    let (code, body, err) = curl(&gw.proxy_url(), &["--cacert", &ca, &url]);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("s_server"), "{body}");

    let log = gw.access_log();
    let tunnel = log
        .iter()
        .find(|r| r["method"] == "CONNECT")
        .expect("tunnel logged");
    assert_eq!(tunnel["target"], format!("origin.test:{}", origin.port));
    assert_eq!(tunnel["status"], 200);
    assert!(
        tunnel["bytes_from_client"].as_u64().unwrap() > 100,
        "{tunnel}"
    );
    assert!(
        tunnel["bytes_to_client"].as_u64().unwrap() > 500,
        "{tunnel}"
    );
    assert_eq!(tunnel["egress"], "direct");
}

#[test]
fn connect_is_limited_to_443_by_default() {
    let origin = TlsOrigin::start("origin.test");
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"origin.test\" = \"127.0.0.1\"\n",
    );
    let reply = raw_exchange(
        gw.proxy,
        format!(
            "CONNECT origin.test:{} HTTP/1.1\r\nHost: origin.test\r\n\r\n",
            origin.port
        )
        .as_bytes(),
        Duration::from_secs(3),
    );
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.contains(&format!(
            "CONNECT to port {} is not allowed (allowed: 443)",
            origin.port
        )),
        "{reply}"
    );
}

#[test]
fn malformed_connect_targets_get_400() {
    let gw = gateway_for_tls("");
    for target in [
        "origin.test",
        "origin.test:0",
        "origin.test:99999",
        ":443",
        "user@origin.test:443",
    ] {
        let reply = raw_exchange(
            gw.proxy,
            format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        );
        assert!(reply.starts_with("HTTP/1.1 400"), "{target}: {reply}");
    }
}

#[test]
fn connect_to_a_refused_port_is_502_and_the_tunnel_is_not_opened() {
    let gw = gateway_for_tls("");
    let port = support::free_port();
    let reply = raw_exchange(
        gw.proxy,
        format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    );
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert!(reply.contains("connection refused"), "{reply}");
}

#[test]
fn bytes_sent_right_behind_the_connect_head_are_not_lost() {
    // A client may pipeline the first TLS bytes with its CONNECT; here plain
    // text to an echoing origin shows they arrive.
    let origin = support::origin::Origin::start();
    let gw = gateway_for_tls("");
    let reply = support::raw_exchange_until_close(
        gw.proxy,
        format!(
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            port = origin.port()
        )
        .as_bytes(),
        Duration::from_secs(3),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("hello from origin"), "{reply}");
}
