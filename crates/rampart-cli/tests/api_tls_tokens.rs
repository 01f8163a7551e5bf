//! The API over TLS, scoped tokens and the audit trail, with the real binary, curl
//! and `rampart agent enroll`:
//! - beyond 127.0.0.1 the API serves HTTPS with a certificate minted from Rampart's CA
//!   (curl verifies it with `--cacert ca.pem`, and refuses it without), kept 0600 in
//!   the data dir and reused after a restart; an operator's `tls_cert`/`tls_key` too;
//! - `admin`, `analyst` and `enroll` tokens are allowed and refused (403 naming the
//!   scope needed) where they should be; `rampart token revoke` makes a token fail
//!   with 401 on the next call, without a restart;
//! - every API call is an audit event (`type = audit`);
//! - enrollment over HTTPS succeeds with the CA's fingerprint or certificate pinned
//!   and is refused, before the token is sent, with a wrong one.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::api::{api_call, curl_direct, rampart_cli, require_curl, succeeded};
use support::{eventually, free_port, rampart_bin, run, Rampart};

/// A `rampart server` whose API listens where a test says (the harness's own waits
/// for plain HTTP on 127.0.0.1).
struct Server {
    child: Child,
    dir: PathBuf,
    api: SocketAddr,
}

impl Server {
    /// Starts a server with its files in `dir` and `api_toml` in its `[api]` table.
    fn start(dir: &Path, api_ip: &str, api_toml: &str) -> Server {
        let api: SocketAddr = format!("{api_ip}:{}", free_port()).parse().unwrap();
        let config = format!(
            "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{}\"\n[api]\nlisten = \"{api}\"\n{api_toml}\n[tunnel]\nlisten = \"127.0.0.1:{}\"\n",
            dir.join("data").display().to_string(),
            free_port(),
            free_port()
        );
        std::fs::write(dir.join("rampart.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(rampart_bin())
            .args(["server", "--config"])
            .arg(dir.join("rampart.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rampart server");
        let mut server = Server {
            child,
            dir: dir.to_path_buf(),
            api,
        };
        let ready = eventually(Duration::from_secs(20), || {
            server.stderr().contains("rampart is ready")
                || matches!(server.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            ready && server.stderr().contains("rampart is ready"),
            "server did not start:\n{}",
            server.stderr()
        );
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.api)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One API call with a bearer token (a POST carries `{}`): status and JSON body.
fn call(api: SocketAddr, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    api_call(
        api,
        method,
        path,
        Some(token),
        (method == "POST").then_some("{}"),
    )
}

fn token_create(data: &Path, scope: &str, name: &str) -> String {
    let secret = succeeded(&rampart_cli(&[
        "token",
        "create",
        "--scope",
        scope,
        "--name",
        name,
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(secret.starts_with("rmps_"), "{secret:?}");
    secret
}

/// The CA fingerprint as `rampart ca show` prints it.
fn ca_sha256(data: &Path) -> String {
    let shown = succeeded(&rampart_cli(&[
        "ca",
        "show",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    shown
        .lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no sha256 line in:\n{shown}"))
}

#[test]
fn api_beyond_localhost_serves_https_with_a_minted_certificate_reused_after_restart() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.2 is not one of the two localhost addresses: HTTPS by default (auto).
    let server = Server::start(dir.path(), "127.0.0.2", "tls_names = [\"rampart.test\"]\n");
    let ca = server.data().join("ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let (exit, status, body) = curl_direct(&["--cacert", ca_arg, &server.url("/healthz")]);
    assert_eq!((exit, status, body.trim()), (0, 200, "ok"));
    // The tls_names name is on the certificate too.
    let resolve = format!("rampart.test:{}:127.0.0.2", server.api.port());
    let by_name = format!("https://rampart.test:{}/healthz", server.api.port());
    let (exit, status, _) = curl_direct(&["--cacert", ca_arg, "--resolve", &resolve, &by_name]);
    assert_eq!((exit, status), (0, 200));
    // Without the CA, curl refuses the certificate (60: peer certificate not verified).
    let (exit, _, _) = curl_direct(&[&server.url("/healthz")]);
    assert_eq!(
        exit, 60,
        "curl without --cacert must refuse the certificate"
    );
    // Plain HTTP gets no answer from a TLS listener.
    let (_, status, _) = curl_direct(&[&format!("http://{}/healthz", server.api)]);
    assert_ne!(status, 200);
    // The admin token works over HTTPS; the console's cookies are Secure.
    let admin = std::fs::read_to_string(server.data().join("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", admin.trim());
    let (exit, status, _) = curl_direct(&[
        "--cacert",
        ca_arg,
        "-H",
        &auth,
        &server.url("/api/v1/policy/status"),
    ]);
    assert_eq!((exit, status), (0, 200));
    let headers = run(Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca_arg])
        .arg(server.url("/login")));
    let headers = String::from_utf8_lossy(&headers.stdout).to_lowercase();
    assert!(
        headers.contains("set-cookie:") && headers.contains("; secure"),
        "console cookies over HTTPS must be Secure:\n{headers}"
    );
    // Key 0600 in the data dir; the same certificate after a restart.
    let key_mode = std::fs::metadata(server.data().join("api-tls.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
        0o600
    );
    let cert_before = std::fs::read(server.data().join("api-tls.pem")).unwrap();
    server.stop();
    let server = Server::start(dir.path(), "127.0.0.2", "tls_names = [\"rampart.test\"]\n");
    assert_eq!(
        std::fs::read(server.data().join("api-tls.pem")).unwrap(),
        cert_before,
        "the minted certificate is reused across restarts"
    );
    let (exit, status, _) = curl_direct(&["--cacert", ca_arg, &server.url("/healthz")]);
    assert_eq!((exit, status), (0, 200));
}

#[test]
fn an_operator_certificate_is_served_from_tls_cert_and_tls_key_even_on_localhost() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Org CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::default();
    leaf_params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (cert, key, ca) = (
        dir.path().join("api.pem"),
        dir.path().join("api.key"),
        dir.path().join("org-ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let server = Server::start(
        dir.path(),
        "127.0.0.1",
        &format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key),
    );
    let (exit, status, _) =
        curl_direct(&["--cacert", ca.to_str().unwrap(), &server.url("/healthz")]);
    assert_eq!((exit, status), (0, 200));
    assert!(
        !server.data().join("api-tls.pem").exists(),
        "nothing minted"
    );
}

#[test]
fn each_token_scope_is_allowed_and_refused_where_it_should_be_and_revocation_is_immediate() {
    require_curl();
    let gw = Rampart::start("");
    let data = gw.data_dir();
    let api = gw.api;
    let admin_file = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let analyst = token_create(&data, "analyst", "soc");
    let enroll = token_create(&data, "enroll", "mdm");
    let admin = token_create(&data, "admin", "ops");

    // Hashed, never in clear, and private.
    let store = std::fs::read_to_string(data.join("api-tokens.json")).unwrap();
    for secret in [&analyst, &enroll, &admin] {
        assert!(!store.contains(secret.as_str()));
    }
    let mode = std::fs::metadata(data.join("api-tokens.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let listed = succeeded(&rampart_cli(&[
        "token",
        "list",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    for name in ["soc", "mdm", "ops", "admin.token"] {
        assert!(listed.contains(name), "{listed}");
    }

    // analyst: reads, never changes.
    for path in [
        "/api/v1/events",
        "/api/v1/policy/status",
        "/api/v1/devices",
        "/api/v1/isolation",
    ] {
        assert_eq!(
            call(api, "GET", path, &analyst).0,
            200,
            "analyst GET {path}"
        );
    }
    let (status, body) = call(api, "POST", "/api/v1/policy/reload", &analyst);
    assert_eq!(status, 403);
    assert_eq!(body["scope_needed"], "admin", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("scope admin"),
        "{body}"
    );
    let (status, body) = call(api, "POST", "/api/v1/devices/tokens", &analyst);
    assert_eq!(
        (status, body["scope_needed"].as_str()),
        (403, Some("enroll"))
    );

    // enroll: one-time enrollment tokens only.
    let (status, body) = call(api, "POST", "/api/v1/devices/tokens", &enroll);
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_str().unwrap().starts_with("rmpt_"));
    let (status, body) = call(api, "GET", "/api/v1/events", &enroll);
    assert_eq!(
        (status, body["scope_needed"].as_str()),
        (403, Some("analyst"))
    );
    let (status, body) = call(api, "POST", "/api/v1/devices/x/isolate", &enroll);
    assert_eq!(
        (status, body["scope_needed"].as_str()),
        (403, Some("admin"))
    );

    // admin (scoped, and the admin.token file with a lower-case scheme): everything.
    assert_eq!(call(api, "POST", "/api/v1/policy/reload", &admin).0, 200);
    assert_eq!(call(api, "GET", "/api/v1/events", &admin).0, 200);
    let (_, status, _) = curl_direct(&[
        "-H",
        &format!("Authorization: bearer {}", admin_file.trim()),
        &format!("http://{api}/api/v1/policy/status"),
    ]);
    assert_eq!(status, 200);

    // No token or a wrong one: 401.
    let (_, status, _) = curl_direct(&[&format!("http://{api}/api/v1/events")]);
    assert_eq!(status, 401);
    assert_eq!(call(api, "GET", "/api/v1/events", "rmps_wrong").0, 401);

    // Revoked by name: refused at the very next call, no restart.
    let revoked = succeeded(&rampart_cli(&[
        "token",
        "revoke",
        "soc",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(revoked.contains("soc"), "{revoked}");
    let (status, body) = call(api, "GET", "/api/v1/events", &analyst);
    assert_eq!(status, 401, "{body}");
    assert_eq!(call(api, "GET", "/api/v1/events", &admin).0, 200);

    // Every call is an audit event: who, what, outcome.
    gw.wait_for_audit("audit events missing", |audit| {
        let has = |user: &str, method: &str, path: &str, action: &str| {
            audit.iter().any(|e| {
                e["user"] == user
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("{method} {path}")))
                    && e["action"] == action
            })
        };
        has("soc", "POST", "/api/v1/policy/reload", "block")
            && has("ops", "POST", "/api/v1/policy/reload", "allow")
            && has("mdm", "POST", "/api/v1/devices/tokens", "allow")
            && has("soc", "GET", "/api/v1/events", "allow")
    });
}

#[test]
fn enrollment_over_https_pins_the_ca_and_refuses_a_wrong_pin_before_sending_the_token() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.2", "");
    let data = server.data();
    let data_arg = data.to_str().unwrap();
    let token = succeeded(&rampart_cli(&[
        "device",
        "token",
        "create",
        "--user",
        "alice",
        "--data-dir",
        data_arg,
    ]));
    let agent_dir = dir.path().join("agent");
    let enroll = |extra: &[&str]| {
        run(Command::new(rampart_bin())
            .args([
                "agent",
                "enroll",
                "--server",
                &server.url(""),
                "--token",
                &token,
            ])
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(extra))
    };

    let wrong = vec!["AB"; 32].join(":");
    let out = enroll(&["--ca-sha256", &wrong]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not match the pinned CA sha256")
            && stderr.contains("token was not sent"),
        "{stderr}"
    );
    assert!(!agent_dir.join("enrollment.json").exists());

    // Without a pin, the system roots do not know Rampart's CA.
    let out = enroll(&[]);
    assert!(!out.status.success());

    // The right fingerprint: the one-time token, never sent so far, still works.
    let fingerprint = ca_sha256(&data);
    let out = enroll(&["--ca-sha256", &fingerprint]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enrollment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent_dir.join("enrollment.json")).unwrap())
            .unwrap();
    assert_eq!(enrollment["user"], "alice");

    // The CA certificate as the pin works too (another token, another agent dir).
    let token2 = succeeded(&rampart_cli(&[
        "device",
        "token",
        "create",
        "--user",
        "bob",
        "--data-dir",
        data_arg,
    ]));
    let agent2 = dir.path().join("agent2");
    let out = run(Command::new(rampart_bin())
        .args([
            "agent",
            "enroll",
            "--server",
            &server.url(""),
            "--token",
            &token2,
        ])
        .arg("--data-dir")
        .arg(&agent2)
        .arg("--ca-cert")
        .arg(data.join("ca.pem")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agent2.join("enrollment.json").exists());
}
