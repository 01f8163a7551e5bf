//! Enrollment: redeem a token, sign the device's key, record the device.

use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{
    now_unix, rfc3339, DeviceCa, DeviceError, DeviceIdentity, DeviceRecord, Inventory, TokenStore,
};

/// `POST /api/v1/enroll` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 request in PEM; only its public key is used.
    pub csr: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub steering_mode: String,
}

/// `POST /api/v1/enroll` answer: everything the agent stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// The device certificate (PEM).
    pub certificate: String,
    /// The device CA (PEM): the agent verifies the gateway's tunnel certificate with it.
    pub ca: String,
    /// `host:port` of the gateway's agent tunnel.
    pub gateway: String,
}

/// The device CA, tokens and inventory of one data dir.
pub struct DeviceRegistry {
    ca: DeviceCa,
    tokens: TokenStore,
    inventory: Inventory,
    gateway: String,
    /// Tells the tunnel listener to check its open connections now (an API revocation).
    revocations: Arc<tokio::sync::Notify>,
    /// The devices with a tunnel open, as the listener last listed them (every
    /// couple of seconds while any is open), and when.
    connected: std::sync::Mutex<(Vec<String>, Option<std::time::Instant>)>,
}

/// How long the listener's last list of open tunnels counts: it lists them every 2 s
/// while one is open and not at all once none is.
const CONNECTED_FRESH: std::time::Duration = std::time::Duration::from_secs(6);

impl DeviceRegistry {
    /// Opens (creating the CA if needed) the registry of `data_dir`; `gateway` is the
    /// tunnel address enrolled agents are told to use.
    pub fn open(data_dir: &Path, gateway: String) -> Result<Self, DeviceError> {
        Self::open_with_seen_interval(
            data_dir,
            gateway,
            super::inventory::DEFAULT_LAST_SEEN_INTERVAL,
        )
    }

    /// As [`DeviceRegistry::open`], writing a device's `last_seen` at most every
    /// `seen_interval` (`[tunnel] last_seen_interval`).
    pub fn open_with_seen_interval(
        data_dir: &Path,
        gateway: String,
        seen_interval: std::time::Duration,
    ) -> Result<Self, DeviceError> {
        Ok(DeviceRegistry {
            ca: DeviceCa::open_or_create(data_dir)?,
            tokens: TokenStore::new(data_dir),
            inventory: Inventory::new(data_dir).with_seen_interval(seen_interval),
            gateway,
            revocations: Arc::new(tokio::sync::Notify::new()),
            connected: std::sync::Mutex::new((Vec::new(), None)),
        })
    }

    /// Devices with an agent tunnel open now (the console's "online").
    pub fn connected(&self) -> Vec<String> {
        let guard = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        match guard.1 {
            Some(at) if at.elapsed() < CONNECTED_FRESH => guard.0.clone(),
            _ => Vec::new(),
        }
    }

    /// The tunnel address enrolled agents use.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn ca(&self) -> &DeviceCa {
        &self.ca
    }

    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Marks `id` revoked (false: no such device) and has the tunnel listener close the
    /// device's open connections at once rather than at its next periodic check.
    pub fn revoke(&self, id: &str) -> Result<bool, DeviceError> {
        let revoked = self.inventory.revoke(id)?;
        if revoked {
            // A stored permit if the listener is busy: the check is not lost.
            self.revocations.notify_one();
        }
        Ok(revoked)
    }

    /// Redeems the token (single use) and issues the device certificate.
    pub fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, DeviceError> {
        // Check the CSR before burning the token: a malformed request should not cost
        // the user a new token.
        rcgen::CertificateSigningRequestParams::from_pem(&request.csr)
            .map_err(|e| DeviceError::Csr(e.to_string()))?;
        let grant = self.tokens.redeem(&request.token)?;
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        let identity = DeviceIdentity {
            device: format!("dev-{}", hex::encode(bytes)),
            user: grant.user.clone(),
            groups: grant.groups.clone(),
        };
        let certificate = self.ca.sign_device(&request.csr, &identity)?;
        let now = rfc3339(now_unix());
        let clean = |s: &str, fallback: &str| {
            let s: String = s.chars().filter(|c| !c.is_control()).take(128).collect();
            if s.is_empty() {
                fallback.to_string()
            } else {
                s
            }
        };
        self.inventory.upsert(DeviceRecord {
            id: identity.device.clone(),
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            hostname: clean(&request.hostname, "unknown"),
            agent_version: clean(&request.agent_version, "unknown"),
            steering_mode: clean(&request.steering_mode, "unknown"),
            enrolled_at: now.clone(),
            last_seen: now,
            revoked_at: None,
        })?;
        Ok(EnrollResponse {
            device_id: identity.device,
            user: identity.user,
            groups: identity.groups,
            certificate,
            ca: self.ca.cert_pem().to_string(),
            gateway: self.gateway.clone(),
        })
    }
}

impl rampart_gateway::tunnel::DeviceAdmission for DeviceRegistry {
    fn admit(&self, device: &str) -> bool {
        match self.inventory.seen(device) {
            Ok(admitted) => admitted,
            Err(e) => {
                // An unreadable inventory must not lock every agent out (fail mode
                // would send their traffic direct): admit, and say so loudly.
                tracing::error!(error = %e, device, "cannot check the device inventory; admitting");
                true
            }
        }
    }

    fn revoked_among(&self, open: &[String]) -> Vec<String> {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) =
            (open.to_vec(), Some(std::time::Instant::now()));
        // An open tunnel is a device seen now: `last_seen` follows it (rate-limited in
        // the inventory), not only the moment the connection was made.
        if let Err(e) = self.inventory.seen_open(open) {
            tracing::warn!(error = %e, "cannot record last seen for the connected devices");
        }
        match self.inventory.list() {
            // A device missing from the inventory was not enrolled here (or its record
            // was removed by hand): as at admission, it may not use the tunnel.
            Ok(devices) => open
                .iter()
                .filter(|id| {
                    !devices
                        .iter()
                        .any(|d| &d.id == *id && d.revoked_at.is_none())
                })
                .cloned()
                .collect(),
            Err(e) => {
                // As in `admit`: an unreadable inventory closes nobody's tunnel.
                tracing::error!(error = %e, "cannot check the device inventory for revocations");
                Vec::new()
            }
        }
    }

    fn revocations(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.revocations.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_gateway::tunnel::DeviceAdmission;

    use crate::devices::inventory::test_record as record;

    #[tokio::test]
    async fn revoking_names_the_device_among_open_ones_and_announces_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DeviceRegistry::open(dir.path(), "127.0.0.1:3129".into()).unwrap();
        registry.inventory().upsert(record("dev-a")).unwrap();
        registry.inventory().upsert(record("dev-b")).unwrap();
        let open = [
            "dev-a".to_string(),
            "dev-b".to_string(),
            "dev-gone".to_string(),
        ];
        // A device that is not in the inventory may not keep a tunnel either.
        assert_eq!(registry.revoked_among(&open), ["dev-gone"]);

        let announced = registry.revocations().unwrap();
        assert!(registry.revoke("dev-a").unwrap());
        tokio::time::timeout(std::time::Duration::from_secs(1), announced.notified())
            .await
            .expect("an API revocation must wake the tunnel listener");
        assert_eq!(registry.revoked_among(&open), ["dev-a", "dev-gone"]);
        assert!(!registry.revoke("dev-nobody").unwrap());
    }
}
