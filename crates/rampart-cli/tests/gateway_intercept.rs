//! TLS interception through the real gateway: a Rust TLS origin (HTTP/1.1 and
//! HTTP/2, certificate from a throwaway CA only the gateway trusts), reached
//! with curl and Python requests through CONNECT. Checks the Rampart-issued
//! certificate, per-request logging, do-not-decrypt, origin certificate
//! failures, policy blocks and domain fronting inside HTTPS, no-SNI clients,
//! and the CA key permission check at start.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use rampart_testkit::https_origin::HttpsOrigin;
use rampart_testkit::pki::{CertKind, TestPki};
use rampart_testkit::Curl;
use support::Rampart;

/// What the origin's certificate is like.
#[derive(Clone, Copy, PartialEq)]
enum OriginCert {
    Valid,
    Expired,
    SelfSigned,
    WrongHost,
}

/// A TLS origin on loopback answering `hello <HTTP version> <path>`, with
/// ALPN h2 and http/1.1, and a certificate for `name` and 127.0.0.1.
struct TlsOrigin {
    port: u16,
    ca_pem: PathBuf,
    _origin: HttpsOrigin,
}

fn origin(dir: &Path, name: &str, kind: OriginCert) -> TlsOrigin {
    let (san_name, cert_kind) = match kind {
        OriginCert::Valid => (name, CertKind::Valid),
        OriginCert::Expired => (name, CertKind::Expired),
        OriginCert::SelfSigned => (name, CertKind::SelfSigned),
        OriginCert::WrongHost => ("elsewhere.test", CertKind::Valid),
    };
    let pki = TestPki::with_ca_name(
        dir,
        &format!("origin-{name}"),
        "Intercept Test Origin CA",
        &[san_name],
        cert_kind,
    );
    let origin = HttpsOrigin::start(&pki, |mut req| async move {
        if req.headers().contains_key(hyper::header::UPGRADE) {
            // Echo every byte after the 101, like a WebSocket echo server.
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut response = hyper::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("upgrade"),
            );
            response.headers_mut().insert(
                hyper::header::UPGRADE,
                hyper::header::HeaderValue::from_static("websocket"),
            );
            return response;
        }
        let body = format!("hello {:?} {}", req.version(), req.uri().path());
        hyper::Response::new(Full::new(Bytes::from(body)))
    });
    TlsOrigin {
        port: origin.port,
        ca_pem: pki.ca_pem,
        _origin: origin,
    }
}

/// A gateway that resolves the test names to loopback, treats `port` as a TLS
/// port, and trusts `roots` for origins.
fn gateway(port: u16, roots: &[&Path], extra: &str) -> Rampart {
    gateway_with_policy(None, port, roots, extra)
}

