//! Real developer tools through the intercepting gateway, loopback only: pip
//! installs from an HTTPS simple index and git clones over smart HTTP, both
//! trusting Rampart through `rampart trust env`; a WebSocket echo with real
//! frames over wss:// through CONNECT; the pinned-client auto-bypass; and the
//! explicit allow-invalid-certificate exception. Every origin has a
//! certificate from a throwaway CA that only the gateway trusts.

#[path = "support/https_fixtures.rs"]
mod https_fixtures;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use https_fixtures::{CertKind, PyHttpsOrigin, Serve, TestPki};
use support::{curl, Rampart};

/// Names the gateway resolves to loopback.
const NAMES: &[&str] = &[
    "pypi.test",
    "git.test",
    "ws.test",
    "pinned.test",
    "inspect.test",
    "legacy.test",
    "lab.test",
    "bank.test",
];

/// A gateway that intercepts CONNECTs to `ports`, resolves the test names to
/// loopback and trusts only `roots` for origins (no system roots).
fn gateway(ports: &[u16], roots: &[&Path], tls_extra: &str) -> Rampart {
    gateway_config(None, ports, roots, tls_extra)
}

/// The variables `rampart trust env` prints for this gateway, parsed from its
/// `export NAME='value'` lines exactly as a shell would apply them.
fn trust_env(gw: &Rampart) -> BTreeMap<String, String> {
    let out = support::run(
        Command::new(support::rampart_bin())
            .args(["trust", "env", "--data-dir"])
            .arg(gw.data_dir()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let vars: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| {
            let (name, rest) = l.split_once('=')?;
            let value = rest.strip_prefix('\'')?.split('\'').next()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    for needed in [
        "PIP_CERT",
        "GIT_SSL_CAINFO",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
    ] {
        assert!(vars.contains_key(needed), "{needed} missing from:\n{text}");
    }
    vars
}

/// Variables that would make a tool trust something other than what the test gives it.
const TRUST_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "GIT_SSL_NO_VERIFY",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "http_proxy",
    "HTTP_PROXY",
];

/// A command that reaches HTTPS only through the gateway, with a clean trust environment.
fn via_gateway(program: &str, gw: &Rampart, env: Option<&BTreeMap<String, String>>) -> Command {
    let mut cmd = Command::new(program);
    for var in TRUST_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HTTPS_PROXY", gw.proxy_url())
        .env("https_proxy", gw.proxy_url());
    if let Some(env) = env {
        cmd.envs(env);
    }
    cmd
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn target_contains(r: &serde_json::Value, needle: &str) -> bool {
    r["target"].as_str().is_some_and(|t| t.contains(needle))
}

// --- pip ------------------------------------------------------------------------

/// Builds a pure-Python wheel by hand (a zip with METADATA, WHEEL and RECORD)
/// and a PEP 503 simple index for it under `root`; returns the wheel's name.
fn write_simple_index(root: &Path) -> String {
    let script = r#"
import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
name, version = "rampart_probe", "0.1"
wheel = f"{name}-{version}-py3-none-any.whl"
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": b'VALUE = "installed through rampart"\n',
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: rampart-probe\nVersion: {version}\n".encode(),
    f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: rampart-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items())
files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
os.makedirs(os.path.join(root, "files"))
os.makedirs(os.path.join(root, "simple", "rampart-probe"))
path = os.path.join(root, "files", wheel)
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for p, data in files.items():
        z.writestr(p, data)
sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
with open(os.path.join(root, "simple", "index.html"), "w") as f:
    f.write('<!DOCTYPE html><html><body><a href="rampart-probe/">rampart-probe</a></body></html>\n')
with open(os.path.join(root, "simple", "rampart-probe", "index.html"), "w") as f:
    f.write(f'<!DOCTYPE html><html><body><a href="../../files/{wheel}#sha256={sha}">{wheel}</a></body></html>\n')
print(wheel)
"#;
    let out = support::run(Command::new("python3").args(["-c", script]).arg(root));
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `pip install` that can only ever reach the test index: no config file, no
/// dependencies, no version check, no retries.
fn pip_install(
    gw: &Rampart,
    env: Option<&BTreeMap<String, String>>,
    index: &str,
    target: &Path,
) -> std::process::Output {
    support::run(
        via_gateway("python3", gw, env)
            .args(["-m", "pip", "install", "--index-url", index, "--target"])
            .arg(target)
            .args([
                "--no-deps",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--retries",
                "0",
                "--timeout",
                "60",
                "rampart-probe",
            ])
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_NO_INPUT", "1")
            .env_remove("PIP_INDEX_URL")
            .env_remove("PIP_EXTRA_INDEX_URL")
            .env_remove("PIP_FIND_LINKS"),
    )
}

#[test]
fn pip_installs_from_an_https_simple_index_through_interception_with_trust_env() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "pypi", &["pypi.test"], CertKind::Valid);
    let root = dir.path().join("index");
    std::fs::create_dir(&root).unwrap();
    let wheel = write_simple_index(&root);
    let origin = PyHttpsOrigin::start(Serve::Static, &root, &pki);
    let gw = gateway(&[origin.port], &[&pki.ca_pem], "");
    let index = format!("https://pypi.test:{}/simple/", origin.port);

    // pip's own bundle (certifi) does not know Rampart's CA: the seed's symptom.
    let untrusted = dir.path().join("untrusted");
    let out = pip_install(&gw, None, &index, &untrusted);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        output_text(&out)
    );

    let env = trust_env(&gw);
    let target = dir.path().join("site");
    let out = pip_install(&gw, Some(&env), &index, &target);
    assert!(
        out.status.success(),
        "{}\norigin:\n{}",
        output_text(&out),
        origin.log()
    );
    let installed = std::fs::read_to_string(target.join("rampart_probe/__init__.py")).unwrap();
    assert!(
        installed.contains("installed through rampart"),
        "{installed}"
    );
    assert!(target.join("rampart_probe-0.1.dist-info/METADATA").exists());
    let import = support::run(
        Command::new("python3")
            .args(["-c", "import rampart_probe; print(rampart_probe.VALUE)"])
            .env("PYTHONPATH", &target),
    );
    assert_eq!(
        String::from_utf8_lossy(&import.stdout).trim(),
        "installed through rampart"
    );

    // The gateway saw the decrypted index page and the wheel download.
    let page =
        gw.find_record(|r| target_contains(r, "/simple/rampart-probe/") && r["status"] == 200);
    assert_eq!(page["method"], "GET");
    assert_eq!(page["tls"]["decision"], "decrypt");
    assert_eq!(page["tls"]["sni"], "pypi.test");
    let file = gw.find_record(|r| target_contains(r, &format!("/files/{wheel}")));
    assert_eq!(file["status"], 200);
    assert_eq!(file["tls"]["decision"], "decrypt");
}

