//! Who may use the proxy: source ACLs, Basic and Bearer authentication, and
//! the refusal to start as an open proxy.

mod support;

use std::process::Command;

use support::origin::Origin;
use support::{curl, curl_status, Rampart};

/// `rampart hash-password` output, checked: Argon2id and no trace of the password.
fn hash_password(password: &str) -> String {
    let hash = support::hash_password(password);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(password));
    hash
}

#[test]
fn source_outside_the_acl_gets_403() {
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\nallow_networks = [\"10.0.0.0/8\"]\n",
    );
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-w", " %{http_code}", &origin.url("/hello")],
    );
    assert!(
        body.contains("source address not allowed") && body.ends_with("403"),
        "{body}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn basic_auth_challenges_with_407_then_admits_the_right_password() {
    let origin = Origin::start();
    let hash = hash_password("correct horse");
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nusers = [{{ name = \"alice\", password_hash = \"{hash}\", groups = [\"engineering\"] }}]\n"
    ));
    let proxy = gw.proxy_url();
    let (_, head, _) = curl(
        &proxy,
        &["-D", "-", "-o", "/dev/null", &origin.url("/hello")],
    );
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"rampart\""),
        "{head}"
    );

    assert_eq!(
        curl_status(&proxy, &origin.url("/hello"), &["-U", "alice:wrong"]),
        407
    );
    assert_eq!(
        curl_status(
            &proxy,
            &origin.url("/hello"),
            &["-U", "mallory:correct horse"]
        ),
        407
    );
    assert_eq!(
        curl_status(
            &proxy,
            &origin.url("/hello"),
            &["-U", "alice:correct horse"]
        ),
        200
    );

    // The credential is for the proxy only: it never reaches the origin.
    let (_, body, _) = curl(
        &proxy,
        &["-U", "alice:correct horse", &origin.url("/headers")],
    );
    assert!(
        !body.to_ascii_lowercase().contains("proxy-authorization"),
        "{body}"
    );

    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|r| r["user"] == "alice" && r["status"] == 200),
        "{log:?}"
    );
    assert!(log
        .iter()
        .any(|r| r["status"] == 407 && r["error"] == "proxy authentication required"));
}

#[test]
fn bearer_token_is_accepted_by_its_digest() {
    let origin = Origin::start();
    // sha256("ci-token-1")
    let digest = {
        let out = Command::new("sh")
            .arg("-c")
            .arg("printf %s ci-token-1 | sha256sum | cut -d' ' -f1")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\ntokens = [{{ name = \"ci-bot\", sha256 = \"{digest}\" }}]\n"
    ));
    let ok = curl_status(
        &gw.proxy_url(),
        &origin.url("/hello"),
        &["--proxy-header", "Proxy-Authorization: Bearer ci-token-1"],
    );
    assert_eq!(ok, 200);
    let bad = curl_status(
        &gw.proxy_url(),
        &origin.url("/hello"),
        &["--proxy-header", "Proxy-Authorization: Bearer nope"],
    );
    assert_eq!(bad, 407);
    // CONNECT is authenticated the same way.
    let reply = support::raw_exchange(
        gw.proxy,
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        std::time::Duration::from_secs(3),
    );
    assert!(reply.starts_with("HTTP/1.1 407"), "{reply}");
}

#[test]
fn refuses_to_start_as_an_open_proxy_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::rampart_bin())
        .args(["server", "--proxy-listen"])
        .arg(format!("0.0.0.0:{}", support::free_port()))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{}", support::free_port()))
        .arg("--tunnel-listen")
        .arg(format!("127.0.0.1:{}", support::free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start an open proxy"), "{err}");
    assert!(err.contains("allow_networks"), "{err}");
}

#[test]
fn plain_text_password_in_the_config_is_refused() {
    let err = Rampart::try_start(
        "[proxy]\nusers = [{ name = \"bob\", password_hash = \"hunter2\" }]\n",
        &[],
    )
    .err()
    .expect("must not start");
    assert!(err.contains("rampart hash-password"), "{err}");
}
