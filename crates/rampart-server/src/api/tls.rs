//! HTTPS on the API listener (`[api] tls`, `tls_cert`, `tls_key`, `tls_names`).
//!
//! - `tls_cert` + `tls_key`: the operator's certificate (PEM chain, leaf first) and key.
//! - Otherwise, with `tls = "on"`, or `"auto"` (the default) on any address but
//!   127.0.0.1 and ::1: a certificate minted from Rampart's CA (the `[tls]` gateway CA,
//!   the one `rampart ca show` prints) for the listen address and `tls_names`, kept in
//!   the data dir (`api-tls.pem`, `api-tls.key` mode 0600, `api-tls.json`) and reused
//!   across restarts while its names and CA are unchanged and it has more than
//!   [`RENEW_BEFORE`] left; a running server renews it in place.
//! - `tls = "off"`: plain HTTP, wherever it listens.
//!
//! Plain HTTP stays the default on 127.0.0.1/::1 only: another 127.0.0.0/8 address
//! (`127.0.0.2`) is treated as beyond loopback, the simple rule being "the two
//! addresses every client means by localhost".

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rampart_tls::ca::{CaPaths, CertificateAuthority};
use rampart_tls::leaf::LeafNames;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;

/// A minted certificate with less than this left is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);
/// How often a running server checks its minted certificate.
const RENEW_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

pub const CERT_FILE: &str = "api-tls.pem";
pub const KEY_FILE: &str = "api-tls.key";
pub const META_FILE: &str = "api-tls.json";

/// `[api] tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain HTTP.
    Off,
    /// HTTPS, with a minted certificate when `tls_cert` is not set.
    On,
    /// HTTPS unless the API listens on 127.0.0.1 or ::1.
    #[default]
    Auto,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("[api] tls_cert and tls_key go together: set both or neither")]
    HalfConfigured,
    #[error("[api] tls = \"off\" but tls_cert is set: remove one of them")]
    OffWithCertificate,
    #[error("[api] tls_cert {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("[api] tls_key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("[api] tls_names: {0}")]
    Names(String),
    #[error("the API certificate needs Rampart's CA ({0}); run `rampart ca init` or set [api] tls_cert/tls_key")]
    Ca(rampart_tls::TlsError),
    #[error("minting the API certificate: {0}")]
    Mint(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `ip` is one of the two addresses the API serves plain HTTP on by default.
pub fn is_plain_loopback(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// Whether the API listener serves HTTPS under `api`.
pub fn enabled(api: &ApiConfig) -> bool {
    match api.tls {
        TlsMode::Off => false,
        TlsMode::On => true,
        TlsMode::Auto => api.tls_cert.is_some() || !is_plain_loopback(api.listen.ip()),
    }
}

/// Where the API's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `tls_cert`/`tls_key`.
    Files { cert: PathBuf },
    /// Minted from Rampart's CA; `ca_sha256` is what agents pin (`--ca-sha256`).
    Minted {
        ca_sha256: String,
        names: Vec<String>,
    },
}

/// The API's TLS: a rustls server configuration whose certificate a minted source
/// renews in place.
pub struct ApiTls {
    pub config: Arc<rustls::ServerConfig>,
    pub source: CertSource,
    renewal: Option<Renewal>,
}

struct Renewal {
    resolver: Arc<SwappableCert>,
    ca_paths: CaPaths,
    data_dir: PathBuf,
    names: Vec<String>,
}

/// Serves whichever certificate is current.
#[derive(Debug)]
struct SwappableCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// What `api-tls.json` records about the minted certificate beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MintedMeta {
    names: Vec<String>,
    ca_sha256: String,
    /// Unix seconds.
    not_after: i64,
}

impl ApiTls {
    /// The TLS of the API under `api`, or `None` for plain HTTP. `ca_paths` is where
    /// Rampart's CA lives (it exists by now: the gateway loaded or created it).
    pub fn prepare(
        api: &ApiConfig,
        data_dir: &Path,
        ca_paths: &CaPaths,
    ) -> Result<Option<ApiTls>, ApiTlsError> {
        match (&api.tls_cert, &api.tls_key) {
            (Some(_), None) | (None, Some(_)) => return Err(ApiTlsError::HalfConfigured),
            (Some(_), Some(_)) if api.tls == TlsMode::Off => {
                return Err(ApiTlsError::OffWithCertificate)
            }
            (Some(cert), Some(key)) => return from_files(cert, key).map(Some),
            (None, None) => {}
        }
        if !enabled(api) {
            return Ok(None);
        }
        let names = minted_names(api)?;
        let ca = CertificateAuthority::load(ca_paths).map_err(ApiTlsError::Ca)?;
        let ca_sha256 = ca.info().sha256_fingerprint.clone();
        let key = load_or_mint(&ca, data_dir, &names)?;
        let resolver = Arc::new(SwappableCert(ArcSwap::from_pointee(key)));
        Ok(Some(ApiTls {
            config: server_config(resolver.clone()),
            source: CertSource::Minted {
                ca_sha256,
                names: names.clone(),
            },
            renewal: Some(Renewal {
                resolver,
                ca_paths: ca_paths.clone(),
                data_dir: data_dir.to_path_buf(),
                names,
            }),
        }))
    }

