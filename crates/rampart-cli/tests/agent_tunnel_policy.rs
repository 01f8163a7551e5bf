//! The gateway applies its policy to agent flows as it does to proxy clients, end to
//! end: curl / python3 → `rampart agent run` (local proxy) → mTLS HTTP/2 tunnel →
//! gateway. An access rule for the enrolled user blocks through the tunnel (403 on
//! the CONNECT stream, an event with device, user, process and rule); a decryption
//! rule decrypts the agent's stream (Rampart-issued certificate, a request-stage path
//! block inside it); the agent's `tunnel-bypass` is never decrypted (the origin's own
//! certificate; recorded with the process as do-not-decrypt); a `processes` condition
//! matches curl and not python3. Origins listen on ports outside `connect_ports`:
//! agent flows are not limited to the proxy's CONNECT ports.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::enrolled_agent::EnrolledAgent;
use support::origin::Origin;
use support::tls_origin::TlsOrigin;
use support::{curl, eventually, Rampart};

const POLICY: &str = r#"
[identities]
users = [{ name = "alice", groups = ["eng"] }]

[lists]
secret = ["shop.test/secret"]

[[decryption]]
id = "decrypt-shop"
name = "decrypt the shop"
when = { hosts = ["shop.test", "pinned.test"] }
action = "decrypt"

[[access]]
id = "alice-not-blocked-test"
name = "blocked.test is off limits for alice"
when = { users = ["alice"], hosts = ["blocked.test"] }
action = "block"

[[access]]
id = "no-secret"
name = "no secret pages"
when = { lists = ["secret"] }
action = "block"

[[access]]
id = "curl-not-tools"
name = "curl may not reach tools.test"
when = { processes = ["curl"], hosts = ["tools.test"] }
action = "block"
"#;

/// A gateway with the policy above, the test names resolved to loopback, `tls_ports`
/// covering the TLS origins and trusting their CAs, and `agent_http_ports` the
/// plain origins whose requests it must see one by one.
fn gateway(dir: &Path, tls: &[&TlsOrigin]) -> Rampart {
    gateway_with_plain(dir, tls, &[])
}

fn gateway_with_plain(dir: &Path, tls: &[&TlsOrigin], plain: &[u16]) -> Rampart {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let ports: Vec<String> = tls.iter().map(|o| o.port.to_string()).collect();
    let plain: Vec<String> = plain.iter().map(|p| p.to_string()).collect();
    let roots: Vec<String> = tls
        .iter()
        .map(|o| format!("{:?}", o.ca_pem.display().to_string()))
        .collect();
    Rampart::start(&format!(
        "policy = {:?}\n[proxy]\nallow_loopback_destinations = true\ntls_ports = [443, {}]\n\
         agent_http_ports = [80, {}]\n\
         [resolve]\n\"shop.test\" = \"127.0.0.1\"\n\"pinned.test\" = \"127.0.0.1\"\n\
         \"blocked.test\" = \"127.0.0.1\"\n\"tools.test\" = \"127.0.0.1\"\n\
         [tls]\nsystem_roots = {}\nextra_roots = [{}]\n",
        policy.display().to_string(),
        ports.join(", "),
        plain.join(", "),
        // Without test origins there is nothing to trust but the system's roots.
        roots.is_empty(),
        roots.join(", ")
    ))
}