fn gateway_with_policy(policy: Option<&Path>, port: u16, roots: &[&Path], extra: &str) -> Rampart {
    let roots: Vec<String> = roots
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let top = policy
        .map(|p| format!("policy = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    // The agent tunnel listener gets an ephemeral port so parallel gateways do not collide.
    Rampart::start(&format!(
        "{top}[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {port}]\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [resolve]\n\"shop.test\" = \"127.0.0.1\"\n\"pinned.test\" = \"127.0.0.1\"\n\"bad.test\" = \"127.0.0.1\"\n\
         [tls]\nsystem_roots = false\nextra_roots = [{}]\n{extra}",
        roots.join(", ")
    ))
}

/// A `shop.test` origin, a gateway (with `extra` after its `[tls]` table) that
/// trusts it, and the gateway's CA for the client.
struct Intercepted {
    o: TlsOrigin,
    gw: Rampart,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

fn intercepted(extra: &str) -> Intercepted {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "shop.test", OriginCert::Valid);
    let gw = gateway(o.port, &[&o.ca_pem], extra);
    let ca = gw.gateway_ca();
    Intercepted {
        o,
        gw,
        ca,
        _dir: dir,
    }
}

/// A request for `url` naming `host` in its Host header, over `version`
/// (`--http1.1` or `--http2`): the body with `\n<status>` appended.
fn fronted(gw: &Rampart, ca: &Path, version: &str, host: &str, url: &str) -> String {
    let (code, body, err) = curl_via(
        gw,
        ca,
        &[
            version,
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code}",
            url,
        ],
    );
    assert_eq!(code, 0, "{err}");
    body
}

/// curl through `gw` trusting only `ca`: (exit code, body, stderr).
fn curl_via(gw: &Rampart, ca: &Path, args: &[&str]) -> (i32, String, String) {
    let reply = Curl::through(&gw.proxy_url())
        .cacert(ca)
        .args(args.iter().copied())
        .run(&[]);
    (reply.exit, reply.body, reply.stderr)
}

#[test]
fn curl_http1_sees_a_rampart_issued_certificate_and_every_request_is_logged() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    let url = format!("https://shop.test:{}/first", o.port);
    let url2 = format!("https://shop.test:{}/second", o.port);
    let (code, body, err) = curl_via(&gw, &ca, &["-v", "--http1.1", &url, &url2]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "hello HTTP/1.1 /firsthello HTTP/1.1 /second");
    assert!(err.contains("issuer: CN=Rampart Gateway CA"), "{err}");
    // Both requests went over one client connection (keep-alive inside the tunnel).
    assert!(err.contains("Re-using existing connection"), "{err}");

    let second = gw.find_record(|r| r["target"] == url2.as_str());
    assert_eq!(second["method"], "GET");
    assert_eq!(second["status"], 200);
    assert_eq!(second["tls"]["decision"], "decrypt");
    assert_eq!(second["tls"]["reason"], "default");
    assert_eq!(second["tls"]["sni"], "shop.test");
    assert_eq!(second["tls"]["alpn"], "http/1.1");
    assert_eq!(second["tls"]["version"], "TLSv1.3");
    gw.find_record(|r| r["target"] == url.as_str() && r["status"] == 200);
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert_eq!(tunnel["tls"]["decision"], "decrypt");
}

#[test]
fn curl_http2_is_proxied_as_http2_on_both_sides() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    let url = format!("https://shop.test:{}/h2", o.port);
    let (code, body, err) = curl_via(&gw, &ca, &["--http2", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "hello HTTP/2.0 /h2");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["tls"]["alpn"], "h2");
    assert_eq!(record["status"], 200);
}

#[test]
fn python_requests_fails_with_its_default_bundle_and_works_with_the_trust_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "shop.test", OriginCert::Valid);
    let gw = gateway(o.port, &[&o.ca_pem], "");
    let url = format!("https://shop.test:{}/py", o.port);
    let script = "import sys, requests\ntry:\n    r = requests.get(sys.argv[1], timeout=10)\n    print('OK', r.text)\nexcept requests.exceptions.SSLError as e:\n    print('SSLERROR', e)\n";
    let py = |bundle: Option<&Path>| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script, &url])
            .env("HTTPS_PROXY", gw.proxy_url())
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("SSL_CERT_FILE")
            .env_remove("CURL_CA_BUNDLE");
        if let Some(b) = bundle {
            cmd.env("REQUESTS_CA_BUNDLE", b);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let without = py(None);
    assert!(
        without.contains("SSLERROR") && without.contains("CERTIFICATE_VERIFY_FAILED"),
        "{without}"
    );

    let bundle = gw.dir.path().join("bundle.pem");
    let status = Command::new(support::rampart_bin())
        .args(["trust", "bundle", "--data-dir"])
        .arg(gw.data_dir())
        .arg("--out")
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(status.success());
    let with = py(Some(&bundle));
    assert!(with.contains("OK hello HTTP/1.1 /py"), "{with}");
}

#[test]
fn a_do_not_decrypt_host_shows_the_origins_own_certificate_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "pinned.test", OriginCert::Valid);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[lists]\nprivate = [\"pinned.test\"]\n[[decryption]]\nid = \"private\"\nname = \"private sites\"\nwhen = { lists = [\"private\"] }\naction = \"do-not-decrypt\"\n",
    )
    .unwrap();
    let gw = gateway_with_policy(Some(&policy), o.port, &[&o.ca_pem], "");
    let url = format!("https://pinned.test:{}/private", o.port);
    let (code, body, err) = curl_via(&gw, &o.ca_pem, &["-v", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("hello HTTP/"), "{body}");
    assert!(err.contains("issuer: CN=Intercept Test Origin CA"), "{err}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert_eq!(tunnel["tls"]["decision"], "do-not-decrypt");
    assert_eq!(tunnel["tls"]["reason"], "policy rule \"private sites\"");
    assert_eq!(tunnel["tls"]["sni"], "pinned.test");
}

#[test]
fn the_tls_config_do_not_decrypt_list_is_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "pinned.test", OriginCert::Valid);
    let gw = gateway(o.port, &[&o.ca_pem], "do_not_decrypt = [\"pinned.test\"]\n");
    let url = format!("https://pinned.test:{}/", o.port);
    let (code, _, err) = curl_via(&gw, &o.ca_pem, &["-v", &url]);
    assert_eq!(code, 0, "{err}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert_eq!(tunnel["tls"]["reason"], "tls.do_not_decrypt pinned.test");
}