    /// Renews a minted certificate before it expires, until `shutdown`.
    pub fn spawn_renewal(&mut self, shutdown: CancellationToken) {
        let Some(renewal) = self.renewal.take() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RENEW_CHECK_EVERY) => {}
                    _ = shutdown.cancelled() => return,
                }
                let r = (
                    renewal.ca_paths.clone(),
                    renewal.data_dir.clone(),
                    renewal.names.clone(),
                );
                let renewed = tokio::task::spawn_blocking(move || {
                    let ca = CertificateAuthority::load(&r.0).map_err(ApiTlsError::Ca)?;
                    load_or_mint(&ca, &r.1, &r.2)
                })
                .await;
                match renewed {
                    Ok(Ok(key)) => renewal.resolver.0.store(Arc::new(key)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "renewing the API certificate failed")
                    }
                    Err(e) => tracing::error!(error = %e, "renewing the API certificate failed"),
                }
            }
        });
    }
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    // The versions of the provider's safe defaults cannot fail with the built-in provider.
    let builder = rustls::ServerConfig::builder_with_provider(rampart_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ServerConfig::builder());
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    // The listener speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn from_files(cert: &Path, key: &Path) -> Result<ApiTls, ApiTlsError> {
    let cert_err = |message: String| ApiTlsError::Certificate {
        path: cert.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| ApiTlsError::Key {
        path: key.to_path_buf(),
        message: format!("{e} (an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key is needed)"),
    })?;
    let certified = CertifiedKey::from_der(chain, key_der, &rampart_tls::crypto_provider())
        .map_err(|e| ApiTlsError::Key {
            path: key.to_path_buf(),
            message: format!("does not go with {}: {e}", cert.display()),
        })?;
    let resolver = Arc::new(SwappableCert(ArcSwap::from_pointee(certified)));
    Ok(ApiTls {
        config: server_config(resolver),
        source: CertSource::Files {
            cert: cert.to_path_buf(),
        },
        renewal: None,
    })
}

/// The names of a minted certificate: the listen address (unless it is a wildcard
/// address) and `tls_names`; on a wildcard address without `tls_names`, the machine's
/// host name and the loopback names, so at least local clients can verify it.
fn minted_names(api: &ApiConfig) -> Result<Vec<String>, ApiTlsError> {
    let mut names: Vec<String> = Vec::new();
    let ip = api.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    // `tls = "on"` on loopback: clients say localhost as often as the address.
    if ip.is_loopback() {
        names.push("localhost".to_string());
    }
    names.extend(api.tls_names.iter().map(|n| n.trim().to_string()));
    if ip.is_unspecified() && api.tls_names.is_empty() {
        tracing::warn!(listen = %api.listen,
            "the API listens on a wildcard address and [api] tls_names is empty: its certificate names only this host's name and localhost; list the names clients use in tls_names");
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if LeafNames::for_host(host).is_ok() {
                names.push(host.to_string());
            }
        }
        names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    }
    let mut unique = Vec::new();
    for name in names {
        // Validate each name on its own, so the error names the bad one.
        LeafNames::for_host(&name).map_err(|e| ApiTlsError::Names(e.to_string()))?;
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    Ok(unique)
}

