//! End-to-end tests of `rampart ca ...` and `rampart trust ...`: the real binary, with
//! openssl, curl, git, pip and Python requests checking its output (loopback only).
use rampart_testkit::tls_origin::corporate_intermediate;
use rampart_tls::ca::{der_to_pem, CaPaths, CertificateAuthority};
use rampart_tls::leaf::LeafNames;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RAMPART: &str = env!("CARGO_BIN_EXE_rampart");

fn rampart(args: &[&str]) -> Output {
    Command::new(RAMPART).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn init(dir: &Path, extra: &[&str]) -> PathBuf {
    let data = dir.join("data");
    let mut args = vec!["ca", "init", "--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&rampart(&args));
    data
}

/// The hex of an OpenSSL `... Fingerprint=AB:CD:...` line.
fn fingerprint_hex(line: &str) -> String {
    line.trim().rsplit('=').next().unwrap().to_ascii_uppercase()
}

#[test]
fn ca_init_creates_a_p256_ca_that_openssl_reads_with_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let cert = data.join("ca.pem");
    let info = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(info.contains("CA:TRUE"), "{info}");
    assert!(info.contains("prime256v1"), "{info}");
    assert!(info.contains("Certificate Sign"), "{info}");
    let mode = std::fs::metadata(data.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    openssl(&[
        "pkey",
        "-in",
        data.join("ca.key").to_str().unwrap(),
        "-noout",
    ]);
}

#[test]
fn ca_init_rsa_with_subject_is_rsa_2048_with_that_subject() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(
        dir.path(),
        &[
            "--rsa",
            "--subject",
            "CN=Example Corp Gateway CA, O=Example Corp",
        ],
    );
    let cert = data.join("ca.pem");
    let info = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(info.contains("Public-Key: (2048 bit)"), "{info}");
    let subject = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-subject"]);
    assert!(
        subject.contains("CN = Example Corp Gateway CA"),
        "{subject}"
    );
    assert!(subject.contains("O = Example Corp"), "{subject}");
}

#[test]
fn ca_init_twice_refuses_without_force_and_replaces_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let before = std::fs::read(data.join("ca.pem")).unwrap();
    let again = rampart(&["ca", "init", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), before);
    ok(&rampart(&[
        "ca",
        "init",
        "--force",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert_ne!(std::fs::read(data.join("ca.pem")).unwrap(), before);
}

#[test]
fn ca_show_prints_subject_validity_and_the_fingerprint_openssl_computes() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let shown = ok(&rampart(&[
        "ca",
        "show",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(
        shown.contains("subject:      CN=Rampart Gateway CA"),
        "{shown}"
    );
    assert!(shown.contains("not after:"), "{shown}");
    let ours = shown.lines().find(|l| l.starts_with("sha256:")).unwrap();
    let theirs = openssl(&[
        "x509",
        "-in",
        data.join("ca.pem").to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    assert_eq!(
        ours.trim_start_matches("sha256:").trim(),
        fingerprint_hex(&theirs)
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&rampart(&[
        "ca",
        "show",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(json["key_algorithm"], "ECDSA P-256");
    assert_eq!(json["self_signed"], true);
}

#[test]
fn ca_key_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let key = data.join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = rampart(&["ca", "show", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("accessible by group or others (mode 0644)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&rampart(&[
        "ca",
        "show",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
}

#[test]
fn ca_export_writes_pem_and_der_that_openssl_agrees_are_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let pem = dir.path().join("export.pem");
    let der = dir.path().join("export.der");
    ok(&rampart(&[
        "ca",
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        pem.to_str().unwrap(),
    ]));
    ok(&rampart(&[
        "ca",
        "export",
        "--der",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        der.to_str().unwrap(),
    ]));
    let from_pem = openssl(&[
        "x509",
        "-in",
        pem.to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    let from_der = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    assert_eq!(fingerprint_hex(&from_pem), fingerprint_hex(&from_der));
    let stdout = ok(&rampart(&[
        "ca",
        "export",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert_eq!(stdout, std::fs::read_to_string(&pem).unwrap());
}

#[test]
fn ca_import_of_an_openssl_intermediate_serves_a_chain_that_verifies_to_the_corporate_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corporate_intermediate(
        d,
        &["rsa:2048"],
        "/CN=Corp Root/O=Corp",
        "/CN=Corp Gateway Intermediate/O=Corp",
        "keyCertSign,cRLSign",
    );
    // The organisation hands over intermediate + root in one file, root first.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(d.join("root.pem")).unwrap(),
        std::fs::read_to_string(d.join("inter.pem")).unwrap()
    );
    std::fs::write(d.join("corp-chain.pem"), bundle).unwrap();
    let data = d.join("data");
    let out = ok(&rampart(&[
        "ca",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--import-cert",
        d.join("corp-chain.pem").to_str().unwrap(),
        "--import-key",
        d.join("inter.key").to_str().unwrap(),
    ]));
    assert!(out.contains("imported CA"), "{out}");
    let shown = ok(&rampart(&[
        "ca",
        "show",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(shown.contains("kind:         intermediate"), "{shown}");
    assert!(shown.contains("chain:        2 certificate(s)"), "{shown}");
    // A leaf minted from the stored CA, with the chain the gateway serves after it.
    let ca = CertificateAuthority::load(&CaPaths::in_dir(&data)).unwrap();
    let leaf = ca
        .mint(&LeafNames::for_host("intranet.corp.example").unwrap())
        .unwrap();
    std::fs::write(d.join("leaf.pem"), der_to_pem(&leaf.chain[0])).unwrap();
    let served: String = leaf.chain[1..].iter().map(|c| der_to_pem(c)).collect();
    std::fs::write(d.join("served.pem"), served).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        d.join("root.pem").to_str().unwrap(),
        "-untrusted",
        d.join("served.pem").to_str().unwrap(),
        "-verify_hostname",
        "intranet.corp.example",
        d.join("leaf.pem").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
}

#[test]
fn commands_without_a_ca_explain_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("empty");
    for args in [
        vec!["ca", "show", "--data-dir", data.to_str().unwrap()],
        vec![
            "trust",
            "bundle",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "/dev/null",
        ],
        vec!["trust", "env", "--data-dir", data.to_str().unwrap()],
    ] {
        let out = rampart(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("rampart ca init --data-dir"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `openssl s_server -www` presenting a leaf minted by the CA in `data` for `host`.
struct Origin {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin(data: &Path, host: &str, dir: &Path) -> Origin {
    let ca = CertificateAuthority::load(&CaPaths::in_dir(data)).unwrap();
    let leaf = ca.mint(&LeafNames::for_host(host).unwrap()).unwrap();
    std::fs::write(dir.join("origin.pem"), der_to_pem(&leaf.chain[0])).unwrap();
    std::fs::write(
        dir.join("origin-chain.pem"),
        leaf.chain[1..]
            .iter()
            .map(|c| der_to_pem(c))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(dir.join("origin.key"), leaf.key_pem()).unwrap();
    let port = rampart_testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &addr.to_string(),
            "-www",
            "-quiet",
            "-cert",
            "origin.pem",
            "-cert_chain",
            "origin-chain.pem",
            "-key",
            "origin.key",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Origin { child, addr }
}

/// Python requests GET through a clean environment plus `env`; returns (exit ok, output).
fn python_requests(url: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, requests; r = requests.get(sys.argv[1], timeout=10); print(r.status_code)",
        url,
    ]);
    for var in [
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "HTTPS_PROXY",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn trust_bundle_makes_python_requests_trust_rampart_where_the_default_bundle_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let bundle = dir.path().join("combined.pem");
    let out = rampart(&[
        "trust",
        "bundle",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("system roots + Rampart CA"),
        "{}",
        text(&out.stderr)
    );
    // The bundle holds the system roots and the CA, each once.
    let pem = std::fs::read_to_string(&bundle).unwrap();
    let count = pem.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(
        count > 1,
        "expected system roots in the bundle, found {count} certificates"
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        data.join("ca.pem").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let origin = origin(&data, "localhost", dir.path());
    let url = format!("https://localhost:{}/", origin.addr.port());
    // The seed's symptom: Python's own bundle does not know the gateway CA.
    let (passed, output) = python_requests(&url, &[]);
    assert!(
        !passed && output.contains("CERTIFICATE_VERIFY_FAILED"),
        "{output}"
    );
    let (passed, output) = python_requests(&url, &[("REQUESTS_CA_BUNDLE", &bundle)]);
    assert!(passed && output.trim() == "200", "{output}");
}

#[test]
fn trust_env_eval_makes_curl_python_git_and_pip_trust_rampart() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let origin = origin(&data, "localhost", dir.path());
    let url = format!("https://localhost:{}/", origin.addr.port());
    let script = r#"
        set -u
        unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_FILE PIP_CERT GIT_SSL_CAINFO HTTPS_PROXY https_proxy
        if [ "$MODE" = trusted ]; then eval "$("$RAMPART" trust env --data-dir "$DATA")"; fi
        echo "curl: $(curl -sS -o /dev/null -w '%{http_code}' "$URL" 2>&1)"
        echo "python: $(python3 -c 'import sys,requests; print(requests.get(sys.argv[1], timeout=10).status_code)' "$URL" 2>&1 | tail -1)"
        echo "git: $(GIT_TERMINAL_PROMPT=0 git ls-remote "${URL}repo.git" 2>&1 | tail -1)"
        echo "pip: $(python3 -m pip download --retries 0 --timeout 5 --no-deps --no-cache-dir -d "$TMPDIR" --index-url "${URL}simple/" nothing-here 2>&1 | grep -E 'SSL|CERTIFICATE|No matching distribution' | tail -1)"
    "#;
    let run = |mode: &str| {
        let out = Command::new("sh")
            .args(["-c", script])
            .env("MODE", mode)
            .env("RAMPART", RAMPART)
            .env("DATA", &data)
            .env("URL", &url)
            .env("TMPDIR", dir.path())
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let untrusted = run("untrusted");
    assert!(!untrusted.contains("curl: 200"), "{untrusted}");
    assert!(
        untrusted.contains("CERTIFICATE_VERIFY_FAILED"),
        "{untrusted}"
    );
    assert!(
        untrusted.contains("git: fatal: unable to access")
            && untrusted.contains("SSL certificate problem"),
        "{untrusted}"
    );
    let trusted = run("trusted");
    assert!(trusted.contains("curl: 200"), "{trusted}");
    assert!(trusted.contains("python: 200"), "{trusted}");
    // git and pip get past TLS and then meet s_server's status page, which is neither a
    // repository nor a package index: the TLS layer is what this proves.
    let git = trusted.lines().find(|l| l.starts_with("git:")).unwrap();
    assert!(!git.contains("SSL certificate problem"), "{trusted}");
    let pip = trusted.lines().find(|l| l.starts_with("pip:")).unwrap();
    assert!(
        pip.contains("No matching distribution") && !pip.contains("SSL"),
        "{trusted}"
    );
}

#[test]
fn trust_env_prints_each_variable_in_fish_and_powershell_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let bundle = std::fs::canonicalize(&data)
        .unwrap()
        .join("trust-bundle.pem");
    let fish = ok(&rampart(&[
        "trust",
        "env",
        "--shell",
        "fish",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(
        fish.contains(&format!("set -gx GIT_SSL_CAINFO '{}'", bundle.display())),
        "{fish}"
    );
    assert!(bundle.exists(), "trust env writes the bundle it points at");
    let ps = ok(&rampart(&[
        "trust",
        "env",
        "--shell",
        "powershell",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
        "DENO_CERT",
    ] {
        assert!(ps.contains(&format!("$env:{var} = '")), "{var}: {ps}");
    }
    assert!(!ps.contains("GIT_SSL_CAPATH"));
    let bad = rampart(&[
        "trust",
        "env",
        "--shell",
        "tcsh",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("use sh, fish or powershell"),
        "{}",
        text(&bad.stderr)
    );
}

/// Runs `script` in a private mount namespace where the system CA store is a throwaway copy,
/// so installing into it cannot affect the machine.
fn in_private_ca_store(script: &str, data: &Path, scratch: &Path) -> String {
    let wrapper = format!(
        r#"set -e
        T="$STORE_COPY"
        cp -a /etc/ssl/certs "$T/certs"
        mount --bind "$T/certs" /etc/ssl/certs
        mkdir -p /usr/local/share/ca-certificates
        mount -t tmpfs tmpfs /usr/local/share/ca-certificates
        {script}"#
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &wrapper])
        .env("RAMPART", RAMPART)
        .env("DATA", data)
        .env("STORE_COPY", scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn trust_install_adds_the_ca_to_the_debian_store_and_remove_takes_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let out = in_private_ca_store(
        r#"
        "$RAMPART" trust install --data-dir "$DATA"
        echo "installed-verify: $(openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt "$DATA/ca.pem" 2>&1 | tail -1)"
        "$RAMPART" trust install --remove
        echo "removed-verify: $(openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt "$DATA/ca.pem" 2>&1 | tail -1)"
        echo "left: $(ls /usr/local/share/ca-certificates | wc -l)"
        "#,
        &data,
        dir.path(),
    );
    assert!(
        out.contains("installed /usr/local/share/ca-certificates/rampart-gateway-ca.crt"),
        "{out}"
    );
    assert!(
        out.contains("installed-verify:") && out.contains(": OK"),
        "{out}"
    );
    let removed = out
        .lines()
        .find(|l| l.starts_with("removed-verify:"))
        .unwrap();
    assert!(!removed.contains(": OK"), "{out}");
    assert!(out.contains("left: 0"), "{out}");
}

#[test]
fn trust_verify_reports_each_tool_failing_then_passing_after_trust_env() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), &[]);
    let origin = origin(&data, "localhost", dir.path());
    let url = format!("https://localhost:{}/", origin.addr.port());
    let script = r#"
        unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_FILE PIP_CERT GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS HTTPS_PROXY https_proxy
        if [ "$MODE" = trusted ]; then eval "$("$RAMPART" trust env --data-dir "$DATA")"; fi
        "$RAMPART" trust verify --url "$URL" --timeout 10
        echo "exit=$?"
    "#;
    let run = |mode: &str| {
        let out = Command::new("sh")
            .args(["-c", script])
            .env("MODE", mode)
            .env("RAMPART", RAMPART)
            .env("DATA", &data)
            .env("URL", &url)
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let before = run("untrusted");
    assert!(before.contains("curl             FAIL"), "{before}");
    assert!(before.contains("python requests  FAIL"), "{before}");
    assert!(before.contains("git              FAIL"), "{before}");
    assert!(before.contains("exit=1"), "{before}");
    let after = run("trusted");
    for tool in ["curl", "python requests", "pip", "git", "node"] {
        assert!(
            after.contains(&format!("{tool:<16} pass"))
                || after.contains(&format!("{tool:<16} skipped")),
            "{tool}: {after}"
        );
    }
    assert!(after.contains("exit=0"), "{after}");
}
