//! What the content-inspection end-to-end tests share: a Python origin that
//! serves files and records uploads (plain HTTP or HTTPS), a real clamd with
//! a signature database written by the test, the gateway's configuration,
//! and the admin API for reloads.
// Each test binary uses the part it needs (re-exports included).
#![allow(dead_code, unused_imports)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_testkit::https_origin::HttpsOrigin;
use rampart_testkit::python_origin::PythonServer;

use crate::https_fixtures::{CertKind, TestPki};
use crate::support::{free_port, raw_exchange, run, Rampart};

pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// The string the test's clamd signature matches.
pub const CLAMD_MARKER: &str = "RAMPART-CLAMD-TEST-MARKER";
/// The name clamd reports for it (`.UNOFFICIAL`: not from ClamAV's own databases).
pub const CLAMD_SIGNATURE: &str = "Rampart.Test.Marker.UNOFFICIAL";

pub use rampart_testkit::{require, sh};

const ORIGIN_PY: &str = r#"
import hashlib, http.server, os, ssl, sys

root, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)

    def log_message(self, fmt, *args):
        sys.stderr.write("origin: " + (fmt % args) + "\n")
        sys.stderr.flush()

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        digest = hashlib.sha256(body).hexdigest()
        with open(os.path.join(root, "uploads.log"), "a") as log:
            log.write("%s %d %s\n" % (self.path, len(body), digest))
        out = ("%d %s" % (len(body), digest)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("PORT %d" % server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A Python origin serving `root` for GET and answering POST with the
/// length and SHA-256 of the body it received (also appended to
/// `root/uploads.log`); plain HTTP, or HTTPS with `pki`. Killed on drop.
pub struct FileOrigin {
    pub port: u16,
    pub root: PathBuf,
    _server: PythonServer,
}

impl FileOrigin {
    pub fn plain(root: &Path) -> FileOrigin {
        FileOrigin::start(root, None)
    }

    pub fn https(root: &Path, pki: &TestPki) -> FileOrigin {
        FileOrigin::start(root, Some(pki))
    }

    fn start(root: &Path, pki: Option<&TestPki>) -> FileOrigin {
        let (cert, key) = match pki {
            Some(p) => (p.cert_pem.as_path(), p.key_pem.as_path()),
            None => (Path::new(""), Path::new("")),
        };
        let server =
            PythonServer::start("the python file origin", ORIGIN_PY, [root, cert, key], None);
        FileOrigin {
            port: server.port,
            root: root.to_path_buf(),
            _server: server,
        }
    }

    /// Lines `PATH LENGTH SHA256` of the uploads the origin received.
    pub fn uploads(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("uploads.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A real clamd (Debian clamav-daemon) on a loopback TCP port, with a
/// database directory holding only the test's own signature (an `.ndb`
/// body signature of [`CLAMD_MARKER`]): nothing is downloaded. Killed on drop.
pub struct Clamd {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Clamd {
    pub fn start(dir: &Path) -> Clamd {
        require(&["clamd"]);
        let home = dir.join("clamd");
        let db = home.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let hex: String = CLAMD_MARKER.bytes().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            db.join("rampart-test.ndb"),
            format!("Rampart.Test.Marker:0:*:{hex}\n"),
        )
        .unwrap();
        let port = free_port();
        let log = home.join("clamd.log");
        let conf = home.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nDatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n\
                 LogFile {}\nTemporaryDirectory {}\nStreamMaxLength 25M\n",
                db.display(),
                log.display(),
                home.display()
            ),
        )
        .unwrap();
        let child = Command::new("clamd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clamd");
        let mut clamd = Clamd {
            port,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = clamd.child.as_mut().map(Child::try_wait) {
                panic!("clamd exited ({status}): {}", clamd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "clamd did not listen within 30 s: {}",
                clamd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        clamd
    }

    pub fn address(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops clamd (an engine going down under the gateway).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway that reaches `files.test` on loopback, decrypts CONNECTs to
/// `tls_port` trusting `roots`, with `extra` TOML (inspection settings) and
/// `top` before every table (e.g. `policy = "FILE"`).
pub fn gateway(top: &str, extra: &str, tls_port: u16, roots: &[&Path]) -> Rampart {
    let roots: Vec<String> = roots
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let tls = if roots.is_empty() {
        String::new()
    } else {
        format!(
            "[tls]\nsystem_roots = false\nextra_roots = [{}]\n",
            roots.join(", ")
        )
    };
    Rampart::start(&format!(
        "{top}[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n\
         tls_ports = [443, {tls_port}]\n\
         [resolve]\n\"files.test\" = \"127.0.0.1\"\n{tls}{extra}"
    ))
}

/// `files.test` served from `root` plain ([`FileOrigin`]) and over HTTPS
/// ([`H2Origin`], a test PKI written in `dir`), and a gateway with `extra` that
/// decrypts CONNECTs to the HTTPS origin trusting that PKI.
pub fn files_origins_and_gateway(
    dir: &Path,
    root: &Path,
    extra: &str,
) -> (FileOrigin, H2Origin, Rampart) {
    let pki = TestPki::new(dir, "files", &["files.test"], CertKind::Valid);
    let plain = FileOrigin::plain(root);
    let tls = H2Origin::start(root, &pki);
    let gw = gateway("", extra, tls.port, &[&pki.ca_pem]);
    (plain, tls, gw)
}

/// An admin API call on the gateway; (status, JSON body).
pub fn api(gw: &Rampart, method: &str, path: &str) -> (u16, serde_json::Value) {
    gw.admin_api(method, path, "")
}

/// SHA-256 of a file as lowercase hex, with sha256sum.
pub fn sha256_of(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An HTTPS origin speaking HTTP/2 and HTTP/1.1 (ALPN), so that curl
/// `--http2` through an intercepted CONNECT runs HTTP/2 on both sides of the
/// gateway. GET serves files under `root`; POST stores the body it received
/// as `root/received-N` and answers its length (also logged in
/// `root/uploads.log` as `PATH LENGTH FILE`). Stops on drop.
pub struct H2Origin {
    pub port: u16,
    _origin: HttpsOrigin,
}

impl H2Origin {
    pub fn start(root: &Path, pki: &TestPki) -> H2Origin {
        let root = root.to_path_buf();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let origin = HttpsOrigin::start(pki, move |req| serve(req, root.clone(), received.clone()));
        H2Origin {
            port: origin.port,
            _origin: origin,
        }
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    root: PathBuf,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    if req.method() == hyper::Method::POST {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => bytes::Bytes::new(),
        };
        let n = received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = root.join(format!("received-{n}"));
        let _ = std::fs::write(&file, &body);
        let line = format!("{path} {} {}\n", body.len(), file.display());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("uploads.log"))
            .expect("uploads.log");
        let _ = std::io::Write::write_all(&mut log, line.as_bytes());
        return hyper::Response::new(body.len().to_string().into());
    }
    let name = path.trim_start_matches('/');
    match std::fs::read(root.join(name))
        .ok()
        .filter(|_| !name.contains(".."))
    {
        Some(content) => hyper::Response::new(content.into()),
        None => {
            let mut response = hyper::Response::new(bytes::Bytes::from_static(b"not found").into());
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            response
        }
    }
}
