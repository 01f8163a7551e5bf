//! Plain-HTTP forwarding through the real gateway with real clients (curl,
//! Python requests): methods and bodies, headers, streaming of large bodies
//! without buffering, error statuses, access log and metrics.

mod support;

use std::process::Command;
use support::origin::Origin;
use support::{curl, curl_status, run, Rampart};

const LOOPBACK_OK: &str = "[proxy]\nallow_loopback_destinations = true\n";

#[test]
fn get_post_put_with_bodies_pass_through_curl() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let proxy = gw.proxy_url();

    let (code, body, err) = curl(&proxy, &[&origin.url("/hello")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "hello from origin");

    let (_, body, _) = curl(
        &proxy,
        &[
            "-X",
            "POST",
            "--data-binary",
            "posted body",
            &origin.url("/echo"),
        ],
    );
    assert_eq!(body, "posted body");

    let (_, body, _) = curl(
        &proxy,
        &[
            "-X",
            "PUT",
            "--data-binary",
            "put body",
            &origin.url("/echo"),
        ],
    );
    assert_eq!(body, "put body");

    // Chunked upload (no Content-Length).
    let (_, body, _) = curl(
        &proxy,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "chunked body",
            &origin.url("/echo"),
        ],
    );
    assert_eq!(body, "chunked body");

    for method in ["DELETE", "PATCH", "OPTIONS"] {
        assert_eq!(
            curl_status(&proxy, &origin.url("/hello"), &["-X", method]),
            200,
            "{method}"
        );
    }
    let (_, head, _) = curl(&proxy, &["-I", &origin.url("/hello")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn python_requests_gets_and_posts_through_the_proxy() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let script = format!(
        r#"
import requests
proxies = {{"http": "{proxy}"}}
r = requests.get("{hello}", proxies=proxies, timeout=10)
assert r.status_code == 200 and r.text == "hello from origin", (r.status_code, r.text)
r = requests.post("{echo}", data=b"x" * 100000, proxies=proxies, timeout=10)
assert r.status_code == 200 and len(r.content) == 100000, (r.status_code, len(r.content))
def gen():
    for _ in range(10):
        yield b"y" * 1000
r = requests.post("{sink}", data=gen(), proxies=proxies, timeout=10)
assert r.text == "10000", r.text
print("ok")
"#,
        proxy = gw.proxy_url(),
        hello = origin.url("/hello"),
        echo = origin.url("/echo"),
        sink = origin.url("/sink"),
    );
    let out = run(Command::new("python3").arg("-c").arg(script));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn hop_by_hop_headers_are_removed_and_via_is_added() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &[
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "X-End-To-End: kept",
            "-H",
            "Host: wrong.example",
            &origin.url("/headers"),
        ],
    );
    let seen: serde_json::Value = serde_json::from_str(&body).expect("origin JSON");
    let headers = &seen["headers"];
    assert!(headers.get("x-hop").is_none(), "{headers}");
    assert!(headers.get("keep-alive").is_none(), "{headers}");
    assert!(headers.get("proxy-connection").is_none(), "{headers}");
    assert_eq!(headers["x-end-to-end"], "kept");
    assert!(
        headers["via"].as_str().unwrap().starts_with("1.1 rampart"),
        "{headers}"
    );
    // RFC 9112 §3.2.2: Host comes from the absolute-form target, not the client's header.
    assert_eq!(headers["host"], format!("127.0.0.1:{}", origin.port()));
    // The origin receives origin-form.
    assert_eq!(seen["target"], "/headers");

    let (_, head, _) = curl(
        &gw.proxy_url(),
        &["-D", "-", "-o", "/dev/null", &origin.url("/hello")],
    );
    assert!(
        head.to_ascii_lowercase().contains("via: 1.1 rampart"),
        "{head}"
    );
}

#[test]
fn one_gib_streams_both_ways_without_memory_growth() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    let gib: u64 = 1 << 30;

    let (code, out, err) = curl(
        &gw.proxy_url(),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &origin.url(&format!("/bytes/{gib}")),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), gib.to_string());

    // Chunked 1 GiB upload from a pipe: curl streams it, the origin counts it.
    let script = format!(
        "head -c {gib} /dev/zero | curl -sS --max-time 120 -x {} -T - {}",
        gw.proxy_url(),
        origin.url("/sink")
    );
    let out = run(Command::new("sh").arg("-c").arg(script));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        gib.to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let peak = gw.peak_rss_kib();
    assert!(
        peak > 0 && peak < 64 * 1024,
        "peak RSS {peak} KiB: bodies must stream, not buffer"
    );
    let log = gw.access_log();
    let down = log
        .iter()
        .find(|r| r["target"].as_str().unwrap_or("").contains("/bytes/"))
        .unwrap();
    assert_eq!(down["bytes_to_client"], gib);
    let up = log
        .iter()
        .find(|r| r["target"].as_str().unwrap_or("").ends_with("/sink"))
        .unwrap();
    assert_eq!(up["bytes_from_client"], gib);
}

