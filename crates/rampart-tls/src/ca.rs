//! The gateway CA: created on first use in the data directory, loaded with a permission
//! check on its key, or imported from an organisation's own CA / intermediate.
//!
//! Files: `ca.pem` holds the signing certificate first, then any certificates above it
//! (for an intermediate: its issuers, served with every leaf); `ca.key` holds its private
//! key in PKCS#8 PEM, mode 0600.
use crate::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// File name of the CA certificate (chain) inside the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the data directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Subject of a CA Rampart creates when none is given.
pub const DEFAULT_SUBJECT: &str = "CN=Rampart Gateway CA, O=Rampart";
/// Lifetime of a CA Rampart creates.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// Where the CA certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    /// `DIR/ca.pem` and `DIR/ca.key`.
    pub fn in_dir(dir: &Path) -> Self {
        CaPaths {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }

    /// Whether both files exist; an error when exactly one does.
    pub fn exists(&self) -> Result<bool, TlsError> {
        match (self.cert.exists(), self.key.exists()) {
            (true, true) => Ok(true),
            (false, false) => Ok(false),
            (true, false) => Err(TlsError::CaIncomplete {
                present: self.cert.clone(),
                missing: self.key.clone(),
            }),
            (false, true) => Err(TlsError::CaIncomplete {
                present: self.key.clone(),
                missing: self.cert.clone(),
            }),
        }
    }

    fn dir(&self) -> PathBuf {
        self.cert
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// Key algorithm of a CA Rampart creates. Leaves are always ECDSA P-256.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyType {
    /// ECDSA with P-256 and SHA-256: small and fast, understood by every current client.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256, for old clients that only accept RSA chains.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

/// How to create a new CA.
#[derive(Debug, Clone, Default)]
pub struct CaOptions {
    pub key_type: CaKeyType,
    /// `CN=..., O=...`; [`DEFAULT_SUBJECT`] when `None`.
    pub subject: Option<String>,
}

/// Facts about the CA certificate, for `rampart ca show` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaInfo {
    pub subject: String,
    pub issuer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER certificate, upper-case hex pairs joined by `:` (as OpenSSL prints).
    pub sha256_fingerprint: String,
    pub key_algorithm: String,
    /// Self-signed root (true) or an intermediate issued by another CA (false).
    pub self_signed: bool,
    /// Certificates in ca.pem (1 for a root; more when an intermediate brings its issuers).
    pub chain_len: usize,
}

impl fmt::Display for CaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fmt_time = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        writeln!(f, "subject:      {}", self.subject)?;
        writeln!(f, "issuer:       {}", self.issuer)?;
        writeln!(
            f,
            "kind:         {}",
            if self.self_signed {
                "self-signed root"
            } else {
                "intermediate"
            }
        )?;
        writeln!(f, "not before:   {}", fmt_time(self.not_before))?;
        writeln!(f, "not after:    {}", fmt_time(self.not_after))?;
        writeln!(f, "key type:     {}", self.key_algorithm)?;
        writeln!(f, "sha256:       {}", self.sha256_fingerprint)?;
        write!(f, "chain:        {} certificate(s)", self.chain_len)
    }
}