#[test]
fn invalid_origin_certificates_are_blocked_with_an_explanation_and_never_pass() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, code_name) in [
        (OriginCert::Expired, "expired"),
        (OriginCert::SelfSigned, "self_signed"),
        (OriginCert::WrongHost, "wrong_host"),
    ] {
        let o = origin(dir.path(), "bad.test", kind);
        let gw = gateway(o.port, &[&o.ca_pem], "");
        let ca = gw.gateway_ca();
        let url = format!("https://bad.test:{}/", o.port);
        let (code, body, err) = curl_via(&gw, &ca, &["-w", "\n%{http_code}", &url]);
        assert_eq!(code, 0, "{code_name}: {err}");
        assert!(body.ends_with("\n502"), "{code_name}: {body}");
        assert!(
            !body.contains("hello"),
            "{code_name}: origin content leaked: {body}"
        );
        let (_, html, _) = curl_via(&gw, &ca, &["-H", "Accept: text/html", &url]);
        assert!(html.starts_with("<!DOCTYPE html>"), "{code_name}: {html}");
        let record = gw.find_record(|r| r["target"] == url.as_str());
        assert_eq!(record["status"], 502);
        assert_eq!(record["tls"]["origin_problem"], code_name, "{record}");
    }
}

#[test]
fn a_policy_block_of_a_path_inside_https_gets_the_html_block_page() {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "shop.test", OriginCert::Valid);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[lists]\nsecret = [\"shop.test/secret\"]\n[[access]]\nid = \"no-secret\"\nname = \"no secret pages\"\nwhen = { lists = [\"secret\"] }\naction = \"block\"\n",
    )
    .unwrap();
    let gw = gateway_with_policy(Some(&policy), o.port, &[&o.ca_pem], "");
    let ca = gw.gateway_ca();
    let open = format!("https://shop.test:{}/public", o.port);
    let secret = format!("https://shop.test:{}/secret/plans", o.port);
    let (code, body, err) = curl_via(&gw, &ca, &[&open]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "hello HTTP/2.0 /public");
    let (code, page, err) = curl_via(
        &gw,
        &ca,
        &["-H", "Accept: text/html", "-w", "\n%{http_code}", &secret],
    );
    assert_eq!(code, 0, "{err}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("no secret pages"), "{page}");
    assert!(page.ends_with("\n403"), "{page}");
    let record = gw.find_record(|r| r["target"] == secret.as_str());
    assert_eq!(record["status"], 403);
    assert_eq!(record["policy"]["rule_id"], "no-secret");
}

#[test]
fn a_host_header_that_does_not_match_the_sni_is_blocked_as_domain_fronting() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    let url = format!("https://shop.test:{}/front", o.port);
    for version in ["--http1.1", "--http2"] {
        let body = fronted(&gw, &ca, version, "hidden.test", &url);
        assert!(body.ends_with("\n403"), "{version}: {body}");
        assert!(body.contains("domain fronting"), "{version}: {body}");
    }
}

#[test]
fn a_client_without_sni_gets_a_certificate_with_the_origins_names() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    // curl sends no SNI for an IP address.
    let url = format!("https://127.0.0.1:{}/nosni", o.port);
    let (code, body, err) = curl_via(&gw, &ca, &[&url]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("/nosni"), "{body}");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["status"], 200);
    assert!(record["tls"]["sni"].is_null(), "{record}");
}