// --- git ------------------------------------------------------------------------

fn git(args: &[&str], cwd: &Path) -> String {
    let out = support::run(
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Rampart Test")
            .env("GIT_AUTHOR_EMAIL", "test@rampart.test")
            .env("GIT_COMMITTER_NAME", "Rampart Test")
            .env("GIT_COMMITTER_EMAIL", "test@rampart.test"),
    );
    assert!(out.status.success(), "git {args:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `ROOT/repo.git` with one commit; returns the commit id.
fn bare_repo(root: &Path) -> String {
    let work = root.with_extension("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "cloned through rampart\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    let commit = git(&["rev-parse", "HEAD"], &work);
    std::fs::create_dir_all(root).unwrap();
    git(
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
        root,
    );
    commit
}

fn git_clone(
    gw: &Rampart,
    env: Option<&BTreeMap<String, String>>,
    url: &str,
    dest: &Path,
) -> std::process::Output {
    support::run(
        via_gateway("git", gw, env)
            .args(["clone", "-q", url])
            .arg(dest)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0"),
    )
}

#[test]
fn git_clones_over_smart_https_through_interception_with_trust_env() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "git", &["git.test"], CertKind::Valid);
    let root = dir.path().join("repos");
    let commit = bare_repo(&root);
    let origin = PyHttpsOrigin::start(Serve::Git, &root, &pki);
    let gw = gateway(&[origin.port], &[&pki.ca_pem], "");
    let url = format!("https://git.test:{}/repo.git", origin.port);

    // Without the bundle, git's CA file does not know Rampart's CA. Debian's git
    // uses libcurl with GnuTLS, other builds OpenSSL: their messages differ.
    let out = git_clone(&gw, None, &url, &dir.path().join("untrusted"));
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("server certificate verification failed")
            || text.contains("SSL certificate problem"),
        "{text}"
    );

    let env = trust_env(&gw);
    let dest = dir.path().join("clone");
    let out = git_clone(&gw, Some(&env), &url, &dest);
    assert!(
        out.status.success(),
        "{}\norigin:\n{}",
        output_text(&out),
        origin.log()
    );
    assert_eq!(git(&["rev-parse", "HEAD"], &dest), commit);
    assert_eq!(
        std::fs::read_to_string(dest.join("README")).unwrap(),
        "cloned through rampart\n"
    );

    // Smart HTTP: the ref advertisement and the pack request, both decrypted.
    let refs = gw.find_record(|r| target_contains(r, "/repo.git/info/refs") && r["status"] == 200);
    assert!(target_contains(&refs, "service=git-upload-pack"), "{refs}");
    assert_eq!(refs["tls"]["decision"], "decrypt");
    assert_eq!(refs["tls"]["sni"], "git.test");
    let pack = gw.find_record(|r| target_contains(r, "/repo.git/git-upload-pack"));
    assert_eq!(pack["method"], "POST");
    assert_eq!(pack["status"], 200);
}

