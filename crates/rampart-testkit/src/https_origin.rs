//! An HTTPS origin in Rust speaking HTTP/2 and HTTP/1.1 (ALPN `h2`, `http/1.1`)
//! with a [`TestPki`] leaf, on a loopback port of its own runtime; the test
//! gives the handler. Upgrades (101) are served too.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::TestPki;

/// The running origin; stops with its runtime on drop.
pub struct HttpsOrigin {
    pub port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl HttpsOrigin {
    pub fn start<F, Fut>(pki: &TestPki, handler: F) -> HttpsOrigin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_pem)
            .expect("origin cert")
            .map(|c| c.expect("origin cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.key_pem).expect("origin key");
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("origin TLS config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("origin runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("origin bind");
        let port = listener.local_addr().expect("origin address").port();
        let handler = Arc::new(handler);
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let answer = handler(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        HttpsOrigin {
            port,
            _runtime: runtime,
        }
    }
}
