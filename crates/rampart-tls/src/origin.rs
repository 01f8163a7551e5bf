//! The origin side of an intercepted connection: verify origins against the system roots
//! plus configured extra roots, with hostname verification and the client's ALPN offered
//! upstream. An invalid certificate is never accepted silently: only a host on the
//! explicit exception list gets through, and the problem found is handed back to the
//! gateway to log.
use crate::host_pattern::HostPatternSet;
use crate::origin_failure::{OriginTlsFailure, SelfSignedCertificate};
use crate::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Origin hosts whose key-exchange choice and TLS 1.2 session are remembered (TLS 1.3
/// tickets are bounded separately, see [`crate::origin_sessions`]).
const ORIGIN_SESSION_CACHE: usize = 4096;

/// Where trust for origins comes from, and which hosts may present invalid certificates.
#[derive(Debug, Clone, Default)]
pub struct OriginTlsSettings {
    /// Load the operating system's roots (rustls-native-certs; honours `SSL_CERT_FILE`).
    pub use_system_roots: bool,
    /// Extra PEM files of trusted roots (internal CAs).
    pub extra_roots: Vec<PathBuf>,
    /// Host patterns whose invalid certificates are allowed (and logged every time).
    pub allow_invalid_certificate_hosts: Vec<String>,
}

/// A client config for one origin connection.
#[derive(Debug, Clone)]
pub struct OriginClientConfig {
    pub config: Arc<ClientConfig>,
    /// Set when `host` is on the exception list: after the handshake, ask it what was wrong.
    pub exception: Option<AllowedInvalidCertificate>,
}

/// The record of an explicit exception: which pattern allowed the host, and what problem
/// (if any) the certificate had. The gateway logs an event when `problem()` is `Some`.
#[derive(Debug, Clone)]
pub struct AllowedInvalidCertificate {
    pattern: String,
    problem: Arc<Mutex<Option<OriginTlsFailure>>>,
}

impl AllowedInvalidCertificate {
    /// The configured pattern that matched.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The certificate problem that was overridden, if the certificate was in fact invalid.
    pub fn problem(&self) -> Option<OriginTlsFailure> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }
}

/// Builds verified client configs for origins.
pub struct OriginTls {
    base: Arc<ClientConfig>,
    inner: Arc<WebPkiServerVerifier>,
    exceptions: HostPatternSet,
    by_alpn: moka::sync::Cache<Vec<Vec<u8>>, Arc<ClientConfig>>,
    root_count: usize,
}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginTls")
            .field("roots", &self.root_count)
            .field("exceptions", &self.exceptions)
            .finish_non_exhaustive()
    }
}

impl OriginTls {
    /// Loads roots as `settings` says; fails when a configured file is unreadable or no
    /// root at all is available.
    pub fn new(settings: &OriginTlsSettings) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        if settings.use_system_roots {
            let loaded = rustls_native_certs::load_native_certs();
            for err in &loaded.errors {
                tracing::warn!(error = %err, "some system root certificates could not be loaded");
            }
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            if ignored > 0 {
                tracing::debug!(
                    added,
                    ignored,
                    "system roots rustls could not use were skipped"
                );
            }
        }
        for path in &settings.extra_roots {
            let certs = crate::ca::read_certificates(path)?;
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::InvalidCertificate {
                    path: path.clone(),
                    reason: format!("not usable as a trust anchor: {e}"),
                })?;
            }
        }
        Self::from_roots(roots, &settings.allow_invalid_certificate_hosts)
    }

    /// Uses exactly `roots` (tests, or callers with their own store).
    pub fn from_roots<S: AsRef<str>>(
        roots: RootCertStore,
        allow_invalid_certificate_hosts: &[S],
    ) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let root_count = roots.len();
        let provider = crate::intercept_provider();
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Rustls {
                what: "building the origin certificate verifier",
                source: rustls::Error::General(e.to_string()),
            })?;
        let exceptions = HostPatternSet::parse(
            "tls.allow_invalid_certificate_hosts",
            allow_invalid_certificate_hosts,
        )?;
        let mut base = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "building the origin TLS config",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OriginVerifier {
                inner: inner.clone(),
                allowed: None,
            }))
            .with_no_client_auth();
        // Deeper per-host ticket pools than rustls' default store: see origin_sessions.
        base.resumption = Resumption::store(Arc::new(
            crate::origin_sessions::OriginSessionStore::new(ORIGIN_SESSION_CACHE),
        ));
        Ok(OriginTls {
            base: Arc::new(base),
            inner,
            exceptions,
            by_alpn: moka::sync::Cache::new(64),
            root_count,
        })
    }

    /// Number of trust anchors loaded.
    pub fn root_count(&self) -> usize {
        self.root_count
    }

    /// The config to connect to `host`, offering `alpn` (the client's list, in its order).
    pub fn client_config(&self, host: &str, alpn: &[Vec<u8>]) -> OriginClientConfig {
        if let Some(pattern) = self.exceptions.find(host) {
            let record = AllowedInvalidCertificate {
                pattern: pattern.to_string(),
                problem: Arc::new(Mutex::new(None)),
            };
            let mut config = (*self.base).clone();
            config.alpn_protocols = alpn.to_vec();
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(OriginVerifier {
                    inner: self.inner.clone(),
                    allowed: Some(record.clone()),
                }));
            return OriginClientConfig {
                config: Arc::new(config),
                exception: Some(record),
            };
        }
        let config = if alpn.is_empty() {
            self.base.clone()
        } else {
            // Clones share the session store, so resumption spans every ALPN variant.
            self.by_alpn.get_with_by_ref(alpn, || {
                let mut config = (*self.base).clone();
                config.alpn_protocols = alpn.to_vec();
                Arc::new(config)
            })
        };
        OriginClientConfig {
            config,
            exception: None,
        }
    }
}

