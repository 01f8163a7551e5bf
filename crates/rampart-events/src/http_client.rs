//! A blocking HTTP(S) client for the HEC sink and for the CLI talking to a
//! Rampart server: hyper-util's pooled client (keep-alive across HEC
//! batches) on a one-thread runtime of its own, so callers stay plain threads
//! (sink delivery threads, the CLI) and need no runtime. TLS is rustls with
//! the roots the caller passes (`tls_client::client_config`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Connecting (TCP and TLS handshake) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole exchange (connect, send, read the answer) must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses larger than this are refused.
const MAX_RESPONSE: usize = 64 << 20;

/// What failed, with the server it concerned.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: https needs a TLS configuration")]
    NoTls { url: String },
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("TLS with {authority} failed: {reason} (is the server's CA in the trusted roots, e.g. --ca-file / ca_file?)")]
    Tls { authority: String, reason: String },
    #[error("{authority} did not answer within {}s", .timeout.as_secs())]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("exchange with {authority} failed: {reason}")]
    Exchange { authority: String, reason: String },
    #[error("the answer of {authority} is larger than {limit} bytes")]
    TooLarge { authority: String, limit: usize },
    #[error("invalid request header `{name}`: {reason}")]
    Header { name: String, reason: String },
    #[error("cannot start the HTTP client's runtime: {0}")]
    Runtime(std::io::Error),
}

/// A checked `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    uri: http::Uri,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, HttpError> {
        let bad = |reason: &str| HttpError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("missing host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let path = if path.is_empty() { "/".into() } else { path };
        Ok(Target {
            https,
            host,
            port,
            path,
            uri,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

type Connector = HttpsConnector<HttpConnector>;

/// A client that keeps connections open between requests.
pub struct HttpClient {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Made at the first request, on the thread that sends: a runtime must not
    /// be dropped inside another one's async context, and a sink is prepared
    /// (and may be discarded) inside the server's.
    inner: Option<(tokio::runtime::Runtime, Client<Connector, Full<Bytes>>)>,
}

impl HttpClient {
    /// `tls` is required for https targets.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        HttpClient { tls, inner: None }
    }

    fn inner(
        &mut self,
    ) -> Result<&(tokio::runtime::Runtime, Client<Connector, Full<Bytes>>), HttpError> {
        if self.inner.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(HttpError::Runtime)?;
            let tls = match &self.tls {
                Some(config) => (**config).clone(),
                // Plain http only: this configuration never makes a handshake.
                None => rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| HttpError::Tls {
                    authority: "-".into(),
                    reason: e.to_string(),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            };
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(CONNECT_TIMEOUT));
            http.set_nodelay(true);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
            self.inner = Some((runtime, client));
        }
        match &self.inner {
            Some(inner) => Ok(inner),
            None => Err(HttpError::Runtime(std::io::Error::other(
                "client not initialised",
            ))),
        }
    }

    /// Sends one request and reads the whole answer.
    pub fn send(
        &mut self,
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        if target.https && self.tls.is_none() {
            return Err(HttpError::NoTls {
                url: target.uri.to_string(),
            });
        }
        let authority = target.authority();
        let mut request = http::Request::builder()
            .method(method)
            .uri(target.uri.clone())
            .header(
                http::header::USER_AGENT,
                concat!("rampart/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| HttpError::Header {
                name: headers
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })?;
        let (runtime, client) = self.inner()?;
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| classify(&authority, &e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge {
                            authority: authority.clone(),
                            limit: MAX_RESPONSE,
                        }
                    } else {
                        HttpError::Exchange {
                            authority: authority.clone(),
                            reason: innermost(e.as_ref()),
                        }
                    }
                })?
                .to_bytes()
                .to_vec();
            Ok(Response { status, body })
        };
        runtime.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(HttpError::Timeout {
                        authority: authority.clone(),
                        timeout: REQUEST_TIMEOUT,
                    })
                })
        })
    }
}

/// One request on a fresh client (the CLI: one call per command).
pub fn request(
    method: &str,
    target: &Target,
    headers: &[(&str, &str)],
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Response, HttpError> {
    HttpClient::new(tls.cloned()).send(method, target, headers, body)
}

/// Names what failed: the TLS handshake (with rustls's reason: an unknown
/// issuer, a name mismatch), the connection (refused, unreachable), or the
/// exchange after it (the server closed early, sent a malformed answer).
fn classify(authority: &str, error: &hyper_util::client::legacy::Error) -> HttpError {
    let authority = authority.to_string();
    if let Some(tls) = rustls_error(error) {
        return HttpError::Tls {
            authority,
            reason: tls.to_string(),
        };
    }
    let reason = innermost(error);
    if error.is_connect() {
        HttpError::Connect { authority, reason }
    } else {
        HttpError::Exchange { authority, reason }
    }
}

/// The rustls error in an error's chain, if any. It sits inside `io::Error`s
/// (tokio-rustls wraps it, hyper-rustls wraps that again), whose `source()`
/// skips the error they carry: each one is looked inside too.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut pending = vec![error];
    while let Some(e) = pending.pop() {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    None
}

/// The deepest message of an error chain: hyper's outer errors say only
/// "client error (Connect)"; the cause says "Connection refused".
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(source) = last.source() {
        last = source;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_path() {
        let t = Target::parse("https://splunk.example:8088/services/collector/event").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("splunk.example", 8088));
        assert_eq!(t.path, "/services/collector/event");
        let t = Target::parse("http://[::1]/x?y=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 80, "/x?y=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.path, "/");
        let err = Target::parse("ftp://x").unwrap_err().to_string();
        assert!(err.contains("only http:// and https://"), "{err}");
        assert!(Target::parse("http://").is_err());
    }

    #[test]
    fn a_refused_connection_is_named_as_such() {
        let port = rampart_testkit::free_port();
        let target = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = request("GET", &target, &[], b"", None).unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && text.contains("refused"),
            "{text}"
        );
    }

    #[test]
    fn https_without_a_tls_configuration_is_refused_before_connecting() {
        let target = Target::parse("https://127.0.0.1:1/").unwrap();
        let err = request("GET", &target, &[], b"", None).unwrap_err();
        assert!(matches!(err, HttpError::NoTls { .. }), "{err:?}");
    }

    /// A TLS server on loopback with a certificate from its own CA: trusted
    /// when that CA is passed, refused with rustls's reason when not.
    #[test]
    fn https_verifies_the_server_against_the_given_roots() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let server_config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = Arc::new(server_config);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for tcp in listener.incoming().flatten() {
                let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.is_empty() {
                    continue;
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                );
                let _ = tls.flush();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let target = Target::parse(&format!("https://{addr}/x")).unwrap();

        let trusted = crate::tls_client::client_config(Some(&ca_file)).unwrap();
        let response = request("GET", &target, &[], b"", Some(&trusted)).unwrap();
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, b"abcde".as_slice())
        );

        let untrusted = crate::tls_client::client_config(None).unwrap();
        let err = request("GET", &target, &[], b"", Some(&untrusted)).unwrap_err();
        assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }
}
