//! The data path's policy phases, end to end with curl and openssl through the
//! real binary: undecided rules never fail open, a file-type rule really
//! blocks, the ClientHello's name must agree with the CONNECT target, a blocked
//! HTTPS site shows the block page, requests of one tunnel share its flow id,
//! groups from `[identities]` reach the events, and the policy revision does
//! not depend on how its path is spelled.

#[path = "support/https_fixtures.rs"]
mod https_fixtures;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use https_fixtures::{CertKind, PyHttpsOrigin, Serve, TestPki};
use support::origin::Origin;
use support::tls_origin::TlsOrigin;
use support::{curl, free_port, hash_password, rampart_bin, run, Rampart};

/// A gateway with `policy`, the test names resolved to loopback, every port
/// allowed for CONNECT, `tls_port` intercepted and `roots` trusted for origins.
fn gateway(policy: &str, tls_port: u16, roots: &[&Path]) -> (Rampart, tempfile::TempDir) {
    gateway_with_users(policy, tls_port, roots, "")
}

/// [`gateway`] with `users` as the `[proxy] users` line (proxy authentication).
fn gateway_with_users(
    policy: &str,
    tls_port: u16,
    roots: &[&Path],
    users: &str,
) -> (Rampart, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let roots: Vec<String> = roots
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    // Origins are trusted by the roots given; with none, the system's.
    let tls = if roots.is_empty() {
        String::new()
    } else {
        format!(
            "[tls]\nsystem_roots = false\nextra_roots = [{}]\n",
            roots.join(", ")
        )
    };
    let gw = Rampart::start(&format!(
        "policy = {path:?}\n\
         [proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {tls_port}]\n\
         {users}\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [resolve]\n\"ok.test\" = \"127.0.0.1\"\n\"evil.test\" = \"127.0.0.1\"\n\"shop.test\" = \"127.0.0.1\"\n{tls}",
        path = policy_path.display().to_string(),
    ));
    (gw, dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_file_types_rule_before_a_host_block_does_not_let_the_host_through() {
    let origin = Origin::start();
    let policy = r#"
[[access]]
name = "alert on executables"
when = { file_types = ["exe"] }
action = "alert"

[[access]]
name = "no evil"
when = { hosts = ["evil.test"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, free_port(), &[]);
    // Not an executable: the first rule does not match, the second blocks.
    let url = format!("http://evil.test:{}/hello", origin.port());
    let (_, body, _) = curl(&gw.proxy_url(), &["-w", "\n%{http_code}", &url]);
    assert!(body.ends_with("403"), "{body}");
    assert!(body.contains("no evil"), "{body}");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["policy"]["action"], "block", "{record}");
    assert_eq!(record["policy"]["rule"], "no evil", "{record}");
    // An executable matches the first rule: alerted and passed, as the policy says.
    let exe = format!("http://evil.test:{}/magic/exe", origin.port());
    let (_, body, _) = curl(&gw.proxy_url(), &["-w", "\n%{http_code}", &exe]);
    assert!(body.starts_with("MZ") && body.ends_with("200"), "{body}");
    let record = gw.find_record(|r| r["target"] == exe.as_str());
    assert_eq!(record["policy"]["action"], "alert", "{record}");
}

#[test]
fn a_block_that_every_undecided_rule_agrees_with_never_contacts_the_origin() {
    let origin = Origin::start();
    let policy = r#"
[[access]]
name = "no executables"
when = { file_types = ["exe"] }
action = "block"

[[access]]
name = "no evil"
when = { hosts = ["evil.test"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, free_port(), &[]);
    let url = format!("http://evil.test:{}/hello", origin.port());
    let (_, body, _) = curl(&gw.proxy_url(), &["-w", "\n%{http_code}", &url]);
    assert!(body.ends_with("403"), "{body}");
    // Whatever the file type, the answer is block: evil.test never saw the request.
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_file_types_block_blocks_an_executable_download_with_the_block_page() {
    let origin = Origin::start();
    let policy = r#"
[[access]]
name = "no executables"
when = { file_types = ["exe"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, free_port(), &[]);
    let exe = format!("http://ok.test:{}/magic/exe", origin.port());
    let pdf = format!("http://ok.test:{}/magic/pdf", origin.port());
    let (_, page, _) = curl(
        &gw.proxy_url(),
        &["-H", "Accept: text/html", "-w", "\n%{http_code}", &exe],
    );
    assert!(page.ends_with("403"), "{page}");
    assert!(
        page.contains("<html") && page.contains("no executables"),
        "{page}"
    );
    // Another type passes untouched, held bytes and all.
    let (_, body, _) = curl(&gw.proxy_url(), &[&pdf]);
    assert!(
        body.starts_with("%PDF-1.7") && body.ends_with("%%EOF\n"),
        "{body}"
    );

    let record = gw.find_record(|r| r["target"] == exe.as_str());
    assert_eq!(record["status"], 403);
    assert_eq!(record["file_type"], "exe", "{record}");
    assert_eq!(record["policy"]["action"], "block");
    let record = gw.find_record(|r| r["target"] == pdf.as_str());
    assert_eq!(record["status"], 200);
    assert_eq!(record["file_type"], "pdf", "{record}");
    assert_eq!(record["policy"]["action"], "allow");
}

#[test]
fn a_methods_rule_before_a_host_block_refuses_an_undecrypted_tunnel_to_that_host() {
    let origin = TlsOrigin::start("evil.test");
    let policy = r#"
[[decryption]]
name = "never decrypt evil"
when = { hosts = ["evil.test"] }
action = "do-not-decrypt"

[[access]]
name = "uploads are fine"
when = { methods = ["POST"] }
action = "allow"

[[access]]
name = "no evil"
when = { hosts = ["evil.test"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, origin.port, &[&origin.ca_pem]);
    let url = format!("https://evil.test:{}/", origin.port);
    let (code, _, err) = curl(&gw.proxy_url(), &["--cacert", s(&origin.ca_pem), &url]);
    assert_ne!(code, 0);
    assert!(err.contains("403"), "curl: {err}");
    let target = format!("evil.test:{}", origin.port);
    let record = gw.find_record(|r| r["target"] == target.as_str());
    assert_eq!(record["status"], 403);
    assert_eq!(record["policy"]["action"], "block", "{record}");
    assert_eq!(record["policy"]["rule"], "no evil");
    // The method rule could never be decided inside this tunnel: recorded as skipped.
    assert_eq!(
        record["policy"]["skipped"][0], "uploads are fine",
        "{record}"
    );
}

/// openssl s_client through the proxy's CONNECT, with the given SNI.
fn s_client(gw: &Rampart, connect: &str, sni: &str, ca: &Path) -> String {
    let proxy = gw.proxy_url().trim_start_matches("http://").to_string();
    let out = run(Command::new("timeout")
        .args([
            "20", "openssl", "s_client", "-proxy", &proxy, "-connect", connect,
        ])
        .args([
            "-servername",
            sni,
            "-CAfile",
            s(ca),
            "-verify_return_error",
            "-brief",
        ])
        .stdin(Stdio::null()));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_pinned_app_sni_cannot_open_an_uninspected_tunnel_to_another_destination() {
    let origin = TlsOrigin::start("evil.test");
    let (gw, _dir) = gateway(
        "[defaults]\naccess = \"allow\"\n",
        origin.port,
        &[&origin.ca_pem],
    );
    let connect = format!("evil.test:{}", origin.port);
    // www.dropbox.com is a built-in pinned app (do-not-decrypt): before this
    // fix the tunnel to evil.test was spliced untouched.
    let out = s_client(&gw, &connect, "www.dropbox.com", &origin.ca_pem);
    assert!(
        !out.contains("Verification: OK") && !out.contains("CONNECTION ESTABLISHED"),
        "a TLS session was established through a fronted tunnel:\n{out}"
    );
    let record = gw.find_record(|r| r["target"] == connect.as_str());
    assert_eq!(record["tls"]["decision"], "fronting", "{record}");
    assert_eq!(record["status"], 403);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("names www.dropbox.com but the CONNECT is for evil.test"),
        "{record}"
    );
    // The event says so too: an analyst finds it with `tls = fronting`.
    let id = record["id"].as_str().unwrap().to_string();
    let mut found = None;
    rampart_testkit::eventually(std::time::Duration::from_secs(10), || {
        found = gw
            .search_events("tls = fronting", "json")
            .into_iter()
            .find(|e| e["id"] == id.as_str() || e["flow"] == id.as_str());
        found.is_some()
    });
    let event = found.unwrap_or_else(|| {
        panic!(
            "the fronting tunnel's event (record {id}), found by tls = fronting; all events: {:#?}",
            gw.search_events("", "json")
        )
    });
    assert_eq!(
        (&event["tls"], &event["action"]),
        (&"fronting".into(), &"block".into()),
        "{event}"
    );
    // The same CONNECT with its own name is decrypted as usual.
    let ca = gw.gateway_ca();
    let out = s_client(&gw, &connect, "evil.test", &ca);
    assert!(out.contains("Verification: OK"), "{out}");
}

#[test]
fn a_blocked_https_site_shows_the_block_page_inside_tls_without_contacting_it() {
    // Nothing listens on this port: the block page must come from the gateway alone.
    let port = free_port();
    let policy = r#"
[[access]]
name = "no evil"
when = { hosts = ["evil.test"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, port, &[]);
    let ca = gw.gateway_ca();
    let url = format!("https://evil.test:{port}/login");
    let (code, page, err) = curl(
        &gw.proxy_url(),
        &[
            "--cacert",
            s(&ca),
            "-H",
            "Accept: text/html",
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(page.ends_with("403"), "{page}");
    assert!(page.contains("<html") && page.contains("no evil"), "{page}");
    assert!(page.contains("Event ID"), "{page}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert_eq!(tunnel["policy"]["action"], "block");
    let request = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(request["status"], 403);
    assert_eq!(request["flow_id"], tunnel["id"], "{request}");

    // A tool without Accept: text/html gets the plain-text page.
    let (_, text, _) = curl(&gw.proxy_url(), &["--cacert", s(&ca), &url]);
    assert!(
        text.contains("no evil") && !text.contains("<html"),
        "{text}"
    );
}

#[test]
fn requests_in_one_decrypted_tunnel_share_its_flow_id_and_are_each_decided() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(root.join(name), format!("file {name}\n")).unwrap();
    }
    std::fs::write(
        root.join("setup.exe"),
        b"MZ\x90\x00\x03\x00\x00\x00 a PE file",
    )
    .unwrap();
    let pki = TestPki::new(dir.path(), "shop", &["shop.test"], CertKind::Valid);
    let origin = PyHttpsOrigin::start(Serve::Static, &root, &pki);
    let policy = r#"
[lists]
token-urls = ["shop.test/c"]

[[access]]
name = "no c"
when = { lists = ["token-urls"] }
action = "block"

[[access]]
name = "no executables"
when = { file_types = ["exe"] }
action = "block"
"#;
    let (gw, _dir) = gateway(policy, origin.port, &[&pki.ca_pem]);
    let ca = gw.gateway_ca();
    let base = format!("https://shop.test:{}", origin.port);
    let urls = [
        format!("{base}/a"),
        format!("{base}/b?page=2"),
        format!("{base}/c?token=secret"),
        format!("{base}/setup.exe"),
    ];
    let (code, _, err) = curl(
        &gw.proxy_url(),
        &[
            "-v",
            "--http1.1",
            "--cacert",
            s(&ca),
            &urls[0],
            &urls[1],
            &urls[2],
            &urls[3],
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    for url in &urls {
        let r = gw.find_record(|r| r["target"] == url.as_str());
        assert_eq!(r["flow_id"], tunnel["id"], "{r}");
    }
    // Path rules match inside the tunnel (the query is ignored by path patterns,
    // and recorded on the URL).
    let blocked = gw.find_record(|r| r["target"] == urls[2].as_str());
    assert_eq!(blocked["status"], 403, "{blocked}");
    let fine = gw.find_record(|r| r["target"] == urls[1].as_str());
    assert_eq!(fine["status"], 200, "{fine}");
    // The response phase works inside TLS too: the executable is blocked.
    let exe = gw.find_record(|r| r["target"] == urls[3].as_str());
    assert_eq!(exe["status"], 403, "{exe}");
    assert_eq!(exe["file_type"], "exe", "{exe}");
    // The events of the requests are found by the tunnel's flow id.
    let flow = tunnel["id"].as_str().unwrap();
    let mut found = Vec::new();
    support::eventually(std::time::Duration::from_secs(15), || {
        found = gw.search_events(&format!("flow_id = {flow}"), "json");
        found.len() >= 5
    });
    assert!(found.len() >= 5, "{found:#?}");
}

#[test]
fn groups_from_identities_are_recorded_on_events_and_the_access_log() {
    let origin = Origin::start();
    let policy = r#"
[identities]
users = [{ name = "alice", groups = ["engineering"] }]
"#;
    let hash = hash_password("pw");
    let users = format!("users = [{{ name = \"alice\", password_hash = \"{hash}\" }}]");
    let (gw, _dir) = gateway_with_users(policy, free_port(), &[], &users);
    let url = format!("http://ok.test:{}/hello", origin.port());
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", &url]);
    assert_eq!(body, "hello from origin");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["groups"][0], "engineering", "{record}");
    let mut found = Vec::new();
    support::eventually(std::time::Duration::from_secs(15), || {
        found = gw.search_events("group = engineering", "json");
        !found.is_empty()
    });
    assert!(!found.is_empty(), "no event for group = engineering");
}

#[test]
fn the_policy_revision_is_the_same_from_any_path_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "[[access]]\nname = \"x\"\nwhen = { hosts = [\"a.test\"] }\naction = \"block\"\n";
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let revision = |arg: &str| {
        let out = run(Command::new(rampart_bin())
            .args(["policy", "check", arg])
            .current_dir(dir.path()));
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rev = text
            .split("revision ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .map(str::to_string);
        rev.unwrap_or_else(|| panic!("no revision in {text}"))
    };
    let relative = revision("policy.toml");
    let dotted = revision("./policy.toml");
    let absolute = revision(dir.path().join("policy.toml").to_str().unwrap());
    assert_eq!(relative, absolute);
    assert_eq!(relative, dotted);
}

/// The serial of the leaf the gateway presents for `name` through a CONNECT to `port`.
fn leaf_serial(gw: &Rampart, name: &str, port: u16) -> String {
    let proxy = gw.proxy_url().trim_start_matches("http://").to_string();
    let script = format!(
        "timeout 20 openssl s_client -proxy {proxy} -connect {name}:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = run(Command::new("sh").arg("-c").arg(&script));
    let serial = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(serial.starts_with("serial="), "{script}: {out:?}");
    serial
}

#[test]
fn a_policy_reload_keeps_the_minted_leaves() {
    let origin = TlsOrigin::start("shop.test");
    let (gw, dir) = gateway(
        "[defaults]\naccess = \"allow\"\n",
        origin.port,
        &[&origin.ca_pem],
    );
    let before = leaf_serial(&gw, "shop.test", origin.port);
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[access]]\nname = \"no evil\"\nwhen = { hosts = [\"evil.test\"] }\naction = \"block\"\n",
    )
    .unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        support::eventually(std::time::Duration::from_secs(15), || {
            gw.stderr().matches("reloaded").count() >= 1
        }),
        "no reload: {}",
        gw.stderr()
    );
    // The new policy is in force...
    let url = format!("http://evil.test:{}/", free_port());
    let (_, body, _) = curl(&gw.proxy_url(), &["-w", "\n%{http_code}", &url]);
    assert!(body.ends_with("403"), "{body}");
    // ...and the leaf minted before the reload is still the one served.
    let after = leaf_serial(&gw, "shop.test", origin.port);
    assert_eq!(before, after);
}

#[test]
fn fronting_let_through_in_alert_mode_judges_each_request_under_the_connect_host_too() {
    // The ClientHello and the requests name ok.test; the CONNECT goes to
    // evil.test, whose admin path is blocked. ok.test resolves elsewhere, so
    // the names are two sites: fronting, which `tls.fronting = "alert"` lets
    // through. Before, the decrypted requests were judged under the SNI alone
    // and /admin of the CONNECT host was served.
    let origin = TlsOrigin::start("ok.test");
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        r#"
[lists]
evil-admin = ["evil.test/admin"]

[[access]]
name = "no evil admin"
when = { lists = ["evil-admin"] }
action = "block"
"#,
    )
    .unwrap();
    let gw = Rampart::start(&format!(
        "policy = {path:?}\n\
         [proxy]\nallow_loopback_destinations = true\nconnect_ports = [\"1025-65535\"]\ntls_ports = [{port}]\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [resolve]\n\"evil.test\" = \"127.0.0.1\"\n\"ok.test\" = \"127.0.0.2\"\n\
         [tls]\nfronting = \"alert\"\nsystem_roots = false\nextra_roots = [{ca:?}]\n",
        path = policy_path.display().to_string(),
        port = origin.port,
        ca = origin.ca_pem.display().to_string(),
    ));
    let ca = gw.gateway_ca();
    let port = origin.port;
    let fronted = |path: &str| {
        let (code, out, err) = curl(
            &gw.proxy_url(),
            &[
                "--cacert",
                s(&ca),
                "--connect-to",
                &format!("ok.test:{port}:evil.test:{port}"),
                "-w",
                "\n%{http_code}",
                &format!("https://ok.test:{port}{path}"),
            ],
        );
        assert_eq!(code, 0, "{err}");
        out
    };
    let admin = fronted("/admin");
    assert!(admin.ends_with("403"), "{admin}");
    assert!(admin.contains("no evil admin"), "{admin}");
    let request =
        gw.find_record(|r| r["target"] == format!("https://ok.test:{port}/admin").as_str());
    assert_eq!(request["status"], 403, "{request}");
    assert_eq!(request["policy"]["rule"], "no evil admin", "{request}");
    // The tunnel itself was fronting, let through and recorded as such.
    let tunnel = gw.find_record(|r| {
        r["method"] == "CONNECT" && r["target"] == format!("evil.test:{port}").as_str()
    });
    assert!(
        tunnel["tls"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fronting allowed")),
        "{tunnel}"
    );
    // Other paths of both names pass: alert mode still serves.
    let page = fronted("/public");
    assert!(page.ends_with("200"), "{page}");
}
