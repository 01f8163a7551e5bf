//! The crate's pieces composed the way the gateway will compose them — peek, decide,
//! verify the origin, mint, accept with the origin's ALPN, splice or relay — driven by
//! real clients (curl, openssl s_client) on loopback. This proves the API is sufficient
//! for interception; the gateway's own end-to-end tests cover CONNECT and HTTP proxying.
use rampart_tls::block_page::BlockPage;
use rampart_tls::ca::{CaOptions, CaPaths, CertificateAuthority};
use rampart_tls::decision::{DecryptionDecider, HostListDecider};
use rampart_tls::leaf::LeafNames;
use rampart_tls::leaf_cache::LeafCache;
use rampart_tls::origin::{server_name, OriginTls};
use rampart_tls::origin_failure::OriginTlsFailure;
use rampart_tls::peek::peek_client_hello;
use rampart_tls::pinned_clients::ClientRejection;
use rampart_tls::server_config::{InterceptConfigs, MintedCertResolver};
use rustls::RootCertStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A TLS origin answering every request with a fixed HTTP/1.1 response.
async fn origin(ca: &CertificateAuthority, names: &LeafNames, alpn: &[&[u8]]) -> SocketAddr {
    let leaf = ca.mint(names).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(rampart_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(MintedCertResolver(Arc::new(
            leaf.certified_key().unwrap(),
        ))));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "hello origin";
                let _ = tls
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// What the interceptor reports per connection.
#[derive(Debug)]
enum Seen {
    Spliced {
        host: String,
        reason: String,
    },
    Decrypted {
        host: String,
        alpn: Option<Vec<u8>>,
    },
    OriginRefused {
        host: String,
        failure: OriginTlsFailure,
    },
    PinnedClient {
        host: String,
        rejection: ClientRejection,
    },
}

struct Interceptor {
    decider: HostListDecider,
    origin_tls: OriginTls,
    configs: InterceptConfigs,
    /// Where each host's origin listens (the gateway would resolve it).
    routes: Vec<(String, SocketAddr)>,
    /// Host assumed for clients without SNI (the gateway knows it from CONNECT).
    connect_host: String,
    events: mpsc::UnboundedSender<Seen>,
}

impl Interceptor {
    fn route(&self, host: &str) -> SocketAddr {
        self.routes
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, a)| *a)
            .unwrap()
    }

    async fn handle(self: Arc<Self>, client: TcpStream) {
        let hello = peek_client_hello(&client, Duration::from_secs(5))
            .await
            .unwrap();
        let sni = hello.server_name.clone();
        let host = sni.clone().unwrap_or_else(|| self.connect_host.clone());
        let decision = self.decider.should_decrypt(&host);
        let origin_addr = self.route(&host);
        if !decision.decrypt {
            let _ = self.events.send(Seen::Spliced {
                host,
                reason: decision.reason.to_string(),
            });
            let mut client = client;
            let mut upstream = TcpStream::connect(origin_addr).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            return;
        }
        // Origin first: its ALPN choice (and, without SNI, its names) shape our answer.
        let origin_cfg = self.origin_tls.client_config(&host, &hello.alpn);
        let tcp = TcpStream::connect(origin_addr).await.unwrap();
        let upstream = tokio_rustls::TlsConnector::from(origin_cfg.config)
            .connect(server_name(&host).unwrap(), tcp)
            .await;
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
        let start = acceptor.await.unwrap();
        let mut upstream = match upstream {
            Ok(upstream) => upstream,
            Err(err) => {
                let failure = OriginTlsFailure::from_io(&err);
                let config = self
                    .configs
                    .server_config(&LeafNames::for_host(&host).unwrap(), &[])
                    .await
                    .unwrap();
                let Ok(mut tls) = start.into_stream(config).await else {
                    return;
                };
                let mut head = vec![0u8; 4096];
                let n = tls.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).to_string();
                let accept = head.lines().find_map(|l| {
                    l.strip_prefix("Accept: ")
                        .or_else(|| l.strip_prefix("accept: "))
                });
                let page = BlockPage::origin_certificate(&host, &failure, None, "ev-test-1")
                    .render(accept);
                let response = format!(
                    "HTTP/1.1 {} Bad Gateway\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    page.status, page.content_type, page.body.len(), page.body
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
                let _ = self.events.send(Seen::OriginRefused { host, failure });
                return;
            }
        };
        let origin_alpn = upstream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let names = match &sni {
            Some(sni) => LeafNames::for_host(sni).unwrap(),
            None => {
                LeafNames::mimic(&upstream.get_ref().1.peer_certificates().unwrap()[0]).unwrap()
            }
        };
        let alpn: Vec<Vec<u8>> = origin_alpn.iter().cloned().collect();
        let config = self.configs.server_config(&names, &alpn).await.unwrap();
        match start.into_stream(config).await {
            Ok(mut client_tls) => {
                let _ = self.events.send(Seen::Decrypted {
                    host,
                    alpn: client_tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()),
                });
                let _ = tokio::io::copy_bidirectional(&mut client_tls, &mut upstream).await;
            }
            Err(err) => {
                if let Some(rejection) = ClientRejection::from_handshake_error(&err) {
                    let _ = self.events.send(Seen::PinnedClient { host, rejection });
                }
            }
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    gateway_ca: PathBuf,
    origin_ca: PathBuf,
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Seen>,
}

