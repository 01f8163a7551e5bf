//! The configuration revision document a gateway applies as a whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::nats::{CaMaterial, NatsError};

/// Everything a gateway needs to serve, as one revision: applied atomically
/// or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRevision {
    /// A hash of the content (see [`ConfigRevision::new`]): the same content
    /// always has the same id, so a re-published revision is recognised.
    pub id: String,
    /// When the server made it (ms since the Unix epoch).
    pub created_ms: i64,
    /// The gateway configuration file (TOML).
    pub gateway_config: String,
    pub policy: PolicyBundle,
    /// Devices whose certificates gateways must refuse.
    pub revoked_devices: Vec<String>,
    /// Key that signs coaching "proceed" links, shared by all gateways: 64 hex
    /// digits (32 bytes); empty: each gateway keeps a key of its own. A secret:
    /// the bucket must be readable by the server and the gateways only.
    pub coaching_key: String,
    pub ca: CaMaterial,
    /// The device CA (agents' certificates, the tunnel's server certificate):
    /// its certificate and key fingerprint, as for [`ConfigRevision::ca`]. Absent
    /// in revisions of servers without one (and of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ca: Option<CaMaterial>,
}

/// The policy and the files it loads, by the path the policy names them with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBundle {
    /// The policy file (TOML).
    pub policy: String,
    /// List and category files: relative path → content.
    pub files: BTreeMap<String, String>,
}

impl ConfigRevision {
    /// A revision of this content; its id is the first 128 bits of the
    /// SHA-256 of the content (revoked devices sorted and deduplicated).
    pub fn new(
        gateway_config: String,
        policy: PolicyBundle,
        revoked_devices: Vec<String>,
        coaching_key: String,
        ca: CaMaterial,
    ) -> ConfigRevision {
        let mut revoked_devices = revoked_devices;
        revoked_devices.sort();
        revoked_devices.dedup();
        let mut revision = ConfigRevision {
            id: String::new(),
            created_ms: rampart_events::now_ms(),
            gateway_config,
            policy,
            revoked_devices,
            coaching_key,
            ca,
            device_ca: None,
        };
        revision.id = revision.content_id();
        revision
    }

    /// The same revision with the device CA's material (a new id).
    pub fn with_device_ca(mut self, device_ca: CaMaterial) -> ConfigRevision {
        self.device_ca = Some(device_ca);
        self.id = self.content_id();
        self
    }

    fn content_id(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed so that moving bytes between fields changes the id.
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(self.gateway_config.as_bytes());
        field(self.policy.policy.as_bytes());
        for (path, content) in &self.policy.files {
            field(path.as_bytes());
            field(content.as_bytes());
        }
        for device in &self.revoked_devices {
            field(device.as_bytes());
        }
        field(self.coaching_key.as_bytes());
        field(self.ca.certificate_pem.as_bytes());
        field(self.ca.key_fingerprint.as_bytes());
        // Only when present: the id of a revision without one is unchanged.
        if let Some(device_ca) = &self.device_ca {
            field(device_ca.certificate_pem.as_bytes());
            field(device_ca.key_fingerprint.as_bytes());
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// The document as stored in the bucket.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, maps and vectors always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A revision read from the bucket or from disk; `what` names the source
    /// for the error.
    pub fn from_json(bytes: &[u8], what: &str) -> Result<ConfigRevision, NatsError> {
        serde_json::from_slice(bytes).map_err(|e| NatsError::Document {
            what: what.to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CaMaterial {
        CaMaterial {
            certificate_pem: "cert".into(),
            key_fingerprint: "sha256:00".into(),
        }
    }

    #[test]
    fn id_follows_content_only() {
        let policy = PolicyBundle {
            policy: "[[access]]".into(),
            files: BTreeMap::from([("lists/a".into(), "a.example\n".into())]),
        };
        let a = ConfigRevision::new(
            "x".into(),
            policy.clone(),
            vec!["d2".into(), "d1".into()],
            "k".into(),
            ca(),
        );
        let b = ConfigRevision::new(
            "x".into(),
            policy.clone(),
            vec!["d1".into(), "d2".into(), "d1".into()],
            "k".into(),
            ca(),
        );
        assert_eq!(a.id, b.id);
        let c = ConfigRevision::new("x".into(), policy, vec!["d1".into()], "k".into(), ca());
        assert_ne!(a.id, c.id);
        let back = ConfigRevision::from_json(&a.to_json(), "test").unwrap();
        assert_eq!(back, a);
    }
}
