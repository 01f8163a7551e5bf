//! Egress through upstream proxies (forward to proxy, for a fixed egress IP):
//! chaining through a second Rampart and through a real Squid, failover when
//! the first upstream is down, and recovery when it returns.

mod support;

use std::time::Duration;

use support::origin::Origin;
use support::squid::Squid;
use support::tls_origin::TlsOrigin;
use support::{curl, eventually, Rampart};

fn egress_config(proxies: &[String], extra: &str) -> String {
    let list = proxies
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[proxy]\nconnect_ports = [443, \"1025-65535\"]\n[egress]\ndefault = \"egress\"\n[upstreams.egress]\nproxies = [{list}]\n{extra}"
    )
}

fn upstream_rampart() -> Rampart {
    Rampart::start("[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n[resolve]\n\"origin.test\" = \"127.0.0.1\"\n")
}

#[test]
fn http_and_connect_chain_through_a_second_rampart() {
    let origin = Origin::start();
    let tls = TlsOrigin::start("origin.test");
    let egress = upstream_rampart();
    let edge = Rampart::start(&egress_config(&[egress.proxy_url()], ""));

    let (code, body, err) = curl(&edge.proxy_url(), &[&origin.url("/headers")]);
    assert_eq!(code, 0, "{err}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Two Via entries: edge then egress.
    let via = seen["headers"]["via"].as_str().unwrap();
    assert_eq!(via.matches("rampart").count(), 4, "{via}");

    let ca = tls.ca_pem.display().to_string();
    let (code, body, err) = curl(
        &edge.proxy_url(),
        &[
            "--cacert",
            &ca,
            &format!("https://origin.test:{}/", tls.port),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("s_server"));

    let edge_log = edge.access_log();
    let expected_egress = format!("egress/{}", egress.proxy);
    assert!(
        edge_log
            .iter()
            .all(|r| r["egress"] == expected_egress.as_str()),
        "{edge_log:?}"
    );
    let egress_log = egress.access_log();
    assert!(egress_log
        .iter()
        .any(|r| r["method"] == "GET" && r["target"] == origin.url("/headers")));
    assert!(egress_log
        .iter()
        .any(|r| r["method"] == "CONNECT" && r["target"] == format!("origin.test:{}", tls.port)));
}

#[test]
fn http_and_connect_chain_through_a_real_squid() {
    assert!(
        support::have("squid"),
        "squid is not installed (apt-get install squid)"
    );
    let origin = Origin::start();
    let tls = TlsOrigin::start("localhost");
    let squid = Squid::start();
    // Health checks without a target ask Squid itself (`OPTIONS *`): its
    // answer keeps it up even with the strictest threshold.
    let edge = Rampart::start(&egress_config(
        &[format!("http://127.0.0.1:{}", squid.port)],
        "failure_threshold = 1\nhealth_check_interval = \"200ms\"\n",
    ));
    std::thread::sleep(Duration::from_millis(800));
    let up = format!(
        "rampart_upstream_up{{group=\"egress\",proxy=\"127.0.0.1:{}\"}} 1",
        squid.port
    );
    assert!(edge.metrics().contains(&up), "{}", edge.metrics());

    let (code, body, err) = curl(&edge.proxy_url(), &[&origin.url("/hello")]);
    assert_eq!((code, body.as_str()), (0, "hello from origin"), "{err}");
    let ca = tls.ca_pem.display().to_string();
    let (code, body, err) = curl(
        &edge.proxy_url(),
        &["--cacert", &ca, &format!("https://localhost:{}/", tls.port)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("s_server"));

    // Squid writes a CONNECT line only once the tunnel has closed, and its log
    // also holds lines for readiness probes, so wait for the lines themselves.
    let get_line = format!("GET {}", origin.url("/hello"));
    let connect_line = format!("CONNECT localhost:{}", tls.port);
    assert!(
        eventually(Duration::from_secs(10), || {
            let log = squid.log();
            log.contains(&get_line) && log.contains(&connect_line)
        }),
        "squid log lacks {get_line:?} or {connect_line:?}: {}",
        squid.log()
    );
}

#[test]
fn failover_skips_a_dead_upstream_and_marks_it_down() {
    let origin = Origin::start();
    let egress = upstream_rampart();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let edge = Rampart::start(&egress_config(
        &[dead.clone(), egress.proxy_url()],
        "failure_threshold = 1\ndown_for = \"60s\"\nhealth_check_interval = \"0s\"\n",
    ));
    for _ in 0..3 {
        let (code, body, err) = curl(&edge.proxy_url(), &[&origin.url("/hello")]);
        assert_eq!((code, body.as_str()), (0, "hello from origin"), "{err}");
    }
    let metrics = edge.metrics();
    let dead_authority = dead.trim_start_matches("http://");
    assert!(
        metrics.contains(&format!(
            "rampart_upstream_up{{group=\"egress\",proxy=\"{dead_authority}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "rampart_upstream_up{{group=\"egress\",proxy=\"{}\"}} 1",
        egress.proxy
    )));
    assert_eq!(egress.access_log().len(), 3);
}

#[test]
fn a_recovered_first_upstream_takes_traffic_back() {
    let origin = Origin::start();
    let squid = Squid::start();
    // The preferred upstream is a Rampart on a port chosen now and started later.
    let preferred_port = support::free_port();
    let edge = Rampart::start(&egress_config(
        &[
            format!("http://127.0.0.1:{preferred_port}"),
            format!("http://127.0.0.1:{}", squid.port),
        ],
        "failure_threshold = 1\ndown_for = \"1s\"\nhealth_check_interval = \"300ms\"\n",
    ));
    let (code, _, err) = curl(&edge.proxy_url(), &[&origin.url("/hello")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(5), || squid.log().contains("/hello")),
        "served by squid while preferred is down"
    );

    let preferred = Rampart::start_with_args(
        "[proxy]\nallow_loopback_destinations = true\n",
        &["--proxy-listen", &format!("127.0.0.1:{preferred_port}")],
    );
    assert!(
        eventually(Duration::from_secs(10), || edge
            .metrics()
            .contains(&format!("proxy=\"127.0.0.1:{preferred_port}\"}} 1"))),
        "health check never saw the preferred upstream come back"
    );
    // Connections already pooled through the fallback drain by idle timeout;
    // a new origin connection goes through the recovered preferred upstream.
    let second_origin = Origin::start();
    let (code, _, err) = curl(&edge.proxy_url(), &[&second_origin.url("/headers")]);
    assert_eq!(code, 0, "{err}");
    assert!(preferred
        .access_log()
        .iter()
        .any(|r| r["target"] == second_origin.url("/headers")));
}