async fn world() -> World {
    rampart_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // A throwaway CA that only the interceptor trusts for origins.
    let origin_ca = CertificateAuthority::create(
        &CaPaths::in_dir(&dir.path().join("origin-ca")),
        &CaOptions {
            subject: Some("CN=Test Origin CA".into()),
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let gateway_ca = Arc::new(
        CertificateAuthority::create(
            &CaPaths::in_dir(&dir.path().join("gw")),
            &CaOptions::default(),
            false,
        )
        .unwrap(),
    );
    let shop = origin(
        &origin_ca,
        &LeafNames::for_host("shop.test").unwrap(),
        &[b"h2", b"http/1.1"],
    )
    .await;
    let pinned = origin(
        &origin_ca,
        &LeafNames::for_host("pinned.test").unwrap(),
        &[b"http/1.1"],
    )
    .await;
    let wrong = origin(
        &origin_ca,
        &LeafNames::for_host("elsewhere.test").unwrap(),
        &[b"http/1.1"],
    )
    .await;
    let mut roots = RootCertStore::empty();
    roots.add(origin_ca.certificate_der().clone()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let interceptor = Arc::new(Interceptor {
        decider: HostListDecider::new(&["pinned.test"], true, None).unwrap(),
        origin_tls: OriginTls::from_roots(roots, &[] as &[&str]).unwrap(),
        configs: InterceptConfigs::new(Arc::new(LeafCache::new(gateway_ca.clone(), 100)), 100)
            .unwrap(),
        routes: vec![
            ("shop.test".into(), shop),
            ("pinned.test".into(), pinned),
            ("wrong.test".into(), wrong),
        ],
        connect_host: "shop.test".into(),
        events: tx,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(interceptor.clone().handle(tcp));
        }
    });
    World {
        gateway_ca: gateway_ca.paths().cert.clone(),
        origin_ca: origin_ca.paths().cert.clone(),
        _dir: dir,
        addr,
        events: rx,
    }
}

async fn curl(addr: SocketAddr, host: &str, cafile: &Path, extra: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-v",
        "--max-time",
        "10",
        "--resolve",
        &format!("{host}:{}:127.0.0.1", addr.port()),
        "--cacert",
    ])
    .arg(cafile)
    .args(extra)
    .arg(format!("https://{host}:{}/", addr.port()))
    .env_remove("CURL_CA_BUNDLE")
    .env_remove("SSL_CERT_FILE");
    cmd.output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn next_event(w: &mut World) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), w.events.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_a_rampart_issued_certificate_and_the_origin_body() {
    let mut w = world().await;
    let out = curl(w.addr, "shop.test", &w.gateway_ca, &["--http1.1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello origin");
    let verbose = text(&out.stderr);
    assert!(
        verbose.contains("issuer: ") && verbose.contains("Rampart Gateway CA"),
        "{verbose}"
    );
    assert!(
        matches!(next_event(&mut w).await, Seen::Decrypted { alpn: Some(ref p), .. } if p == b"http/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gets_the_alpn_protocol_the_origin_chose() {
    let mut w = world().await;
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &w.addr.to_string(),
            "-servername",
            "shop.test",
            "-alpn",
            "h2,http/1.1",
            "-CAfile",
        ])
        .arg(&w.gateway_ca)
        .args(["-verify_return_error", "-verify_hostname", "shop.test"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("ALPN protocol: h2"), "{shown}");
    assert!(shown.contains("Verification: OK"), "{shown}");
    assert!(
        matches!(next_event(&mut w).await, Seen::Decrypted { alpn: Some(ref p), .. } if p == b"h2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_decrypt_host_shows_the_origins_own_certificate() {
    let mut w = world().await;
    let out = curl(w.addr, "pinned.test", &w.origin_ca, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello origin");
    assert!(
        text(&out.stderr).contains("Test Origin CA"),
        "{}",
        text(&out.stderr)
    );
    match next_event(&mut w).await {
        Seen::Spliced { host, reason } => {
            assert_eq!(host, "pinned.test");
            assert_eq!(reason, "tls.do_not_decrypt pinned.test");
        }
        other => panic!("expected a splice, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_origin_is_blocked_with_an_explanation_never_passed_as_valid() {
    let mut w = world().await;
    let plain = curl(
        w.addr,
        "wrong.test",
        &w.gateway_ca,
        &["-w", "\n%{http_code}"],
    )
    .await;
    let body = text(&plain.stdout);
    assert!(body.ends_with("502"), "{body}");
    assert!(
        body.contains("The certificate presented for wrong.test is for"),
        "{body}"
    );
    assert!(body.contains("Event ID: ev-test-1"), "{body}");
    match next_event(&mut w).await {
        Seen::OriginRefused { host, failure } => {
            assert_eq!(host, "wrong.test");
            assert_eq!(failure.code(), "wrong_host");
        }
        other => panic!("expected an origin refusal, got {other:?}"),
    }
    let html = curl(
        w.addr,
        "wrong.test",
        &w.gateway_ca,
        &["-H", "Accept: text/html"],
    )
    .await;
    assert!(
        text(&html.stdout).starts_with("<!DOCTYPE html>"),
        "{}",
        text(&html.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trusting_only_the_origin_ca_is_recorded_as_a_pinned_client() {
    let mut w = world().await;
    let out = curl(w.addr, "shop.test", &w.origin_ca, &[]).await;
    assert_eq!(out.status.code(), Some(60), "{}", text(&out.stderr));
    match next_event(&mut w).await {
        Seen::PinnedClient { host, rejection } => {
            assert_eq!(host, "shop.test");
            assert_eq!(rejection, ClientRejection::Alert("UnknownCA".into()));
        }
        other => panic!("expected a pinned-client record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_sni_gets_a_leaf_mimicking_the_origin_names() {
    let mut w = world().await;
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &w.addr.to_string(),
            "-noservername",
            "-CAfile",
        ])
        .arg(&w.gateway_ca)
        .args(["-verify_return_error", "-verify_hostname", "shop.test"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("Verification: OK"),
        "{shown}{}",
        text(&out.stderr)
    );
    assert!(
        matches!(next_event(&mut w).await, Seen::Decrypted { ref host, .. } if host == "shop.test")
    );
}