// --- WebSocket --------------------------------------------------------------------

/// A hand-written RFC 6455 client: CONNECT through the proxy, TLS trusting
/// what `SSL_CERT_FILE` names, the upgrade handshake (Sec-WebSocket-Accept
/// checked), then masked text and binary frames of all three length
/// encodings, a ping and a close; prints a JSON summary.
const WS_CLIENT_PY: &str = r#"
import base64, hashlib, json, os, socket, ssl, struct, sys

proxy, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
phost, pport = proxy.rsplit(":", 1)
s = socket.create_connection((phost, int(pport)), timeout=30)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(1)
    if not chunk:
        raise SystemExit("proxy closed during CONNECT")
    head += chunk
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context()  # honours SSL_CERT_FILE
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname=host)
issuer = dict(x[0] for x in t.getpeercert()["issuer"]).get("commonName")
key = base64.b64encode(os.urandom(16)).decode()
t.sendall((f"GET /chat HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
f = t.makefile("rb")
status = f.readline().decode().strip()
headers = {}
while True:
    line = f.readline().decode().strip()
    if not line:
        break
    k, _, v = line.partition(":")
    headers[k.strip().lower()] = v.strip()
expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()

def send(op, data):
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        head = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | op, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | op, 0x80 | 127]) + struct.pack("!Q", n)
    t.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data)))

def read_exact(n):
    data = f.read(n)
    assert len(data) == n, "closed inside a frame"
    return data

def recv():
    b0, b1 = read_exact(2)
    assert not b1 & 0x80, "server frames must not be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(8))[0]
    return b0 & 0x0F, read_exact(n)

text = "hello through rampart \u00e9\u00e8".encode()
medium = bytes(range(256)) * 2            # 16-bit length
large = bytes(range(256)) * 300           # 64-bit length
results = {"status": status, "accept_ok": headers.get("sec-websocket-accept") == expected,
           "issuer": issuer}
send(1, text)
op, data = recv()
results["text"] = op == 1 and data == text
send(2, medium)
op, data = recv()
results["medium"] = op == 2 and data == medium
send(2, large)
op, data = recv()
results["large"] = op == 2 and data == large
send(9, b"ping!")
op, data = recv()
results["pong"] = op == 10 and data == b"ping!"
send(8, struct.pack("!H", 1000))
op, data = recv()
results["close"] = op == 8 and data == struct.pack("!H", 1000)
print(json.dumps(results))
"#;