/// A loaded CA, ready to sign leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Signing certificate first, then the certificates above it.
    chain: Vec<CertificateDer<'static>>,
    info: CaInfo,
    paths: CaPaths,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("info", &self.info)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA, refusing a key file other users can access.
    pub fn load(paths: &CaPaths) -> Result<Self, TlsError> {
        if !paths.exists()? {
            return Err(TlsError::CaMissing {
                dir: paths.dir(),
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            });
        }
        check_key_permissions(&paths.key)?;
        let certs = read_certificates(&paths.cert)?;
        let key = read_key(&paths.key)?;
        Self::from_parts(paths, &paths.cert, certs, key)
    }

    /// Loads the CA, creating it first when neither file exists. Returns whether it was created.
    pub fn load_or_create(paths: &CaPaths, options: &CaOptions) -> Result<(Self, bool), TlsError> {
        match paths.exists() {
            Ok(true) => return Ok((Self::load(paths)?, false)),
            Ok(false) => {}
            // A key without a certificate: possibly another gateway sharing the data
            // directory between writing the two files; a real loss still errors below.
            Err(TlsError::CaIncomplete { .. }) if paths.key.exists() => {
                return Ok((Self::load_after_concurrent_create(paths)?, false))
            }
            Err(other) => return Err(other),
        }
        match Self::create(paths, options, false) {
            Ok(ca) => Ok((ca, true)),
            Err(TlsError::CaExists { .. }) => {
                Ok((Self::load_after_concurrent_create(paths)?, false))
            }
            Err(other) => Err(other),
        }
    }

    /// Another process won the race to create the CA: its certificate follows its key
    /// within milliseconds.
    fn load_after_concurrent_create(paths: &CaPaths) -> Result<Self, TlsError> {
        for _ in 0..50 {
            if paths.cert.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self::load(paths)
    }

    /// Creates a new self-signed CA and writes both files (the key with mode 0600).
    pub fn create(paths: &CaPaths, options: &CaOptions, force: bool) -> Result<Self, TlsError> {
        if !force && (paths.cert.exists() || paths.key.exists()) {
            return Err(TlsError::CaExists {
                cert: paths.cert.clone(),
            });
        }
        let key = match options.key_type {
            CaKeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            CaKeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(|source| TlsError::Generate {
            what: "the CA key",
            source,
        })?;
        let subject = options.subject.as_deref().unwrap_or(DEFAULT_SUBJECT);
        let mut params = CertificateParams::default();
        params.distinguished_name = parse_subject(subject)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "the CA certificate",
                source,
            })?;
        create_private_dir(&paths.dir())?;
        store(
            paths,
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            force,
        )?;
        Self::from_parts(paths, &paths.cert, vec![cert.der().clone()], key)
    }

    /// Imports an organisation's CA or intermediate (`cert_file` may also carry the
    /// certificates above it) and writes it to `paths` (the key with mode 0600).
    pub fn import(
        paths: &CaPaths,
        cert_file: &Path,
        key_file: &Path,
        force: bool,
    ) -> Result<Self, TlsError> {
        if !force && (paths.cert.exists() || paths.key.exists()) {
            return Err(TlsError::CaExists {
                cert: paths.cert.clone(),
            });
        }
        let certs = read_certificates(cert_file)?;
        let key = read_key(key_file)?;
        let certs = order_chain(cert_file, key_file, certs, &key)?;
        let ca = Self::from_parts(paths, cert_file, certs, key)?;
        create_private_dir(&paths.dir())?;
        store(
            paths,
            ca.chain_pem().as_bytes(),
            ca.issuer.key().serialize_pem().as_bytes(),
            force,
        )?;
        Ok(ca)
    }

    fn from_parts(
        paths: &CaPaths,
        cert_origin: &Path,
        certs: Vec<CertificateDer<'static>>,
        key: KeyPair,
    ) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::InvalidCertificate {
            path: cert_origin.to_path_buf(),
            reason,
        };
        let signing = certs
            .first()
            .ok_or_else(|| TlsError::NoCertificate {
                path: cert_origin.to_path_buf(),
            })?
            .clone();
        let (_, x509) = X509Certificate::from_der(&signing)
            .map_err(|e| invalid(format!("cannot parse the certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::KeyMismatch {
                cert: cert_origin.to_path_buf(),
                key: paths.key.clone(),
            });
        }
        check_can_sign(&x509).map_err(invalid)?;
        let info = describe(&x509, &signing, certs.len(), key.algorithm());
        if info.not_after < OffsetDateTime::now_utc() {
            return Err(invalid(format!(
                "the CA certificate expired on {}; create or import a new CA",
                info.not_after
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&signing, key)
            .map_err(|e| invalid(format!("cannot use the certificate as an issuer: {e}")))?;
        Ok(CertificateAuthority {
            issuer,
            chain: certs,
            info,
            paths: paths.clone(),
        })
    }

    /// Facts about the signing certificate.
    pub fn info(&self) -> &CaInfo {
        &self.info
    }

    /// Where the CA was loaded from / written to.
    pub fn paths(&self) -> &CaPaths {
        &self.paths
    }

    /// The signing certificate followed by the certificates above it (served after each leaf).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The certificate that signs leaves.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The whole of ca.pem as PEM.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| der_to_pem(c)).collect()
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// PEM-encodes one DER certificate (64-column base64, as OpenSSL writes it).
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// SHA-256 fingerprint as `AB:CD:...`.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<KeyPair, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TlsError::io(path, e))?;
    let der =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: path.to_path_buf(),
            },
            other => TlsError::BadPem {
                path: path.to_path_buf(),
                reason: format!("invalid PEM private key: {other}"),
            },
        })?;
    KeyPair::try_from(&der).map_err(|e| TlsError::BadPem {
        path: path.to_path_buf(),
        reason: format!(
            "unsupported private key ({e}); use an ECDSA P-256/P-384 or RSA key, unencrypted"
        ),
    })
}