#[test]
fn an_access_rule_for_the_enrolled_user_blocks_through_the_tunnel_and_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &[]);
    let origin = Origin::start();
    let agent = EnrolledAgent::start(&gw, "alice", "eng", "");
    let url = format!("http://blocked.test:{}/page", origin.port());
    let (_, body, err) = curl(&agent.proxy_url(), &["-w", "\n%{http_code}", &url]);
    // The gateway refuses the CONNECT stream with 403; the agent passes the refusal
    // on as a 403 of its own (a denial, not a broken gateway path).
    assert!(
        body.ends_with("\n403") && body.contains("refused tunnel") && !body.contains("hello"),
        "{body}{err}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the blocked origin was reached"
    );
    let record = gw.find_record(|r| {
        r["method"] == "CONNECT" && r["target"] == format!("blocked.test:{}", origin.port())
    });
    assert_eq!(record["status"], 403, "{record}");
    assert_eq!(record["device"], agent.device.as_str(), "{record}");
    assert_eq!(record["user"], "alice");
    assert_eq!(record["process"]["name"], "curl");
    assert_eq!(record["policy"]["rule_id"], "alice-not-blocked-test");
    assert!(record["error"]
        .as_str()
        .unwrap_or("")
        .contains("blocked.test is off limits for alice"));

    let query = format!("device = {} and action = block", agent.device);
    let mut events = Vec::new();
    let found = eventually(Duration::from_secs(10), || {
        events = gw.search_events(&query, "json");
        events.iter().any(|e| {
            e["host"] == "blocked.test"
                && e["user"] == "alice"
                && e["process"] == "curl"
                && e["rule_id"] == "alice-not-blocked-test"
        })
    });
    assert!(
        found,
        "{events:#?}\nall: {:#?}",
        gw.search_events("", "json")
    );
}

#[test]
fn a_decryption_rule_decrypts_the_agents_stream_and_blocks_a_path_inside() {
    let dir = tempfile::tempdir().unwrap();
    let shop = TlsOrigin::start("shop.test");
    let gw = gateway(dir.path(), &[&shop]);
    let ca = gw.gateway_ca();
    let agent = EnrolledAgent::start(&gw, "alice", "eng", "");

    let open = format!("https://shop.test:{}/public", shop.port);
    let (code, body, err) = curl(
        &agent.proxy_url(),
        &["-v", "--cacert", ca.to_str().unwrap(), &open],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("issuer: CN=Rampart Gateway CA"), "{err}");
    assert!(body.contains("s_server"), "the origin's page: {body}");

    let secret = format!("https://shop.test:{}/secret/plans", shop.port);
    let (code, page, err) = curl(
        &agent.proxy_url(),
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "Accept: text/html",
            "-w",
            "\n%{http_code}",
            &secret,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("no secret pages"), "{page}");
    assert!(page.ends_with("\n403"), "{page}");

    let request = gw.find_record(|r| r["target"] == secret.as_str());
    assert_eq!(request["status"], 403);
    assert_eq!(request["policy"]["rule_id"], "no-secret");
    assert_eq!(request["device"], agent.device.as_str(), "{request}");
    assert_eq!(request["process"]["name"], "curl", "{request}");
    assert_eq!(request["tls"]["decision"], "decrypt");
    assert_eq!(request["tls"]["reason"], "policy rule \"decrypt the shop\"");
    let tunnel = gw.find_record(|r| {
        r["method"] == "CONNECT" && r["tls"]["decision"] == "decrypt" && r["status"] == 200
    });
    assert_eq!(tunnel["device"], agent.device.as_str());
    assert!(
        tunnel["bytes_from_client"].as_u64().unwrap_or(0) > 0
            && tunnel["bytes_to_client"].as_u64().unwrap_or(0) > 0,
        "a decrypted tunnel counts its bytes: {tunnel}"
    );
}