#[test]
fn a_websocket_echo_works_through_interception_with_real_frames() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "ws", &["ws.test"], CertKind::Valid);
    let root = dir.path().join("ws");
    std::fs::create_dir(&root).unwrap();
    let origin = PyHttpsOrigin::start(Serve::WebSocketEcho, &root, &pki);
    let gw = gateway(&[origin.port], &[&pki.ca_pem], "");
    let env = trust_env(&gw);
    let out = support::run(
        via_gateway("python3", &gw, Some(&env))
            .args(["-c", WS_CLIENT_PY, &gw.proxy.to_string(), "ws.test"])
            .arg(origin.port.to_string()),
    );
    let text = output_text(&out);
    assert!(out.status.success(), "{text}\norigin:\n{}", origin.log());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let result: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        result["status"], "HTTP/1.1 101 Switching Protocols",
        "{result}"
    );
    // Decrypted: the client saw a Rampart-issued certificate.
    assert_eq!(result["issuer"], "Rampart Gateway CA", "{result}");
    for check in ["accept_ok", "text", "medium", "large", "pong", "close"] {
        assert_eq!(result[check], true, "{check}: {result}");
    }

    let upgrade = gw.find_record(|r| target_contains(r, "ws.test") && target_contains(r, "/chat"));
    assert_eq!(upgrade["status"], 101, "{upgrade}");
    assert_eq!(upgrade["method"], "GET");
    assert_eq!(upgrade["tls"]["decision"], "decrypt");
    assert_eq!(upgrade["tls"]["alpn"], "http/1.1");
}

// --- pinned clients -----------------------------------------------------------------

/// curl trusting only `ca`; returns (exit code, body, verbose stderr).
fn curl_trusting(gw: &Rampart, ca: &Path, url: &str) -> (i32, String, String) {
    curl(
        &gw.proxy_url(),
        &["-v", "--cacert", ca.to_str().unwrap(), url],
    )
}

/// CONNECT records for `host` that carry a pinned-client rejection.
fn rejections(gw: &Rampart, host: &str) -> Vec<serde_json::Value> {
    gw.access_log()
        .into_iter()
        .filter(|r| {
            r["method"] == "CONNECT"
                && r["tls"]["sni"] == host
                && r["tls"]["pinned_client"].is_string()
        })
        .collect()
}