#[test]
fn loopback_destinations_are_refused_by_default() {
    let origin = Origin::start();
    let gw = Rampart::start("");
    let (_, body, _) = curl(&gw.proxy_url(), &[&origin.url("/hello")]);
    assert!(
        body.contains("403") && body.contains("loopback destinations are disabled"),
        "{body}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn own_listeners_are_never_a_destination() {
    let gw = Rampart::start(LOOPBACK_OK);
    let (_, body, _) = curl(&gw.proxy_url(), &[&format!("http://{}/metrics", gw.api)]);
    assert!(body.contains("forwarding loop"), "{body}");
    let (_, body, _) = curl(&gw.proxy_url(), &[&format!("http://{}/", gw.proxy)]);
    assert!(body.contains("forwarding loop"), "{body}");
}

#[test]
fn failures_get_502_or_504_with_the_reason() {
    let origin = Origin::start();
    let closed_port = support::free_port();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[limits]\nresponse_timeout = \"1s\"\n[resolve]\n\"known.test\" = \"127.0.0.1\"\n",
    );
    let proxy = gw.proxy_url();

    let (_, body, _) = curl(
        &proxy,
        &["-w", " %{http_code}", "http://nonexistent.invalid/"],
    );
    assert!(
        body.contains("DNS resolution failed for nonexistent.invalid") && body.ends_with("502"),
        "{body}"
    );

    let (_, body, _) = curl(
        &proxy,
        &[
            "-w",
            " %{http_code}",
            &format!("http://known.test:{closed_port}/"),
        ],
    );
    assert!(
        body.contains("connection refused") && body.ends_with("502"),
        "{body}"
    );

    let (_, body, _) = curl(&proxy, &["-w", " %{http_code}", &origin.url("/slow/3000")]);
    assert!(
        body.contains("did not answer within 1s") && body.ends_with("504"),
        "{body}"
    );

    // Name overrides from [resolve] reach the origin.
    let (_, body, _) = curl(
        &proxy,
        &[&format!("http://known.test:{}/hello", origin.port())],
    );
    assert_eq!(body, "hello from origin");

    let (_, body, _) = curl(
        &proxy,
        &["-w", " %{http_code}", &format!("http://known.test:{}/", 25)],
    );
    assert!(
        body.contains("port 25 is not allowed") && body.ends_with("403"),
        "{body}"
    );
}

#[test]
fn access_log_has_one_json_line_per_request_with_every_field() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    curl(
        &gw.proxy_url(),
        &["--data-binary", "12345", &origin.url("/echo")],
    );
    let log = gw.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    let r = &log[0];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["target"], origin.url("/echo"));
    assert_eq!(r["status"], 200);
    assert_eq!(r["bytes_from_client"], 5);
    assert_eq!(r["bytes_to_client"], 5);
    assert_eq!(r["egress"], "direct");
    assert_eq!(r["server"], origin.addr.to_string());
    assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
    assert!(r["duration_ms"].is_u64());
}

#[test]
fn squid_format_access_log_is_squid_native() {
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n[access_log]\nformat = \"squid\"\n",
    );
    curl(&gw.proxy_url(), &[&origin.url("/hello")]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let text = std::fs::read_to_string(gw.data_dir().join("access.log")).unwrap();
    let fields: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    // time elapsed client code/status bytes method URL user hierarchy type
    assert_eq!(fields.len(), 10, "{text}");
    assert!(fields[0].contains('.'));
    assert_eq!(fields[2], "127.0.0.1");
    assert_eq!(fields[3], "TCP_MISS/200");
    assert_eq!(fields[4], "17");
    assert_eq!(fields[5], "GET");
    assert_eq!(fields[6], origin.url("/hello"));
    assert_eq!(fields[7], "-");
    assert_eq!(fields[8], "HIER_DIRECT/127.0.0.1");
}

#[test]
fn metrics_and_health_are_served_on_the_api_listener() {
    let origin = Origin::start();
    let gw = Rampart::start(LOOPBACK_OK);
    curl(&gw.proxy_url(), &[&origin.url("/hello")]);
    curl(&gw.proxy_url(), &["http://nonexistent.invalid/"]);
    assert_eq!(support::http_get_status(gw.api, "/healthz"), Some(200));
    let m = gw.metrics();
    assert!(
        m.contains("rampart_requests_total{kind=\"http\",code=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains("rampart_errors_total{kind=\"dns\"} 1"), "{m}");
    assert!(
        m.contains("rampart_bytes_total{direction=\"origin_to_client\"}"),
        "{m}"
    );
    assert!(m.contains("rampart_connections_accepted_total"), "{m}");
}