/// Refuses a key file that group or others can access (RFC-free, but the whole point:
/// whoever reads this key can impersonate every site to every client).
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| TlsError::io(path, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Puts the certificate matching `key` first, keeping the others in their given order.
fn order_chain(
    cert_file: &Path,
    key_file: &Path,
    certs: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let position = certs.iter().position(|c| {
        X509Certificate::from_der(c)
            .map(|(_, x)| x.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
            .unwrap_or(false)
    });
    match position {
        Some(i) => {
            let mut certs = certs;
            let signing = certs.remove(i);
            certs.insert(0, signing);
            Ok(certs)
        }
        None => Err(TlsError::KeyMismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
        }),
    }
}

fn check_can_sign(x509: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = x509
        .basic_constraints()
        .map_err(|e| format!("unreadable basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(
            "not a CA certificate (basicConstraints CA:TRUE is missing): a server \
                    certificate cannot sign leaves; use a CA or intermediate CA certificate"
                .to_string(),
        );
    }
    if let Some(ku) = x509
        .key_usage()
        .map_err(|e| format!("unreadable keyUsage: {e}"))?
    {
        if !ku.value.key_cert_sign() {
            return Err(
                "keyUsage does not include keyCertSign, so clients would reject the leaves it signs"
                    .to_string(),
            );
        }
    }
    Ok(())
}

fn describe(
    x509: &X509Certificate<'_>,
    der: &[u8],
    chain_len: usize,
    alg: &'static rcgen::SignatureAlgorithm,
) -> CaInfo {
    let key_algorithm = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256".to_string()
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384".to_string()
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        let bits = match x509.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        format!("RSA {bits}")
    } else {
        format!("{alg:?}")
    };
    CaInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        sha256_fingerprint: sha256_fingerprint(der),
        key_algorithm,
        self_signed: x509.subject().as_raw() == x509.issuer().as_raw(),
        chain_len,
    }
}

/// Parses `CN=..., O=..., OU=..., C=..., ST=..., L=...` (or OpenSSL's `/CN=.../O=...`);
/// a value without `=` is taken as the common name.
pub fn parse_subject(input: &str) -> Result<DistinguishedName, TlsError> {
    let err = |reason: &str| TlsError::InvalidSubject {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let mut dn = DistinguishedName::new();
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(err("empty subject"));
    }
    if !trimmed.contains('=') {
        dn.push(DnType::CommonName, trimmed);
        return Ok(dn);
    }
    let parts: Vec<&str> = match trimmed.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => trimmed.split(',').collect(),
    };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(&format!("`{}` is not KEY=VALUE", part.trim())))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(err(&format!("empty value for {}", key.trim())));
        }
        let ty = match key.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            other => {
                return Err(err(&format!(
                    "unknown attribute `{other}` (use CN, O, OU, C, ST or L)"
                )))
            }
        };
        if matches!(ty, DnType::CountryName) && value.len() != 2 {
            return Err(err("C must be a two-letter country code"));
        }
        dn.push(ty, value);
    }
    if dn.get(&DnType::CommonName).is_none() {
        return Err(err("a CN is required"));
    }
    Ok(dn)
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive (top bit clear) and exactly 16 bytes long (non-zero first byte), RFC 5280 §4.1.2.2.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| TlsError::io(dir, e))
}

/// Writes the CA files. Without `force`, the key is placed first with create-if-absent
/// semantics, so of several processes creating a CA in one directory exactly one wins and
/// a certificate is never paired with another process's key.
fn store(paths: &CaPaths, cert_pem: &[u8], key_pem: &[u8], force: bool) -> Result<(), TlsError> {
    let placement = if force {
        Placement::Replace
    } else {
        Placement::CreateNew
    };
    match place_file(&paths.key, key_pem, 0o600, placement) {
        Err(TlsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(TlsError::CaExists {
                cert: paths.cert.clone(),
            })
        }
        other => other?,
    }
    place_file(&paths.cert, cert_pem, 0o644, placement)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Replace,
    CreateNew,
}

/// Writes through a temporary file created with `mode` and moves it into place, so a
/// key is never briefly world-readable and a crash never leaves half a file.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    place_file(path, contents, mode, Placement::Replace)
}

