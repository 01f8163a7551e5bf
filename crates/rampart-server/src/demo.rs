//! `rampart demo`: an origin on this machine for the README tour, so the tour needs no
//! internet. It serves a small page and a file over plain HTTP and over HTTPS, with a
//! certificate for [`DEMO_HOST`] from a throwaway CA of its own, and writes `demo.toml`:
//! the server settings that reach it (a `[resolve]` entry for the name, loopback
//! destinations allowed, its ports opened) and trust it (`[tls] extra_roots`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// The name the demo origin answers to; `.test` is reserved (RFC 6761), so it can
/// never be a real site.
pub const DEMO_HOST: &str = "demo.rampart.test";
/// Default ports: unprivileged, and clear of Rampart's own (3128, 3129, 8080).
pub const DEFAULT_HTTP_PORT: u16 = 8480;
pub const DEFAULT_HTTPS_PORT: u16 = 8443;

const PAGE: &str = "<!doctype html>\n<title>Rampart demo</title>\n\
<h1>Hello from the Rampart demo origin</h1>\n<p><a href=\"/report.txt\">report.txt</a></p>\n";
const FILE: &str = "quarterly report: all numbers are made up\n";

/// What `prepare` wrote.
pub struct DemoSetup {
    /// The demo CA certificate (PEM): the root `demo.toml` tells the server to trust.
    pub ca_file: PathBuf,
    /// The server configuration that reaches and trusts the origin.
    pub config_file: PathBuf,
    tls: Arc<rustls::ServerConfig>,
}

/// Creates a fresh CA and a certificate for [`DEMO_HOST`] (kept in memory: the origin
/// lives as long as the process), and writes `demo-ca.pem` and `demo.toml` into `dir`.
pub fn prepare(dir: &Path, http_port: u16, https_port: u16) -> anyhow::Result<DemoSetup> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the demo CA key")?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).context("demo CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Rampart demo origin CA (throwaway)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the demo CA")?;
    let leaf_key = KeyPair::generate().context("generating the demo origin key")?;
    let mut leaf_params =
        CertificateParams::new(vec![DEMO_HOST.to_string()]).context("demo origin name")?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, DEMO_HOST);
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .context("signing the demo origin certificate")?;

    let ca_file = dir.join("demo-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem())
        .with_context(|| format!("writing {}", ca_file.display()))?;
    let ca_abs = std::path::absolute(&ca_file)
        .with_context(|| format!("resolving {}", ca_file.display()))?;
    let config_file = dir.join("demo.toml");
    std::fs::write(&config_file, config_text(&ca_abs, http_port, https_port))
        .with_context(|| format!("writing {}", config_file.display()))?;

    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::try_from(leaf_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("demo origin key: {e}"))?,
        )
        .context("demo origin TLS settings")?;
    Ok(DemoSetup {
        ca_file,
        config_file,
        tls: Arc::new(tls),
    })
}

/// `demo.toml`: only what differs from the embedded defaults.
fn config_text(ca_file: &Path, http_port: u16, https_port: u16) -> String {
    format!(
        "# Written by `rampart demo`: reach and trust its origin on this machine.\n\
         # rampart server --config {config}\n\
         [proxy]\n\
         # The demo origin listens on loopback, which the proxy refuses by default.\n\
         allow_loopback_destinations = true\n\
         # Its HTTPS port is not 443: let CONNECT reach it, and intercept it.\n\
         connect_ports = [443, {https_port}]\n\
         tls_ports = [443, {https_port}]\n\
         http_ports = [80, 443, \"1025-65535\"]\n\
         \n\
         [resolve]\n\
         \"{DEMO_HOST}\" = \"127.0.0.1\"\n\
         \n\
         [tls]\n\
         # The demo origin's throwaway CA, trusted for origins beside the system roots.\n\
         extra_roots = [{ca:?}]\n\
         # http://{DEMO_HOST}:{http_port}/ and https://{DEMO_HOST}:{https_port}/\n",
        config = "demo.toml",
        ca = ca_file.display().to_string(),
    )
}

/// Serves the page and the file on both listeners until the task is dropped.
pub async fn serve(setup: &DemoSetup, http: TcpListener, https: TcpListener) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(setup.tls.clone());
    let plain = async {
        loop {
            let (stream, _) = http.accept().await.context("accepting on the HTTP port")?;
            tokio::spawn(serve_connection(TokioIo::new(stream)));
        }
    };
    let tls = async {
        loop {
            let (stream, _) = https
                .accept()
                .await
                .context("accepting on the HTTPS port")?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that gives up in the handshake is no reason to stop.
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve_connection(TokioIo::new(stream)).await;
                }
            });
        }
    };
    tokio::select! {
        r = plain => r,
        r = tls => r,
    }
}

async fn serve_connection<I>(io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
        Ok::<_, std::convert::Infallible>(answer(req.uri().path()))
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

fn answer(path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/" => (200, "text/html; charset=utf-8", PAGE),
        "/report.txt" => (200, "text/plain; charset=utf-8", FILE),
        _ => (404, "text/plain; charset=utf-8", "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Binds both listeners (port 0 picks a free one).
pub async fn bind(
    http: SocketAddr,
    https: SocketAddr,
) -> anyhow::Result<(TcpListener, TcpListener)> {
    let h = TcpListener::bind(http)
        .await
        .with_context(|| format!("binding the demo HTTP port {http}"))?;
    let s = TcpListener::bind(https)
        .await
        .with_context(|| format!("binding the demo HTTPS port {https}"))?;
    Ok((h, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_parses_as_a_server_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = prepare(dir.path(), 18480, 18443).expect("prepare");
        let config = crate::config::RampartConfig::load(&setup.config_file).expect("parses");
        assert!(config.proxy.allow_loopback_destinations);
        assert_eq!(
            config
                .resolve
                .get(DEMO_HOST)
                .map(|ip| ip.to_string())
                .as_deref(),
            Some("127.0.0.1")
        );
        assert!(config.proxy.connect_ports.to_string().contains("18443"));
    }
}