#[test]
fn repeated_pinned_client_failures_bypass_a_host_but_never_a_must_inspect_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(
        dir.path(),
        "pinned",
        &["pinned.test", "inspect.test"],
        CertKind::Valid,
    );
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "origin content\n").unwrap();
    let origin = PyHttpsOrigin::start(Serve::Static, &root, &pki);
    let gw = gateway(
        &[origin.port],
        &[&pki.ca_pem],
        "[tls.pinned_clients]\nauto_bypass = true\nfailures = 2\nwindow = \"10m\"\nttl = \"1h\"\nnever_bypass = [\"inspect.test\"]\n",
    );
    let pinned_url = format!("https://pinned.test:{}/hello.txt", origin.port);
    let inspect_url = format!("https://inspect.test:{}/hello.txt", origin.port);

    // A client that trusts only the origin's CA rejects Rampart's leaf: twice.
    for n in 1..=2 {
        let (code, _, err) = curl_trusting(&gw, &pki.ca_pem, &pinned_url);
        assert_eq!(code, 60, "attempt {n}: {err}");
        // Each rejection is counted before the next connection is decided.
        assert!(
            support::eventually(Duration::from_secs(15), || rejections(&gw, "pinned.test")
                .len()
                >= n),
            "{:#?}",
            gw.access_log()
        );
    }
    let records = rejections(&gw, "pinned.test");
    assert!(
        records.iter().all(|r| r["tls"]["decision"] == "decrypt"),
        "{records:#?}"
    );
    let started = records
        .iter()
        .find(|r| {
            r["tls"]["pinned_client"]
                .as_str()
                .is_some_and(|p| p.contains("pinned-client auto-bypass started for 3600s"))
        })
        .unwrap_or_else(|| panic!("no bypass audit in {records:#?}"));
    assert!(
        started["tls"]["pinned_client"]
            .as_str()
            .unwrap()
            .starts_with("alert "),
        "{started}"
    );

    // Now the host is spliced: the same client sees the origin's own certificate.
    let (code, body, err) = curl_trusting(&gw, &pki.ca_pem, &pinned_url);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "origin content\n");
    assert!(
        err.contains("issuer: CN=Tools Test Origin CA pinned"),
        "{err}"
    );
    let spliced = gw.find_record(|r| {
        r["method"] == "CONNECT"
            && r["tls"]["sni"] == "pinned.test"
            && r["tls"]["decision"] == "do-not-decrypt"
    });
    assert_eq!(spliced["tls"]["reason"], "pinned-client auto-bypass");

    // The audit reaches the event store as the pinned-client finding.
    assert!(
        support::eventually(Duration::from_secs(15), || {
            gw.search_events("type = alert", "ocsf")
                .iter()
                .any(|e| e.to_string().contains("auto-bypass started"))
        }),
        "{:#?}",
        gw.search_events("type = alert", "ocsf")
    );

    // A must-inspect host is counted but always decrypted.
    for n in 1..=3 {
        let (code, _, err) = curl_trusting(&gw, &pki.ca_pem, &inspect_url);
        assert_eq!(code, 60, "inspect attempt {n}: {err}");
        assert!(
            support::eventually(Duration::from_secs(15), || rejections(&gw, "inspect.test")
                .len()
                >= n),
            "{:#?}",
            gw.access_log()
        );
    }
    let records = rejections(&gw, "inspect.test");
    assert!(
        records.iter().all(|r| r["tls"]["decision"] == "decrypt"),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r["tls"]["pinned_client"]
            .as_str()
            .is_some_and(|p| p.contains("auto-bypass refused"))),
        "{records:#?}"
    );
    // A client that trusts Rampart still gets the host decrypted.
    let bundle = trust_env(&gw)["SSL_CERT_FILE"].clone();
    let (code, body, err) = curl_trusting(&gw, Path::new(&bundle), &inspect_url);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "origin content\n");
    assert!(err.contains("issuer: CN=Rampart Gateway CA"), "{err}");
}

/// `never_bypass_categories` protects every host of a policy category: its pinning
/// clients are counted and refused a bypass, so the host stays inspected.
#[test]
fn a_host_in_a_must_inspect_category_is_never_auto_bypassed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "bank", &["bank.test"], CertKind::Valid);
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "bank content\n").unwrap();
    let origin = PyHttpsOrigin::start(Serve::Static, &root, &pki);
    // A UT1-layout category directory with the host in "finance".
    let categories = dir.path().join("categories");
    std::fs::create_dir_all(categories.join("finance")).unwrap();
    std::fs::write(categories.join("finance/domains"), "bank.test\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[categories]\nload = [{:?}]\n",
            categories.display().to_string()
        ),
    )
    .unwrap();
    let gw = gateway_with_policy(
        &policy,
        &[origin.port],
        &[&pki.ca_pem],
        "[tls.pinned_clients]\nauto_bypass = true\nfailures = 2\nnever_bypass_categories = [\"finance\"]\n",
    );
    let url = format!("https://bank.test:{}/hello.txt", origin.port);
    for n in 1..=3 {
        let (code, _, err) = curl_trusting(&gw, &pki.ca_pem, &url);
        assert_eq!(code, 60, "attempt {n}: {err}");
        assert!(
            support::eventually(Duration::from_secs(15), || rejections(&gw, "bank.test")
                .len()
                >= n),
            "{:#?}",
            gw.access_log()
        );
    }
    let records = rejections(&gw, "bank.test");
    assert!(
        records.iter().all(|r| r["tls"]["decision"] == "decrypt"),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r["tls"]["pinned_client"].as_str().is_some_and(|p| p
            .contains("auto-bypass refused: must inspect (tls.pinned_clients.never_bypass_categories finance)"))),
        "{records:#?}"
    );
}

