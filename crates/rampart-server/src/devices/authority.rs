//! The device CA: created in `<data dir>/devices/` on first start (key mode 0600). It
//! signs device certificates at enrollment and the agent tunnel's server certificate, so
//! one CA file is all an agent needs to trust the gateway and all the gateway needs to
//! verify agents.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{devices_dir, write_atomic, DeviceError};

/// Device certificates are renewed by re-enrolling; a year keeps lost laptops bounded.
const DEVICE_VALIDITY_DAYS: i64 = 365;
const CA_VALIDITY_DAYS: i64 = 3650;

/// Who a device certificate speaks for (also carried as `rampart://` SAN URIs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The device CA loaded from the data dir.
pub struct DeviceCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl DeviceCa {
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        devices_dir(data_dir).join("ca.pem")
    }

    pub fn key_path(data_dir: &Path) -> PathBuf {
        devices_dir(data_dir).join("ca.key")
    }

    /// True when a device CA was created in `data_dir`.
    pub fn exists(data_dir: &Path) -> bool {
        Self::cert_path(data_dir).exists() && Self::key_path(data_dir).exists()
    }

    /// Loads the CA, creating it when absent.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, DeviceError> {
        if Self::exists(data_dir) {
            return Self::open(data_dir);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Rampart device CA");
        dn.push(DnType::OrganizationName, "Rampart");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        // Key first: a certificate without its key must never look like a usable CA.
        write_atomic(
            &Self::key_path(data_dir),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&Self::cert_path(data_dir), cert.pem().as_bytes(), 0o644)?;
        Self::open(data_dir)
    }

    /// Loads an existing CA; refuses a key file others can read.
    pub fn open(data_dir: &Path) -> Result<Self, DeviceError> {
        let key_path = Self::key_path(data_dir);
        let cert_path = Self::cert_path(data_dir);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| DeviceError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let mode = std::fs::metadata(&key_path)
            .map_err(|source| DeviceError::Io {
                path: key_path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(DeviceError::Permissions {
                path: key_path,
                mode: mode & 0o777,
            });
        }
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| DeviceError::Corrupt {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let cert_pem = read(&cert_path)?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| DeviceError::Corrupt {
                path: cert_path.clone(),
                message: e.to_string(),
            })?;
        Ok(DeviceCa { cert_pem, issuer })
    }

    /// The CA certificate agents pin and the tunnel verifies against.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a device certificate for the key in `csr_pem`. Only the CSR's public key is
    /// used: names and extensions come from the enrollment grant, never from the device.
    pub fn sign_device(
        &self,
        csr_pem: &str,
        identity: &DeviceIdentity,
    ) -> Result<String, DeviceError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| DeviceError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            identity.user.as_deref().unwrap_or(&identity.device),
        );
        dn.push(DnType::OrganizationName, "Rampart device");
        dn.push(DnType::OrganizationalUnitName, identity.device.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = identity_uris(identity)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(DEVICE_VALIDITY_DAYS);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(cert_err)?;
        Ok(cert.pem())
    }

    /// A fresh server certificate for the agent tunnel listener, valid for `names`
    /// (DNS names or IP addresses).
    pub fn tunnel_server_cert(&self, names: &[String]) -> Result<IssuedCertificate, DeviceError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Rampart agent tunnel");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(cert_err)?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(DEVICE_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `rampart://device/<id>`, `rampart://user/<user>`, `rampart://group/<group>`: the
/// gateway reads identity from these SAN URIs (see `rampart_gateway::tunnel`).
fn identity_uris(identity: &DeviceIdentity) -> Result<Vec<SanType>, DeviceError> {
    let mut uris = vec![format!("rampart://device/{}", identity.device)];
    if let Some(user) = &identity.user {
        uris.push(format!("rampart://user/{user}"));
    }
    for group in &identity.groups {
        uris.push(format!("rampart://group/{group}"));
    }
    uris.into_iter()
        .map(|u| Ok(SanType::URI(u.try_into().map_err(cert_err)?)))
        .collect()
}

fn cert_err(e: rcgen::Error) -> DeviceError {
    DeviceError::Certificate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_signs_device_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DeviceCa::open_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(DeviceCa::key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DeviceCa::open_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());

        let device_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&device_key)
            .unwrap()
            .pem()
            .unwrap();
        let identity = DeviceIdentity {
            device: "d-1".into(),
            user: Some("alice".into()),
            groups: vec!["eng".into()],
        };
        let pem = ca.sign_device(&csr, &identity).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'static>| d)
            .unwrap();
        let text = String::from_utf8_lossy(der.as_ref()).to_string();
        assert!(text.contains("rampart://device/d-1"));
        assert!(text.contains("rampart://user/alice"));
        assert!(text.contains("rampart://group/eng"));
    }

    #[test]
    fn garbage_csr_is_refused_with_a_csr_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DeviceCa::open_or_create(dir.path()).unwrap();
        let identity = DeviceIdentity {
            device: "d".into(),
            user: None,
            groups: vec![],
        };
        assert!(matches!(
            ca.sign_device("not a csr", &identity),
            Err(DeviceError::Csr(_))
        ));
    }
}