/// The stored certificate when it still fits, else a new one (stored before use).
fn load_or_mint(
    ca: &CertificateAuthority,
    data_dir: &Path,
    names: &[String],
) -> Result<CertifiedKey, ApiTlsError> {
    let ca_sha256 = &ca.info().sha256_fingerprint;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(key) = load_stored(data_dir, names, ca_sha256, now) {
        return Ok(key);
    }
    let leaf = ca
        .mint(&LeafNames::for_hosts(names).map_err(|e| ApiTlsError::Names(e.to_string()))?)
        .map_err(|e| ApiTlsError::Mint(e.to_string()))?;
    let validity = rampart_tls::leaf::LEAF_VALIDITY - rampart_tls::leaf::LEAF_BACKDATE;
    let meta = MintedMeta {
        names: names.to_vec(),
        ca_sha256: ca_sha256.clone(),
        not_after: (now + validity.whole_seconds()).min(ca.info().not_after.unix_timestamp()),
    };
    write_private(&data_dir.join(KEY_FILE), leaf.key_pem().as_bytes(), 0o600)?;
    write_private(
        &data_dir.join(CERT_FILE),
        leaf.chain_pem().as_bytes(),
        0o644,
    )?;
    let meta_text = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    write_private(&data_dir.join(META_FILE), &meta_text, 0o644)?;
    tracing::info!(names = ?names, ca_sha256 = %ca_sha256, "minted the API certificate from Rampart's CA");
    leaf.certified_key()
        .map_err(|e| ApiTlsError::Mint(e.to_string()))
}

/// The stored minted certificate, if its names and CA are the wanted ones and it has
/// more than [`RENEW_BEFORE`] left.
fn load_stored(
    data_dir: &Path,
    names: &[String],
    ca_sha256: &str,
    now: i64,
) -> Option<CertifiedKey> {
    let meta: MintedMeta =
        serde_json::from_slice(&std::fs::read(data_dir.join(META_FILE)).ok()?).ok()?;
    if meta.names != names
        || meta.ca_sha256 != ca_sha256
        || meta.not_after - now < RENEW_BEFORE.as_secs() as i64
    {
        return None;
    }
    let key_path = data_dir.join(KEY_FILE);
    // A key others can read is not reused: mint a new one (written 0600).
    rampart_tls::ca::check_key_permissions(&key_path).ok()?;
    let chain = CertificateDer::pem_file_iter(data_dir.join(CERT_FILE))
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(&key_path).ok()?;
    CertifiedKey::from_der(chain, key, &rampart_tls::crypto_provider()).ok()
}

/// Writes `path` through a new file created with `mode` and renamed over it.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ApiTlsError> {
    let io = |source| ApiTlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The URL scheme clients use for an API listener on `listen` under `api`.
pub fn scheme(api: &ApiConfig) -> &'static str {
    if enabled(api) {
        "https"
    } else {
        "http"
    }
}

/// For logs: `https://127.0.0.2:8443`.
pub fn base_url(api: &ApiConfig, addr: SocketAddr) -> String {
    format!("{}://{addr}", scheme(api))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(listen: &str, tls: TlsMode) -> ApiConfig {
        ApiConfig {
            listen: listen.parse().unwrap(),
            tls,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn auto_is_plain_on_localhost_only() {
        assert!(!enabled(&api("127.0.0.1:8080", TlsMode::Auto)));
        assert!(!enabled(&api("[::1]:8080", TlsMode::Auto)));
        assert!(enabled(&api("127.0.0.2:8080", TlsMode::Auto)));
        assert!(enabled(&api("0.0.0.0:8080", TlsMode::Auto)));
        assert!(enabled(&api("127.0.0.1:8080", TlsMode::On)));
        assert!(!enabled(&api("192.0.2.1:8080", TlsMode::Off)));
    }

    #[test]
    fn a_minted_certificate_is_reused_until_its_names_or_ca_change() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let (ca, _) = CertificateAuthority::load_or_create(&paths, &Default::default()).unwrap();
        let names = vec!["127.0.0.2".to_string(), "rampart.test".to_string()];
        let first = load_or_mint(&ca, dir.path(), &names).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let again = load_or_mint(&ca, dir.path(), &names).unwrap();
        assert_eq!(first.cert[0], again.cert[0], "reused across restarts");
        let other = load_or_mint(&ca, dir.path(), &names[..1]).unwrap();
        assert_ne!(first.cert[0], other.cert[0], "new names, new certificate");
    }

    #[test]
    fn half_a_certificate_or_off_with_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let mut cfg = api("127.0.0.1:8080", TlsMode::Auto);
        cfg.tls_cert = Some(dir.path().join("c.pem"));
        assert!(matches!(
            ApiTls::prepare(&cfg, dir.path(), &paths),
            Err(ApiTlsError::HalfConfigured)
        ));
        cfg.tls_key = Some(dir.path().join("k.pem"));
        cfg.tls = TlsMode::Off;
        assert!(matches!(
            ApiTls::prepare(&cfg, dir.path(), &paths),
            Err(ApiTlsError::OffWithCertificate)
        ));
    }
}