#[test]
fn a_client_that_does_not_trust_rampart_is_recorded_as_a_pinned_client() {
    let dir = tempfile::tempdir().unwrap();
    let o = origin(dir.path(), "shop.test", OriginCert::Valid);
    let gw = gateway(o.port, &[&o.ca_pem], "");
    let url = format!("https://shop.test:{}/", o.port);
    let (code, _, _) = curl_via(&gw, &o.ca_pem, &[&url]);
    assert_eq!(code, 60);
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT");
    assert!(
        tunnel["tls"]["pinned_client"]
            .as_str()
            .unwrap_or("")
            .contains("UnknownCA"),
        "{tunnel}"
    );
}

#[test]
fn a_ca_key_readable_by_others_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let status = Command::new(support::rampart_bin())
        .args(["ca", "init", "--data-dir"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(data.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Rampart::try_start(
        &format!(
            "[tunnel]\nlisten = \"127.0.0.1:0\"\n[tls]\nca_key = {:?}\nca_cert = {:?}\n",
            data.join("ca.key").display().to_string(),
            data.join("ca.pem").display().to_string()
        ),
        &[],
    )
    .err()
    .expect("the gateway must refuse a world-readable CA key");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn an_upgrade_is_passed_through_after_the_request_is_allowed() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    // CONNECT, TLS with the gateway CA, an Upgrade request, then bytes echoed back.
    let script = r#"
import socket, ssl, sys
proxy, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, pport = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(pport)), timeout=10)
s.sendall(f"CONNECT shop.test:{port} HTTP/1.1\r\nHost: shop.test:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname="shop.test")
t.sendall(f"GET /ws HTTP/1.1\r\nHost: shop.test:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
resp = b""
while b"\r\n\r\n" not in resp:
    resp += t.recv(1)
print(resp.split(b"\r\n")[0].decode())
t.sendall(b"echo-me-1234")
got = b""
while len(got) < 12:
    got += t.recv(64)
print(got.decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &gw.proxy.to_string(), &o.port.to_string()])
        .arg(&ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP/1.1 101") && stdout.contains("echo-me-1234"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = gw.find_record(|r| r["target"].as_str().is_some_and(|t| t.ends_with("/ws")));
    assert_eq!(record["status"], 101);
}

#[test]
fn decrypted_requests_and_an_invalid_origin_certificate_reach_the_event_store() {
    let dir = tempfile::tempdir().unwrap();
    let good = origin(dir.path(), "shop.test", OriginCert::Valid);
    let bad = origin(dir.path(), "bad.test", OriginCert::WrongHost);
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {}, {}]\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [resolve]\n\"shop.test\" = \"127.0.0.1\"\n\"bad.test\" = \"127.0.0.1\"\n\
         [tls]\nsystem_roots = false\nextra_roots = [{:?}, {:?}]\n",
        good.port,
        bad.port,
        good.ca_pem.display().to_string(),
        bad.ca_pem.display().to_string()
    ));
    let ca = gw.gateway_ca();
    let ok_url = format!("https://shop.test:{}/evented", good.port);
    let (code, _, err) = curl_via(&gw, &ca, &[&ok_url]);
    assert_eq!(code, 0, "{err}");
    let bad_url = format!("https://bad.test:{}/", bad.port);
    curl_via(&gw, &ca, &[&bad_url]);

    let search = |query: &str| gw.search_events(query, "json");
    assert!(
        support::eventually(Duration::from_secs(10), || {
            search("type = alert")
                .iter()
                .any(|e| e["host"] == "bad.test")
        }),
        "{:?}",
        search("")
    );
    let requests = search("host = shop.test");
    assert!(
        requests
            .iter()
            .any(|e| e.to_string().contains("/evented") && e["status"] == 200),
        "{requests:?}"
    );
}

#[test]
fn plain_text_on_a_tls_port_is_tunnelled_or_refused_by_config_and_logged() {
    let plain = support::origin::Origin::start();
    let port = plain.port();
    for refuse in [false, true] {
        let gw = Rampart::start(&format!(
            "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {port}]\nrefuse_non_tls = {refuse}\n\
             [tunnel]\nlisten = \"127.0.0.1:0\"\n"
        ));
        // The request goes in a second write, after the 200, like a real client.
        let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        s.write_all(b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        // The tunnel is logged when both sides have closed.
        drop(s);
        // Tunnelled: the plain origin answers; refused: the tunnel closes unanswered.
        if refuse {
            assert!(rest.is_empty(), "{rest}");
        } else {
            assert!(rest.starts_with("HTTP/1.1 "), "{rest}");
        }
        let tunnel =
            gw.find_record(|r| r["method"] == "CONNECT" && r["tls"]["decision"] == "not-tls");
        assert_eq!(tunnel["tls"]["decision"], "not-tls");
        if refuse {
            gw.find_record(|r| {
                r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("proxy.refuse_non_tls"))
            });
        }
    }
}

