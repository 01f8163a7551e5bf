//! The client-facing `rustls::ServerConfig` of an intercepted connection.
//!
//! The gateway reads the ClientHello with `tokio_rustls::LazyConfigAcceptor`, connects to
//! the origin offering the client's ALPN list, then asks [`InterceptConfigs::server_config`]
//! for a config that presents the minted leaf and offers exactly the protocol the origin
//! chose. Configs share one session cache and one ticketer, so TLS resumption works across
//! connections even though configs are built per (names, ALPN).
use crate::leaf::LeafNames;
use crate::leaf_cache::LeafCache;
use crate::TlsError;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use std::sync::Arc;

/// Sessions remembered for TLS 1.2 resumption (tickets cover TLS 1.3).
const SESSION_CACHE_SIZE: usize = 16 * 1024;

/// Presents one minted leaf whatever the client asks for.
#[derive(Debug)]
pub struct MintedCertResolver(pub Arc<CertifiedKey>);

impl ResolvesServerCert for MintedCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Leaf names, ALPN list, and whether the client's cipher suite order decides.
type ConfigKey = (LeafNames, Vec<Vec<u8>>, bool);

/// Builds (and caches) server configs per [`ConfigKey`].
pub struct InterceptConfigs {
    leaves: Arc<LeafCache>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    configs: moka::future::Cache<ConfigKey, Arc<ServerConfig>>,
}

impl std::fmt::Debug for InterceptConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptConfigs")
            .field("leaves", &self.leaves)
            .field("configs", &self.configs.entry_count())
            .finish_non_exhaustive()
    }
}

impl InterceptConfigs {
    /// Configs over `leaves`; at most as many cached configs as the leaf cache holds leaves.
    pub fn new(leaves: Arc<LeafCache>, capacity: u64) -> Result<Self, TlsError> {
        let ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| TlsError::Rustls {
                what: "creating the session ticketer",
                source,
            })?;
        Ok(InterceptConfigs {
            leaves,
            provider: crate::intercept_provider(),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            ticketer,
            configs: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(crate::leaf_cache::LEAF_CACHE_TTL)
                .build(),
        })
    }

    /// The leaf cache behind these configs.
    pub fn leaves(&self) -> &Arc<LeafCache> {
        &self.leaves
    }

    /// A server config presenting the leaf for `names` and offering `alpn` (pass the single
    /// protocol the origin selected, or nothing when it selected none).
    pub async fn server_config(
        &self,
        names: &LeafNames,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_for(names, alpn, false).await
    }

    /// As [`Self::server_config`], for a client whose cipher suite list was seen:
    /// with `client_prefers_chacha` (see [`crate::prefers_chacha`]) the client's order
    /// decides, otherwise Rampart's (AES-128-GCM first, [`crate::intercept_provider`]).
    pub async fn server_config_for(
        &self,
        names: &LeafNames,
        alpn: &[Vec<u8>],
        client_prefers_chacha: bool,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let key = (names.clone(), alpn.to_vec(), client_prefers_chacha);
        self.configs
            .try_get_with(key, async {
                let leaf = self.leaves.get(names).await?;
                let mut config = self.build(leaf, alpn)?;
                config.ignore_client_order = !client_prefers_chacha;
                Ok::<_, TlsError>(Arc::new(config))
            })
            .await
            .map_err(TlsError::Shared)
    }

    /// A server config for an already-resolved leaf (not cached).
    pub fn build(
        &self,
        leaf: Arc<CertifiedKey>,
        alpn: &[Vec<u8>],
    ) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "building the client-facing TLS config",
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(MintedCertResolver(leaf)));
        config.alpn_protocols = alpn.to_vec();
        config.session_storage = self.sessions.clone();
        config.ticketer = self.ticketer.clone();
        // The gateway never needs early data from clients; replaying requests is unsafe.
        config.max_early_data_size = 0;
        Ok(config)
    }
}

/// A convenience for tests and simple servers: a `ServerConnection` for a leaf.
pub fn server_connection(config: Arc<ServerConfig>) -> Result<ServerConnection, TlsError> {
    ServerConnection::new(config).map_err(|source| TlsError::Rustls {
        what: "starting a TLS server connection",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CaPaths, CertificateAuthority};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn client_trusting_the_ca_completes_a_handshake_with_negotiated_alpn() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(
            CertificateAuthority::create(
                &CaPaths::in_dir(dir.path()),
                &CaOptions::default(),
                false,
            )
            .unwrap(),
        );
        let configs = InterceptConfigs::new(Arc::new(LeafCache::new(ca.clone(), 10)), 10).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // As the gateway will: read the ClientHello lazily, then choose the config.
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                    .await
                    .unwrap();
            let sni = start.client_hello().server_name().unwrap().to_string();
            let config = configs
                .server_config(&LeafNames::for_host(&sni).unwrap(), &[b"h2".to_vec()])
                .await
                .unwrap();
            let mut tls = start.into_stream(config).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("shop.example").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut body = Vec::new();
        tls.read_to_end(&mut body).await.unwrap();
        assert_eq!(body, b"hello");
        server.await.unwrap();
    }
}