#[test]
fn tunnel_bypass_is_never_decrypted_and_is_recorded_with_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = TlsOrigin::start("pinned.test");
    // The policy would decrypt pinned.test: the agent's tunnel-bypass wins.
    let gw = gateway(dir.path(), &[&pinned]);
    let agent = EnrolledAgent::start(
        &gw,
        "alice",
        "eng",
        "[[steering.exceptions]]\nname = \"pinned app\"\nprocesses = [\"curl\"]\nhosts = [\"pinned.test\"]\naction = \"tunnel-bypass\"\n",
    );
    let url = format!("https://pinned.test:{}/", pinned.port);
    let (code, body, err) = curl(
        &agent.proxy_url(),
        &["-v", "--cacert", pinned.ca_pem.to_str().unwrap(), &url],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("issuer: CN=Rampart-Test-Origin-CA"), "{err}");
    assert!(body.contains("s_server"), "{body}");

    let tunnel = gw.find_record(|r| {
        r["method"] == "CONNECT" && r["target"] == format!("pinned.test:{}", pinned.port)
    });
    assert_eq!(tunnel["device"], agent.device.as_str());
    assert_eq!(tunnel["process"]["name"], "curl");
    assert_eq!(tunnel["process"]["steering"], "tunnel-bypass");
    assert_eq!(tunnel["tls"]["decision"], "do-not-decrypt", "{tunnel}");
    assert_eq!(tunnel["tls"]["reason"], "tunnel-bypass by agent");
    // The ClientHello was read from the agent's stream and replayed to the origin.
    assert_eq!(tunnel["tls"]["sni"], "pinned.test");
    assert!(
        agent
            .log()
            .contains("Bypassing connection by tunneling from process: curl, host: pinned.test"),
        "{}",
        agent.log()
    );
    let found = eventually(Duration::from_secs(10), || {
        gw.search_events(
            &format!("device = {} and tls = do-not-decrypt", agent.device),
            "json",
        )
        .iter()
        .any(|e| e["process"] == "curl" && e["bypass"] == "gateway")
    });
    assert!(found, "{:#?}", gw.search_events("", "json"));
}

#[test]
fn a_processes_condition_matches_curl_but_not_python3() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &[]);
    let origin = Origin::start();
    let agent = EnrolledAgent::start(&gw, "bob", "ops", "");
    let url = format!("http://tools.test:{}/hello", origin.port());

    let (_, body, err) = curl(&agent.proxy_url(), &["-w", "\n%{http_code}", &url]);
    assert!(body.contains("403"), "curl must be refused: {body}{err}");
    let refused = gw.find_record(|r| {
        r["method"] == "CONNECT" && r["process"]["name"] == "curl" && r["status"] == 403
    });
    assert_eq!(refused["policy"]["rule_id"], "curl-not-tools");

    let script = r#"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": sys.argv[1]}))
try:
    print(opener.open(sys.argv[2], timeout=20).status)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &agent.proxy_url(), &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "200",
        "python3 must pass: {stdout}{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        gw.access_log()
    );
    let passed = gw.find_record(|r| {
        r["method"] == "CONNECT"
            && r["process"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("python3"))
    });
    assert_eq!(passed["status"], 200, "{passed}");
    assert_eq!(passed["user"], "bob");
    assert!(passed["policy"]["rule_id"] != "curl-not-tools", "{passed}");
}

#[test]
fn plain_http_through_the_tunnel_is_checked_request_by_request() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let gw = gateway_with_plain(dir.path(), &[], &[origin.port()]);
    let agent = EnrolledAgent::start(&gw, "alice", "eng", "");
    let open = format!("http://shop.test:{}/hello", origin.port());
    let (code, body, err) = curl(&agent.proxy_url(), &["-w", "\n%{http_code}", &open]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("\n200"), "{body}");
    let secret = format!("http://shop.test:{}/secret/plans", origin.port());
    let (code, body, err) = curl(&agent.proxy_url(), &["-w", "\n%{http_code}", &secret]);
    assert_eq!(code, 0, "{err}");
    assert!(
        body.contains("no secret pages") && body.ends_with("\n403"),
        "{body}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the allowed request reached the origin"
    );
    let blocked = gw.find_record(|r| r["target"] == secret.as_str());
    assert_eq!(blocked["status"], 403);
    assert_eq!(blocked["policy"]["rule_id"], "no-secret");
    assert_eq!(blocked["device"], agent.device.as_str());
    assert_eq!(blocked["process"]["name"], "curl");
    let passed = gw.find_record(|r| r["target"] == open.as_str());
    assert_eq!(passed["status"], 200);
    assert_eq!(passed["user"], "alice");
}
