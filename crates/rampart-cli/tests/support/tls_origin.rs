//! A real TLS origin: `openssl s_server -www` with a certificate from a
//! throwaway CA made by the openssl CLI for this test only.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TlsOrigin {
    pub port: u16,
    pub ca_pem: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsOrigin {
    /// Serves `-www` status pages for `name` (a DNS SAN) on a free loopback port.
    pub fn start(name: &str) -> TlsOrigin {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        let sh = |script: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=Rampart-Test-Origin-CA 2>/dev/null");
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr -subj /CN={name} 2>/dev/null && \
             printf 'subjectAltName=DNS:{name}\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf 2>/dev/null"
        ));
        let port = super::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(p("leaf.pem"))
            .arg("-key")
            .arg(p("leaf.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin {
            port,
            ca_pem: p("ca.pem"),
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
