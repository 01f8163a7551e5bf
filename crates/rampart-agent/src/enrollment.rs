//! The agent's enrollment state in its data dir: the device key (mode 0600, generated
//! here and never sent anywhere), the device certificate, the device CA that also signs
//! the gateway's tunnel certificate, and `enrollment.json` (device id, user, gateway).
//! When these exist the agent steers through the mTLS tunnel.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// What the server told the agent at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub device_id: String,
    pub user: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `host:port` of the gateway's agent tunnel.
    pub gateway: String,
    /// The server enrolled with (for status and re-enrollment).
    pub server: String,
}

/// A freshly generated device key and the certificate request for it.
pub struct KeyRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Enrollment {
        path: path.to_path_buf(),
        message: source.to_string(),
    }
}

/// Generates an ECDSA P-256 key and a CSR for it. The server ignores the CSR's names
/// and writes the identity from the token into the certificate.
pub fn new_key_request() -> Result<KeyRequest, AgentError> {
    let fail = |e: rcgen::Error| AgentError::Enrollment {
        path: PathBuf::from("<new key>"),
        message: e.to_string(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(fail)?
        .pem()
        .map_err(fail)?;
    Ok(KeyRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
}

impl Enrollment {
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join("device.key")
    }
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        data_dir.join("device.pem")
    }
    pub fn ca_path(data_dir: &Path) -> PathBuf {
        data_dir.join("gateway-ca.pem")
    }
    pub fn state_path(data_dir: &Path) -> PathBuf {
        data_dir.join("enrollment.json")
    }

    /// The enrollment in `data_dir`, or `None` when the agent was never enrolled.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = Self::state_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::Enrollment {
                path,
                message: format!("corrupt enrollment state ({e}); enroll again"),
            })
    }

    /// Stores key, certificate, CA and state. The key file is created with mode 0600.
    pub fn store(
        &self,
        data_dir: &Path,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), AgentError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AgentError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        write(&Self::key_path(data_dir), key_pem.as_bytes(), 0o600)?;
        write(&Self::cert_path(data_dir), cert_pem.as_bytes(), 0o644)?;
        write(&Self::ca_path(data_dir), ca_pem.as_bytes(), 0o644)?;
        let state = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Enrollment {
            path: Self::state_path(data_dir),
            message: e.to_string(),
        })?;
        write(&Self::state_path(data_dir), &state, 0o644)
    }

    /// Reads the key (refusing one others can read), certificate and CA.
    pub fn credentials(data_dir: &Path) -> Result<(String, String, String), AgentError> {
        let key_path = Self::key_path(data_dir);
        let mode = std::fs::metadata(&key_path)
            .map_err(io_err(&key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AgentError::Enrollment {
                path: key_path,
                message: format!(
                    "device key is readable by others (mode {:o}); run chmod 600",
                    mode & 0o777
                ),
            });
        }
        let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(io_err(&path));
        Ok((
            read(key_path.clone())?,
            read(Self::cert_path(data_dir))?,
            read(Self::ca_path(data_dir))?,
        ))
    }
}

/// Temp file with the final mode, then rename: the key never exists with wider
/// permissions, and a crash never leaves half a certificate.
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_enrollment_loads_back_with_a_private_key() {
        let dir = std::env::temp_dir().join(format!("rampart-enroll-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Enrollment::load(&dir).unwrap(), None);
        let request = new_key_request().unwrap();
        assert!(request.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        let enrollment = Enrollment {
            device_id: "dev-1".into(),
            user: Some("alice".into()),
            groups: vec![],
            gateway: "127.0.0.1:3129".into(),
            server: "http://127.0.0.1:8080".into(),
        };
        enrollment
            .store(&dir, &request.key_pem, "CERT", "CA")
            .unwrap();
        assert_eq!(Enrollment::load(&dir).unwrap(), Some(enrollment));
        let mode = std::fs::metadata(Enrollment::key_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (key, cert, ca) = Enrollment::credentials(&dir).unwrap();
        assert_eq!(
            (key.as_str(), cert.as_str(), ca.as_str()),
            (request.key_pem.as_str(), "CERT", "CA")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
