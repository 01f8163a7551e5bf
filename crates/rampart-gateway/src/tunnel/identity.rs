//! Who is on the other end of an agent tunnel: read from the verified client
//! certificate's `rampart://device/…`, `rampart://user/…` and `rampart://group/…`
//! subject-alternative-name URIs (written by the server's device CA).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The authenticated identity of an agent connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
}

/// Why a (CA-verified) certificate does not identify a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("client certificate is not valid DER: {0}")]
    Parse(String),
    #[error("client certificate carries no rampart://device/ URI")]
    NoDevice,
}

impl DeviceIdentity {
    /// Parses the identity URIs of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let mut device = None;
        let mut user = None;
        let mut groups = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                let GeneralName::URI(uri) = name else {
                    continue;
                };
                let Some(rest) = uri.strip_prefix("rampart://") else {
                    continue;
                };
                match rest.split_once('/') {
                    Some(("device", id)) if !id.is_empty() => device = Some(id.to_string()),
                    Some(("user", u)) if !u.is_empty() => user = Some(u.to_string()),
                    Some(("group", g)) if !g.is_empty() => groups.push(g.to_string()),
                    _ => {}
                }
            }
        }
        Ok(DeviceIdentity {
            device: device.ok_or(IdentityError::NoDevice)?,
            user,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_comes_from_rampart_uris() {
        let der = cert_with(&[
            "rampart://device/dev-1",
            "rampart://user/alice",
            "rampart://group/eng",
            "https://unrelated.example/",
        ]);
        let id = DeviceIdentity::from_der(&der).unwrap();
        assert_eq!(id.device, "dev-1");
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.groups, vec!["eng".to_string()]);
    }

    #[test]
    fn certificate_without_device_uri_is_refused() {
        let der = cert_with(&["rampart://user/alice"]);
        assert_eq!(DeviceIdentity::from_der(&der), Err(IdentityError::NoDevice));
        assert!(matches!(
            DeviceIdentity::from_der(b"junk"),
            Err(IdentityError::Parse(_))
        ));
    }
}