#[test]
fn fronting_exceptions_let_listed_cdn_hosts_through_and_still_block_others() {
    let Intercepted { o, gw, ca, _dir } = intercepted(
        "fronting_exceptions = [{ sni = \"shop.test\", hosts = [\"*.cdn-alias.test\"] }]\n",
    );
    let url = format!("https://shop.test:{}/front", o.port);
    for version in ["--http1.1", "--http2"] {
        let body = fronted(&gw, &ca, version, "img.cdn-alias.test", &url);
        assert!(body.ends_with("/front\n200"), "{version}: {body}");
        // Not covered by the exception: still domain fronting.
        let body = fronted(&gw, &ca, version, "hidden.test", &url);
        assert!(
            body.contains("domain fronting") && body.ends_with("\n403"),
            "{version}: {body}"
        );
    }
    // The allowed request is logged for the host it addressed.
    let allowed = format!("https://img.cdn-alias.test:{}/front", o.port);
    let record = gw.find_record(|r| r["target"] == allowed.as_str());
    assert_eq!(record["status"], 200);
    assert_eq!(record["tls"]["sni"], "shop.test");
}

#[test]
fn a_decrypted_tunnel_counts_its_bytes_each_way() {
    let Intercepted { o, gw, ca, _dir } = intercepted("");
    let url = format!("https://shop.test:{}/counted", o.port);
    let (code, _, err) = curl_via(
        &gw,
        &ca,
        &["--http1.1", "--data-binary", &"x".repeat(5000), &url],
    );
    assert_eq!(code, 0, "{err}");
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT" && r["tls"]["decision"] == "decrypt");
    let up = tunnel["bytes_from_client"].as_u64().unwrap_or(0);
    let down = tunnel["bytes_to_client"].as_u64().unwrap_or(0);
    // TLS records on the client side: the 5000-byte body plus the handshake one way,
    // the certificate and the response the other.
    assert!(up > 5000, "{tunnel}");
    assert!(down > 300, "{tunnel}");
    let request = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(request["bytes_from_client"], 5000, "{request}");
}

#[test]
fn an_idle_decrypted_connection_is_closed_after_the_tunnel_idle_timeout() {
    let Intercepted { o, gw, ca, _dir } = intercepted("[limits]\ntunnel_idle_timeout = \"2s\"\n");
    // CONNECT, TLS with ALPN h2 or http/1.1, one exchange, then silence: the
    // gateway must close the connection (recv returns b"") after about 2 s.
    let script = r#"
import socket, ssl, sys, time
proxy, port, ca, alpn = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
host, pport = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(pport)), timeout=30)
s.sendall(f"CONNECT shop.test:{port} HTTP/1.1\r\nHost: shop.test:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols([alpn])
t = ctx.wrap_socket(s, server_hostname="shop.test")
assert t.selected_alpn_protocol() == alpn, t.selected_alpn_protocol()
if alpn == "h2":
    t.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
else:
    t.sendall(f"GET /idle HTTP/1.1\r\nHost: shop.test:{port}\r\n\r\n".encode())
first = t.recv(65536)
assert first, "no answer"
start = time.monotonic()
while True:
    try:
        data = t.recv(65536)
    except (ssl.SSLError, ConnectionResetError):
        data = b""
    if not data:
        break
print("closed after %.1f" % (time.monotonic() - start))
"#;
    for alpn in ["h2", "http/1.1"] {
        let out = Command::new("python3")
            .args(["-c", script, &gw.proxy.to_string(), &o.port.to_string()])
            .arg(&ca)
            .arg(alpn)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let seconds: f64 = stdout
            .trim()
            .strip_prefix("closed after ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{alpn}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            (1.0..20.0).contains(&seconds),
            "{alpn}: closed after {seconds}s"
        );
    }
    let idle = gw.find_record(|r| r["method"] == "CONNECT" && r["tls"]["alpn"] == "h2");
    assert_eq!(idle["error"], "tunnel idle timeout", "{idle}");
}
