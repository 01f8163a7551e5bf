//! `rampart trust verify --local`: a throwaway HTTPS origin on 127.0.0.1 whose
//! certificate is minted from Rampart's CA, exactly as the gateway mints one for an
//! intercepted site. A tool that reaches it without a certificate error trusts
//! Rampart, with no gateway and no internet involved.
use anyhow::Context;
use rampart_tls::ca::CertificateAuthority;
use rampart_tls::leaf::LeafNames;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read before answering.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// A listening origin; it serves until the process exits.
pub struct LocalOrigin {
    addr: SocketAddr,
}

impl LocalOrigin {
    /// Binds 127.0.0.1 on a port the kernel picks and serves from a background thread.
    pub fn start(ca: &CertificateAuthority) -> anyhow::Result<Self> {
        // An IP address SAN: "localhost" may resolve to ::1 first for some tools.
        let names = LeafNames::for_host("127.0.0.1")?;
        let leaf = ca
            .mint(&names)
            .context("minting the local origin's certificate")?;
        let config = rustls::ServerConfig::builder_with_provider(rampart_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions for the local origin")?
            .with_no_client_auth()
            .with_single_cert(leaf.chain.clone(), leaf.key.clone_key().into())
            .context("the local origin's certificate")?;
        let config = Arc::new(config);
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).context("listening on 127.0.0.1 for the check")?;
        let addr = listener
            .local_addr()
            .context("the local origin's address")?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || serve(stream, config));
            }
        });
        Ok(LocalOrigin { addr })
    }

    pub fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }
}

/// Answers one request with `404` and closes: every tool treats any HTTP answer as
/// proof the handshake worked (git and pip report "not found", cargo an unsuccessful
/// response). Errors end the connection; the tool reports them.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "rampart trust verify: TLS handshake completed\n";
    let response = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
