//! Pinning the server at enrollment: `rampart agent enroll --ca-sha256 FP` (the
//! fingerprint `rampart ca show` prints on the server) or `--ca-cert FILE` trusts only
//! that CA for the enrollment call, never the system roots. The one-time token and
//! the device's identity then travel only to a server that holds a certificate issued
//! by Rampart's CA for the name in the URL.
//!
//! With a fingerprint, the CA certificate comes from the chain the server presents
//! (a minted API certificate is served with its CA): it is used as the trust anchor only
//! when its SHA-256 is the pinned one, and the server's certificate must then verify
//! under it, names included. A pin equal to the server's own certificate's fingerprint
//! (a self-signed `[api] tls_cert`) accepts exactly that certificate.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// What the enrolling agent trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPin {
    /// SHA-256 of the CA certificate (DER), or of the server's own certificate.
    Sha256([u8; 32]),
    /// These CA certificates and nothing else.
    CaCerts(Vec<CertificateDer<'static>>),
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--ca-sha256 {0:?}: expected the 64 hex digits of a SHA-256 fingerprint (colons allowed), as `rampart ca show` prints it")]
    BadFingerprint(String),
    #[error("--ca-cert {path}: {message}")]
    BadCaFile { path: String, message: String },
    #[error("building the TLS client: {0}")]
    Tls(String),
}

/// Why the server's certificate was refused, with what it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// What was expected (`CA sha256 AB:CD:...` or `the CA in FILE`).
    pub expected: String,
    /// SHA-256 of every certificate the server presented, leaf first.
    pub presented: Vec<String>,
    /// The verifier's own reason when the chain held the pin but did not verify.
    pub reason: Option<String>,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate does not match the pinned {}",
            self.expected
        )?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        write!(
            f,
            "; it presented {}",
            if self.presented.is_empty() {
                "no certificate".to_string()
            } else {
                self.presented
                    .iter()
                    .map(|fp| format!("sha256 {fp}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

impl ServerPin {
    /// `AB:CD:...` (as `rampart ca show` prints), plain hex, optionally `sha256:` first.
    pub fn parse_sha256(text: &str) -> Result<ServerPin, PinError> {
        let bad = || PinError::BadFingerprint(text.to_string());
        let trimmed = text.trim();
        let hexits: String = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed)
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hexits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hexits.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(ServerPin::Sha256(out))
    }

    /// The CA certificates of a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<ServerPin, PinError> {
        let bad = |message: String| PinError::BadCaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE in the file".into()));
        }
        Ok(ServerPin::CaCerts(certs))
    }

    fn expected(&self) -> String {
        match self {
            ServerPin::Sha256(fp) => format!("CA sha256 {}", colon_hex(fp)),
            ServerPin::CaCerts(certs) => format!(
                "CA certificate (sha256 {})",
                certs
                    .iter()
                    .map(|c| colon_hex(&Sha256::digest(c).into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A TLS client that trusts only this pin, and where it reports a mismatch.
    pub fn client(&self) -> Result<PinnedClient, PinError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mismatch = Arc::new(Mutex::new(None));
        let verifier = Arc::new(PinnedVerifier {
            pin: self.clone(),
            provider: provider.clone(),
            mismatch: mismatch.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PinError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PinnedClient {
            config: Arc::new(config),
            mismatch,
        })
    }
}

/// A client configuration bound to a pin.
pub struct PinnedClient {
    pub config: Arc<rustls::ClientConfig>,
    mismatch: Arc<Mutex<Option<PinMismatch>>>,
}

impl PinnedClient {
    /// Why the last handshake refused the server, if the pin was the reason.
    pub fn mismatch(&self) -> Option<PinMismatch> {
        self.mismatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: ServerPin,
    provider: Arc<CryptoProvider>,
    mismatch: Arc<Mutex<Option<PinMismatch>>>,
}

impl PinnedVerifier {
    fn refuse(&self, presented: &[&CertificateDer<'_>], reason: Option<String>) -> rustls::Error {
        let mismatch = PinMismatch {
            expected: self.pin.expected(),
            presented: presented
                .iter()
                .map(|c| colon_hex(&Sha256::digest(c).into()))
                .collect(),
            reason,
        };
        let message = mismatch.to_string();
        *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(mismatch);
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            std::io::Error::other(message),
        ))))
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let anchors: Vec<CertificateDer<'static>> = match &self.pin {
            ServerPin::Sha256(fp) => {
                if Sha256::digest(end_entity).as_slice() == fp {
                    // The pin is this very certificate: nothing else could match it.
                    return Ok(ServerCertVerified::assertion());
                }
                intermediates
                    .iter()
                    .filter(|c| Sha256::digest(c).as_slice() == fp)
                    .map(|c| c.clone().into_owned())
                    .collect()
            }
            ServerPin::CaCerts(certs) => certs.clone(),
        };
        if anchors.is_empty() {
            return Err(self.refuse(&presented, None));
        }
        let mut roots = RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor)
                .map_err(|e| self.refuse(&presented, Some(e.to_string())))?;
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                // Not issued by the pinned CA.
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => self.refuse(&presented, None),
                // Issued by it, but wrong for this server (name, dates): say which.
                rustls::Error::InvalidCertificate(reason) => {
                    self.refuse(&presented, Some(reason.to_string()))
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `AB:CD:...`, as OpenSSL and `rampart ca show` print fingerprints.
fn colon_hex(bytes: &[u8; 32]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_prefix() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let want = ServerPin::Sha256([0xab; 32]);
        assert_eq!(ServerPin::parse_sha256(&hex).unwrap(), want);
        assert_eq!(ServerPin::parse_sha256(&colons).unwrap(), want);
        assert_eq!(
            ServerPin::parse_sha256(&format!("sha256:{hex}")).unwrap(),
            want
        );
        assert!(ServerPin::parse_sha256("abcd").is_err());
        assert!(ServerPin::parse_sha256(&"zz".repeat(32)).is_err());
    }
}
