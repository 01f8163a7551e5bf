//! A real TLS origin: `openssl s_server -www` with a certificate from a
//! throwaway CA (`CN=Rampart-Test-Origin-CA`) made by the openssl CLI for one
//! test only.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::sh;

/// The files [`openssl_pki`] wrote.
pub struct OpensslPki {
    pub ca_pem: PathBuf,
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

/// Makes `ca.pem`/`ca.key` and a server leaf `leaf.pem`/`leaf.key` for `names`
/// (DNS SANs; the first is the CN) in `dir` with the openssl CLI.
pub fn openssl_pki(dir: &Path, names: &[&str]) -> OpensslPki {
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    sh(dir, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=Rampart-Test-Origin-CA 2>/dev/null");
    sh(
        dir,
        &format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr -subj /CN={} 2>/dev/null && \
             printf 'subjectAltName={}\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf 2>/dev/null",
            names[0],
            sans.join(",")
        ),
    );
    OpensslPki {
        ca_pem: dir.join("ca.pem"),
        leaf_pem: dir.join("leaf.pem"),
        leaf_key: dir.join("leaf.key"),
    }
}

/// `openssl s_server -quiet -www -accept BIND` with `pki`'s leaf, as a command
/// the caller may wrap (e.g. in `ip netns exec`).
pub fn s_server_args(command: &mut Command, bind: &str, pki: &OpensslPki) {
    command
        .args(["s_server", "-quiet", "-www", "-accept", bind])
        .arg("-cert")
        .arg(&pki.leaf_pem)
        .arg("-key")
        .arg(&pki.leaf_key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

pub struct TlsOrigin {
    pub port: u16,
    pub ca_pem: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsOrigin {
    /// Serves `-www` status pages for `name` (a DNS SAN) on a free loopback port.
    pub fn start(name: &str) -> TlsOrigin {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = openssl_pki(dir.path(), &[name]);
        let port = crate::free_port();
        let mut command = Command::new("openssl");
        s_server_args(&mut command, &format!("127.0.0.1:{port}"), &pki);
        let child = command.spawn().expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin {
            port,
            ca_pem: pki.ca_pem,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl ARGS` run in `dir`; panics with its stderr when it fails.
pub fn openssl_in(dir: &Path, args: &[&str]) {
    let out = crate::process::run(Command::new("openssl").args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An organisation's CA chain made by the openssl CLI in `dir`: a self-signed root
/// (`root.pem`, `root.key`; `root_key` is what follows `-newkey`, e.g. `["rsa:2048"]`
/// or `["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]`) and a P-256 intermediate CA it
/// signs (`inter.pem`, `inter.key`; path length 0, `keyUsage=critical,KEY_USAGE`).
pub fn corporate_intermediate(
    dir: &Path,
    root_key: &[&str],
    root_subject: &str,
    inter_subject: &str,
    key_usage: &str,
) {
    let mut root = vec!["req", "-x509", "-newkey"];
    root.extend_from_slice(root_key);
    root.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "30",
        "-subj",
        root_subject,
    ]);
    openssl_in(dir, &root);
    openssl_in(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "inter.key",
            "-out",
            "inter.csr",
            "-subj",
            inter_subject,
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,{key_usage}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"),
    )
    .expect("write ext.cnf");
    openssl_in(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "inter.pem",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
        ],
    );
}
