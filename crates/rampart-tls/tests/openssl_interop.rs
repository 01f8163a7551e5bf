//! Minted leaves checked by independent TLS stacks: `openssl verify`, and `curl`
//! talking to `openssl s_server` presenting a minted leaf (loopback only).
use rampart_testkit::tls_origin::corporate_intermediate;
use rampart_tls::ca::{der_to_pem, CaOptions, CaPaths, CertificateAuthority};
use rampart_tls::leaf::LeafNames;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::create(&CaPaths::in_dir(dir), &CaOptions::default(), false).unwrap()
}

/// Writes the leaf, the rest of its chain and its key; returns (leaf, chain, key) paths.
fn write_leaf(ca: &CertificateAuthority, host: &str, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let leaf = ca.mint(&LeafNames::for_host(host).unwrap()).unwrap();
    let leaf_path = dir.join(format!("{host}.pem"));
    let chain_path = dir.join(format!("{host}.chain.pem"));
    let key_path = dir.join(format!("{host}.key"));
    std::fs::write(&leaf_path, der_to_pem(&leaf.chain[0])).unwrap();
    let rest: String = leaf.chain[1..].iter().map(|c| der_to_pem(c)).collect();
    std::fs::write(&chain_path, rest).unwrap();
    std::fs::write(&key_path, leaf.key_pem()).unwrap();
    (leaf_path, chain_path, key_path)
}

fn openssl_verify(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

struct SServer(Child);

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s_server(cert: &Path, chain: &Path, key: &Path) -> (SServer, SocketAddr) {
    let port = rampart_testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("openssl")
        .args(["s_server", "-accept", &addr.to_string(), "-www", "-quiet"])
        .arg("-cert")
        .arg(cert)
        .arg("-cert_chain")
        .arg(chain)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = SServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "openssl s_server did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr)
}

#[test]
fn minted_leaf_verifies_with_openssl_for_its_host_and_server_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("data"));
    let (leaf, _, _) = write_leaf(&ca, "verify.example", dir.path());
    let ca_file = ca.paths().cert.to_str().unwrap().to_string();
    let leaf = leaf.to_str().unwrap();
    let (ok, text) = openssl_verify(&[
        "-CAfile",
        &ca_file,
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "verify.example",
        leaf,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(": OK"), "{text}");
    let (ok, text) = openssl_verify(&[
        "-CAfile",
        &ca_file,
        "-verify_hostname",
        "other.example",
        leaf,
    ]);
    assert!(!ok, "a leaf must not verify for another host: {text}");
}

#[test]
fn ip_leaf_verifies_with_openssl_verify_ip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("data"));
    let (leaf, _, _) = write_leaf(&ca, "127.0.0.1", dir.path());
    let (ok, text) = openssl_verify(&[
        "-CAfile",
        ca.paths().cert.to_str().unwrap(),
        "-verify_ip",
        "127.0.0.1",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
}

#[test]
fn leaf_from_an_imported_intermediate_verifies_against_the_corporate_root() {
    let dir = tempfile::tempdir().unwrap();
    // The corporate root and an intermediate it signed, made by openssl itself.
    let d = dir.path();
    corporate_intermediate(
        d,
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "/CN=Corp Root",
        "/CN=Corp Gateway Intermediate",
        "keyCertSign,cRLSign,digitalSignature",
    );
    let paths = CaPaths::in_dir(&d.join("data"));
    let ca =
        CertificateAuthority::import(&paths, &d.join("inter.pem"), &d.join("inter.key"), false)
            .unwrap();
    let (leaf, chain, _) = write_leaf(&ca, "corp.example", d);
    let (ok, text) = openssl_verify(&[
        "-CAfile",
        d.join("root.pem").to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        "-verify_hostname",
        "corp.example",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // Without the served intermediate, the root alone cannot verify the leaf.
    let (ok, _) = openssl_verify(&[
        "-CAfile",
        d.join("root.pem").to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok);
}

#[test]
fn curl_with_cacert_accepts_openssl_s_server_presenting_a_minted_leaf() {
    if !have("curl") {
        panic!("curl is required for this test (apt-get install curl)");
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("data"));
    let (leaf, chain, key) = write_leaf(&ca, "mint.test", dir.path());
    let (_server, addr) = s_server(&leaf, &chain, &key);
    let url = format!("https://mint.test:{}/", addr.port());
    let resolve = format!("mint.test:{}:127.0.0.1", addr.port());
    let trusted = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
        .arg(&ca.paths().cert)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        trusted.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(
        String::from_utf8_lossy(&trusted.stdout).contains("s_server"),
        "expected the s_server status page"
    );
    // Only the Rampart CA makes it trusted: with an unrelated CA file curl refuses.
    let other = ca_other(dir.path());
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
        .arg(&other)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl exit 60 = peer certificate cannot be authenticated: {}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
}

fn ca_other(dir: &Path) -> PathBuf {
    let other = CertificateAuthority::create(
        &CaPaths::in_dir(&dir.join("other")),
        &CaOptions {
            subject: Some("CN=Unrelated CA".into()),
            ..Default::default()
        },
        false,
    )
    .unwrap();
    other.paths().cert.clone()
}
