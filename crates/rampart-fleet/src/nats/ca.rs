//! The CA material a revision carries: the certificate and the fingerprint of
//! the key a gateway must hold (the key itself never enters NATS; see the
//! module documentation of [`crate::nats`]).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::nats::NatsError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    /// The CA certificate (chain), PEM.
    pub certificate_pem: String,
    /// `sha256:<hex>` of the CA's public key bits: the key file distributed to
    /// gateways must hold the matching private key.
    pub key_fingerprint: String,
}

impl CaMaterial {
    /// Material for the CA whose certificate and private key are given (the
    /// server side): refuses a key that does not belong to the certificate.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<CaMaterial, NatsError> {
        let material = CaMaterial {
            certificate_pem: certificate_pem.to_string(),
            key_fingerprint: fingerprint(&certificate_public_key(certificate_pem)?),
        };
        material.check_key(key_pem)?;
        Ok(material)
    }

    /// Check that `key_pem` (the gateway's CA key file) is the key this
    /// material names, and that the certificate agrees.
    pub fn check_key(&self, key_pem: &str) -> Result<(), NatsError> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| NatsError::Ca(format!("the CA key file is not a PEM private key: {e}")))?;
        let held = fingerprint(key.public_key_raw());
        if held != self.key_fingerprint {
            return Err(NatsError::Ca(format!(
                "the CA key file holds key {held}, but the fleet's CA uses {}: copy the fleet's CA key file to this gateway",
                self.key_fingerprint
            )));
        }
        let in_certificate = fingerprint(&certificate_public_key(&self.certificate_pem)?);
        if in_certificate != self.key_fingerprint {
            return Err(NatsError::Ca(format!(
                "the CA certificate's key is {in_certificate}, not the announced {}",
                self.key_fingerprint
            )));
        }
        Ok(())
    }
}

fn fingerprint(public_key: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(public_key)))
}

/// The public key bits of the first certificate of a PEM chain.
fn certificate_public_key(certificate_pem: &str) -> Result<Vec<u8>, NatsError> {
    let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
        .map_err(|e| NatsError::Ca(format!("the CA certificate is not PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| NatsError::Ca(format!("the CA certificate does not parse: {e}")))?;
    Ok(cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn matching_key_is_accepted_and_another_key_is_refused() {
        let (cert, key) = ca();
        let material = CaMaterial::from_pem(&cert, &key).unwrap();
        assert!(material.key_fingerprint.starts_with("sha256:"));
        material.check_key(&key).unwrap();
        let (_, other_key) = ca();
        let err = material.check_key(&other_key).unwrap_err().to_string();
        assert!(err.contains("copy the fleet's CA key file"), "{err}");
        assert!(CaMaterial::from_pem(&cert, &other_key).is_err());
    }
}