fn gateway_with_policy(policy: &Path, ports: &[u16], roots: &[&Path], tls_extra: &str) -> Rampart {
    gateway_config(Some(policy), ports, roots, tls_extra)
}

/// The gateway of [`gateway`], with `policy` as its policy file when given.
fn gateway_config(
    policy: Option<&Path>,
    ports: &[u16],
    roots: &[&Path],
    tls_extra: &str,
) -> Rampart {
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let roots: Vec<String> = roots
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let resolve: String = NAMES
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1\"\n"))
        .collect();
    // Top-level keys come before the first table.
    let policy = policy
        .map(|p| format!("policy = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    Rampart::start(&format!(
        "{policy}[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {}]\n\
         [resolve]\n{resolve}\
         [tls]\nsystem_roots = false\nextra_roots = [{}]\n{tls_extra}",
        ports.join(", "),
        roots.join(", ")
    ))
}

// --- invalid origin certificates ---------------------------------------------------------

#[test]
fn an_invalid_origin_certificate_passes_only_for_a_listed_host_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let expired = TestPki::new(dir.path(), "legacy", &["legacy.test"], CertKind::Expired);
    let self_signed = TestPki::new(dir.path(), "lab", &["lab.test"], CertKind::SelfSigned);
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("status.txt"), "legacy device status\n").unwrap();
    let legacy = PyHttpsOrigin::start(Serve::Static, &root, &expired);
    let lab = PyHttpsOrigin::start(Serve::Static, &root, &self_signed);
    let legacy_url = format!("https://legacy.test:{}/status.txt", legacy.port);
    let lab_url = format!("https://lab.test:{}/status.txt", lab.port);
    let ports = [legacy.port, lab.port];
    let roots: [&Path; 2] = [&expired.ca_pem, &self_signed.ca_pem];

    // By default both are blocked with 502 and never reach the client.
    let strict = gateway(&ports, &roots, "");
    let ca = PathBuf::from(trust_env(&strict)["SSL_CERT_FILE"].clone());
    for (url, problem) in [(&legacy_url, "expired"), (&lab_url, "self_signed")] {
        let (code, body, err) = curl(
            &strict.proxy_url(),
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "-w",
                "\n%{http_code}",
                url,
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(body.ends_with("\n502"), "{url}: {body}");
        assert!(!body.contains("legacy device status"), "{url}: {body}");
        let record = strict.find_record(|r| r["target"] == url.as_str());
        assert_eq!(record["tls"]["origin_problem"], problem, "{record}");
    }

    // Listed: the expired host passes and says so; the unlisted one is still blocked.
    let lenient = gateway(
        &ports,
        &roots,
        "allow_invalid_certificate_hosts = [\"legacy.test\"]\n",
    );
    let ca = PathBuf::from(trust_env(&lenient)["SSL_CERT_FILE"].clone());
    let (code, body, err) = curl(
        &lenient.proxy_url(),
        &["--cacert", ca.to_str().unwrap(), &legacy_url],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, "legacy device status\n");
    let record = lenient.find_record(|r| r["target"] == legacy_url.as_str());
    assert_eq!(record["status"], 200);
    assert_eq!(
        record["tls"]["origin_problem"], "expired (allowed by legacy.test)",
        "{record}"
    );
    let code = support::curl_status(
        &lenient.proxy_url(),
        &lab_url,
        &["--cacert", ca.to_str().unwrap()],
    );
    assert_eq!(code, 502);
    assert!(
        support::eventually(Duration::from_secs(15), || {
            lenient
                .search_events("type = alert", "ocsf")
                .iter()
                .any(|e| {
                    let e = e.to_string();
                    e.contains("allowed by exception") && e.contains("legacy.test")
                })
        }),
        "{:#?}",
        lenient.search_events("type = alert", "ocsf")
    );
}
