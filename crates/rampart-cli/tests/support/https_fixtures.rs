//! HTTPS origins for developer-tool tests: a throwaway PKI made with rcgen and
//! a small Python HTTPS server (standard library only) that serves a directory
//! (a PEP 503 simple index, any static files), a Git repository over the smart
//! HTTP protocol (`git http-backend` as CGI), or a WebSocket echo (RFC 6455,
//! written by hand so no PyPI package is needed). Only loopback is used.
// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::path::Path;

pub use rampart_testkit::pki::{CertKind, TestPki};
use rampart_testkit::python_origin::PythonServer;

/// What the Python origin serves.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// Files under the root directory (directories answer with their `index.html`).
    Static,
    /// Bare repositories under the root directory, smart HTTP via `git http-backend`.
    Git,
    /// A WebSocket echo server on every path.
    WebSocketEcho,
}

/// A running Python HTTPS origin; killed on drop.
pub struct PyHttpsOrigin {
    pub port: u16,
    server: PythonServer,
}

impl PyHttpsOrigin {
    pub fn start(serve: Serve, root: &Path, pki: &TestPki) -> PyHttpsOrigin {
        let mode = match serve {
            Serve::Static => "static",
            Serve::Git => "git",
            Serve::WebSocketEcho => "ws",
        };
        let log = root.with_extension(format!("{mode}-origin.log"));
        let server = PythonServer::start(
            "the python HTTPS origin",
            ORIGIN_PY,
            [
                Path::new(mode),
                root,
                pki.cert_pem.as_path(),
                pki.key_pem.as_path(),
            ],
            Some(&log),
        );
        PyHttpsOrigin {
            port: server.port,
            server,
        }
    }

    /// What the origin logged (one line per request it served, errors).
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// The origin: `python3 -c ORIGIN_PY MODE ROOT CERT KEY`.
const ORIGIN_PY: &str = r#"
import base64, hashlib, http.server, os, ssl, struct, subprocess, sys

mode, root, cert, key = sys.argv[1:5]
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Quiet:
    def log_message(self, fmt, *args):
        sys.stderr.write("origin: " + (fmt % args) + "\n")
        sys.stderr.flush()


class Static(Quiet, http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)


def read_chunked(f):
    body = b""
    while True:
        size = int(f.readline().split(b";")[0].strip(), 16)
        if size == 0:
            f.readline()
            return body
        body += f.read(size)
        f.readline()


class Git(Quiet, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.cgi()

    def do_POST(self):
        self.cgi()

    def cgi(self):
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   REMOTE_ADDR="127.0.0.1", SERVER_PROTOCOL="HTTP/1.1")
        for k, v in self.headers.items():
            env["HTTP_" + k.upper().replace("-", "_")] = v
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env["CONTENT_LENGTH"] = str(len(body))
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             stdout=subprocess.PIPE).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def read_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError("connection closed inside a frame")
    return data


def read_frame(f):
    b0, b1 = read_exact(f, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(f, 8))[0]
    mask = read_exact(f, 4) if b1 & 0x80 else None
    data = read_exact(f, n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return b0 & 0x0F, data, mask is not None


def write_frame(f, op, data):
    n = len(data)
    if n < 126:
        head = bytes([0x80 | op, n])
    elif n < 65536:
        head = bytes([0x80 | op, 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | op, 127]) + struct.pack("!Q", n)
    f.write(head + data)
    f.flush()


class Ws(Quiet, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        key = self.headers.get("Sec-WebSocket-Key")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self.send_error(400, "not a WebSocket handshake")
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            op, data, masked = read_frame(self.rfile)
            if not masked:
                # RFC 6455 5.1: a server closes on an unmasked client frame (1002).
                write_frame(self.wfile, 8, struct.pack("!H", 1002) + b"unmasked frame")
                return
            if op == 8:
                write_frame(self.wfile, 8, data[:2])
                return
            if op == 9:
                write_frame(self.wfile, 10, data)
                continue
            write_frame(self.wfile, op, data)


handler = {"static": Static, "git": Git, "ws": Ws}[mode]
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
"#;