fn place_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    placement: Placement,
) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        }
        match placement {
            Placement::Replace => std::fs::rename(&tmp, path),
            // link(2) fails with EEXIST instead of replacing: an atomic create-if-absent.
            Placement::CreateNew => std::fs::hard_link(&tmp, path),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| TlsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_ca_is_p256_with_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("data"));
        let (ca, created) =
            CertificateAuthority::load_or_create(&paths, &CaOptions::default()).unwrap();
        assert!(created);
        assert_eq!(ca.info().key_algorithm, "ECDSA P-256");
        assert!(ca.info().self_signed);
        assert_eq!(mode(&paths.key), 0o600);
        let (again, created) =
            CertificateAuthority::load_or_create(&paths, &CaOptions::default()).unwrap();
        assert!(!created);
        assert_eq!(
            again.info().sha256_fingerprint,
            ca.info().sha256_fingerprint
        );
    }

    #[test]
    fn rsa_ca_reports_its_key_size() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let options = CaOptions {
            key_type: CaKeyType::Rsa2048,
            subject: Some("CN=Corp RSA CA, O=Corp, C=JP".into()),
        };
        let ca = CertificateAuthority::create(&paths, &options, false).unwrap();
        assert_eq!(ca.info().key_algorithm, "RSA 2048");
        assert!(
            ca.info().subject.contains("CN=Corp RSA CA"),
            "{}",
            ca.info().subject
        );
        let loaded = CertificateAuthority::load(&paths).unwrap();
        assert_eq!(loaded.info().key_algorithm, "RSA 2048");
    }

    #[test]
    fn group_readable_key_is_refused_with_chmod_advice() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        CertificateAuthority::create(&paths, &CaOptions::default(), false).unwrap();
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = CertificateAuthority::load(&paths).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TlsError::KeyPermissions { mode: 0o640, .. }),
            "{msg}"
        );
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let first = CertificateAuthority::create(&paths, &CaOptions::default(), false).unwrap();
        assert!(matches!(
            CertificateAuthority::create(&paths, &CaOptions::default(), false),
            Err(TlsError::CaExists { .. })
        ));
        let second = CertificateAuthority::create(&paths, &CaOptions::default(), true).unwrap();
        assert_ne!(
            first.info().sha256_fingerprint,
            second.info().sha256_fingerprint
        );
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("shared"));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let paths = paths.clone();
                std::thread::spawn(move || {
                    CertificateAuthority::load_or_create(&paths, &CaOptions::default())
                        .unwrap()
                        .0
                        .info()
                        .sha256_fingerprint
                        .clone()
                })
            })
            .collect();
        let prints: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(prints.iter().all(|p| p == &prints[0]), "{prints:?}");
        let leftovers = std::fs::read_dir(paths.cert.parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 2, "only ca.pem and ca.key remain");
    }

    #[test]
    fn missing_and_half_missing_ca_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let msg = CertificateAuthority::load(&paths).unwrap_err().to_string();
        assert!(msg.contains("rampart ca init"), "{msg}");
        std::fs::write(&paths.cert, "x").unwrap();
        assert!(matches!(
            CertificateAuthority::load(&paths),
            Err(TlsError::CaIncomplete { .. })
        ));
    }

    #[test]
    fn imported_intermediate_is_placed_first_and_keeps_its_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let root = CertificateAuthority::create(
            &CaPaths::in_dir(&dir.path().join("root")),
            &CaOptions {
                subject: Some("CN=Corp Root".into()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        // An intermediate signed by the corporate root, written root-first to test ordering.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = parse_subject("CN=Corp Gateway Intermediate").unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let inter = params.signed_by(&key, root.issuer()).unwrap();
        let cert_file = dir.path().join("bundle.pem");
        std::fs::write(&cert_file, format!("{}{}", root.chain_pem(), inter.pem())).unwrap();
        let key_file = dir.path().join("inter.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("data"));
        let ca = CertificateAuthority::import(&paths, &cert_file, &key_file, false).unwrap();
        assert!(!ca.info().self_signed);
        assert_eq!(ca.chain().len(), 2);
        assert_eq!(ca.chain()[0], *inter.der());
        assert_eq!(mode(&paths.key), 0o600);
        let loaded = CertificateAuthority::load(&paths).unwrap();
        assert_eq!(loaded.chain().len(), 2);
    }

    #[test]
    fn import_of_a_server_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server.key");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let err = CertificateAuthority::import(
            &CaPaths::in_dir(&dir.path().join("d")),
            &cert_file,
            &key_file,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn import_with_the_wrong_key_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert_file = dir.path().join("c.pem");
        let key_file = dir.path().join("other.key");
        std::fs::write(&cert_file, ca.chain_pem()).unwrap();
        std::fs::write(&key_file, other.serialize_pem()).unwrap();
        let err = CertificateAuthority::import(
            &CaPaths::in_dir(&dir.path().join("d")),
            &cert_file,
            &key_file,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn subjects_parse_in_both_notations_and_reject_unknown_keys() {
        assert!(parse_subject("CN=A, O=B, OU=C, C=JP").is_ok());
        assert!(parse_subject("/CN=A/O=B").is_ok());
        assert!(parse_subject("Just A Name").is_ok());
        let msg = parse_subject("CN=A, X=1").unwrap_err().to_string();
        assert!(msg.contains("unknown attribute `X`"), "{msg}");
        assert!(parse_subject("O=NoCommonName").is_err());
        assert!(parse_subject("CN=A, C=Japan").is_err());
    }

    #[test]
    fn pem_output_matches_the_pem_parser() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(ca.chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed, ca.chain().to_vec());
        for n in 0..5 {
            let data: Vec<u8> = (0..n).collect();
            let pem = der_to_pem(&data);
            assert!(pem.contains("BEGIN CERTIFICATE"));
        }
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_and_differ() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