/// The `ServerName` to verify for a host from SNI / CONNECT (IPv6 with or without brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let trimmed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(trimmed.to_string()).map_err(|e| TlsError::InvalidHost {
        host: host.to_string(),
        reason: e.to_string(),
    })
}

/// webpki verification, plus: a self-signed certificate is reported as such (webpki only
/// says "unknown issuer"), and on an exception host a failure is recorded and overridden.
#[derive(Debug)]
struct OriginVerifier {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Option<AllowedInvalidCertificate>,
}

impl ServerCertVerifier for OriginVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let err = match result {
            Ok(ok) => return Ok(ok),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
                if is_self_issued(end_entity) =>
            {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(SelfSignedCertificate)),
                ))
            }
            Err(other) => other,
        };
        match &self.allowed {
            Some(record) => {
                let failure = OriginTlsFailure::from_rustls(&err);
                tracing::warn!(
                    server = ?server_name,
                    pattern = %record.pattern,
                    problem = %failure,
                    "invalid origin certificate allowed by tls.allow_invalid_certificate_hosts"
                );
                if let Ok(mut slot) = record.problem.lock() {
                    *slot = Some(failure);
                }
                Ok(ServerCertVerified::assertion())
            }
            None => Err(err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn is_self_issued(cert: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(cert)
        .map(|(_, x)| x.subject().as_raw() == x.issuer().as_raw())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CaPaths, CertificateAuthority};
    use crate::leaf::LeafNames;
    use crate::server_config::MintedCertResolver;
    use rcgen::{CertificateParams, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use time::{Duration, OffsetDateTime};
    use tokio::io::AsyncWriteExt;

    /// A loopback TLS origin presenting `chain`/`key`; returns its address.
    async fn origin(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> std::net::SocketAddr {
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).unwrap();
        let ck = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
        let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(MintedCertResolver(ck)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: CertificateAuthority,
    }

    fn fixture() -> Fixture {
        named_fixture("CN=Origin Test CA")
    }

    fn named_fixture(subject: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions {
                subject: Some(subject.into()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        Fixture { _dir: dir, ca }
    }

    fn roots(ca: &CertificateAuthority) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).unwrap();
        roots
    }

    async fn connect(
        tls: &OriginTls,
        host: &str,
        addr: std::net::SocketAddr,
    ) -> (
        Result<(), OriginTlsFailure>,
        Option<AllowedInvalidCertificate>,
    ) {
        let cfg = tls.client_config(host, &[b"h2".to_vec(), b"http/1.1".to_vec()]);
        let connector = tokio_rustls::TlsConnector::from(cfg.config.clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let result = connector
            .connect(server_name(host).unwrap(), tcp)
            .await
            .map(|s| assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..])))
            .map_err(|e| OriginTlsFailure::from_io(&e));
        (result, cfg.exception)
    }

    fn self_signed(
        host: &str,
        not_after: Option<OffsetDateTime>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        if let Some(t) = not_after {
            params.not_before = t - Duration::days(30);
            params.not_after = t;
        }
        let cert = params.self_signed(&key).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    #[tokio::test]
    async fn trusted_origin_connects_with_alpn_from_the_client_list() {
        let f = fixture();
        let leaf =
            f.ca.mint(&LeafNames::for_host("good.test").unwrap())
                .unwrap();
        let addr = origin(
            leaf.chain.clone(),
            PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
        )
        .await;
        let tls = OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap();
        let (result, exception) = connect(&tls, "good.test", addr).await;
        assert_eq!(result, Ok(()));
        assert!(exception.is_none());
    }

    #[tokio::test]
    async fn wrong_host_is_classified_with_presented_names() {
        let f = fixture();
        let leaf =
            f.ca.mint(&LeafNames::for_host("other.test").unwrap())
                .unwrap();
        let addr = origin(
            leaf.chain.clone(),
            PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
        )
        .await;
        let tls = OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap();
        let (result, _) = connect(&tls, "bank.test", addr).await;
        match &result {
            Err(OriginTlsFailure::WrongHost { presented }) => {
                assert!(
                    presented.iter().any(|p| p.contains("other.test")),
                    "{presented:?}"
                )
            }
            other => panic!("expected wrong host, got {other:?}"),
        }
        assert_eq!(result.unwrap_err().code(), "wrong_host");
    }

    #[tokio::test]
    async fn self_signed_origin_is_reported_as_self_signed() {
        let f = fixture();
        let (chain, key) = self_signed("selfie.test", None);
        let addr = origin(chain, key).await;
        let tls = OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap();
        let (result, _) = connect(&tls, "selfie.test", addr).await;
        assert_eq!(result, Err(OriginTlsFailure::SelfSigned));
    }

    #[tokio::test]
    async fn expired_origin_is_reported_as_expired() {
        let f = fixture();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["old.test".to_string()]).unwrap();
        params.not_before = OffsetDateTime::now_utc() - Duration::days(60);
        params.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        let cert = params.signed_by(&key, f.ca.issuer()).unwrap();
        let addr = origin(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .await;
        let tls = OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap();
        let (result, _) = connect(&tls, "old.test", addr).await;
        assert_eq!(result, Err(OriginTlsFailure::Expired));
    }

    #[tokio::test]
    async fn exception_host_connects_but_records_the_problem() {
        let f = fixture();
        let (chain, key) = self_signed("lab.internal.test", None);
        let addr = origin(chain, key).await;
        let tls = OriginTls::from_roots(roots(&f.ca), &["*.internal.test"]).unwrap();
        let (result, exception) = connect(&tls, "lab.internal.test", addr).await;
        assert_eq!(result, Ok(()));
        let exception = exception.expect("exception record");
        assert_eq!(exception.pattern(), "*.internal.test");
        assert_eq!(exception.problem(), Some(OriginTlsFailure::SelfSigned));
    }

    #[tokio::test]
    async fn unknown_issuer_is_reported_when_the_ca_is_not_trusted() {
        let f = fixture();
        let other = named_fixture("CN=Some Corporate CA");
        let leaf = other
            .ca
            .mint(&LeafNames::for_host("corp.test").unwrap())
            .unwrap();
        let addr = origin(
            leaf.chain.clone(),
            PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
        )
        .await;
        let tls = OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap();
        let (result, _) = connect(&tls, "corp.test", addr).await;
        assert_eq!(result, Err(OriginTlsFailure::UnknownIssuer));
    }

    /// Many concurrent handshakes to one origin all resume once enough tickets were
    /// issued: rustls' default store (8 tickets per host) would leave half of these full.
    #[tokio::test]
    async fn concurrent_origin_connections_resume_beyond_eight_tickets() {
        let f = fixture();
        let leaf =
            f.ca.mint(&LeafNames::for_host("busy.test").unwrap())
                .unwrap();
        let addr = origin(
            leaf.chain.clone(),
            PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
        )
        .await;
        let tls = Arc::new(OriginTls::from_roots(roots(&f.ca), &[] as &[&str]).unwrap());
        async fn handshake(tls: &OriginTls, addr: std::net::SocketAddr) -> rustls::HandshakeKind {
            let cfg = tls.client_config("busy.test", &[]);
            let connector = tokio_rustls::TlsConnector::from(cfg.config.clone());
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(server_name("busy.test").unwrap(), tcp)
                .await
                .unwrap();
            // Tickets arrive after the handshake: read to the end so they are stored.
            let mut body = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut body)
                .await
                .unwrap();
            assert_eq!(body, b"ok");
            tls.get_ref().1.handshake_kind().unwrap()
        }
        // The test origin sends rustls' default of 2 tickets per connection (each
        // resumption uses one): after 20 connections, 21 are kept.
        for _ in 0..20 {
            handshake(&tls, addr).await;
        }
        let concurrent: Vec<_> = (0..16)
            .map(|_| {
                let tls = tls.clone();
                tokio::spawn(async move { handshake(&tls, addr).await })
            })
            .collect();
        for task in concurrent {
            assert_eq!(task.await.unwrap(), rustls::HandshakeKind::Resumed);
        }
    }

    #[test]
    fn extra_roots_file_is_loaded_and_bad_file_is_named() {
        let f = fixture();
        let settings = OriginTlsSettings {
            use_system_roots: false,
            extra_roots: vec![f.ca.paths().cert.clone()],
            allow_invalid_certificate_hosts: vec![],
        };
        assert_eq!(OriginTls::new(&settings).unwrap().root_count(), 1);
        let missing = OriginTlsSettings {
            extra_roots: vec!["/nonexistent/roots.pem".into()],
            ..settings
        };
        assert!(OriginTls::new(&missing)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/roots.pem"));
        let none = OriginTlsSettings::default();
        assert!(matches!(OriginTls::new(&none), Err(TlsError::NoRoots)));
    }

    #[test]
    fn bracketed_ipv6_server_name_parses() {
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("bad host").is_err());
    }
}
