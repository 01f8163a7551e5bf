//! The device inventory: `<data dir>/devices/devices.json`, one record per enrolled
//! device. Small by nature (one entry per endpoint), so a JSON file rewritten
//! atomically is enough and stays readable with `jq`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{devices_dir, now_unix, rfc3339, write_atomic, DeviceError};

/// Last-seen updates closer together than this are kept in memory only.
const SEEN_WRITE_INTERVAL_SECS: i64 = 10;

/// One enrolled device, as `rampart device list` and `GET /api/v1/devices` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub user: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub hostname: String,
    pub agent_version: String,
    /// `local-proxy` or `transparent`, as reported by the agent.
    pub steering_mode: String,
    /// RFC 3339.
    pub enrolled_at: String,
    /// RFC 3339 of the last tunnel connection (or enrollment).
    pub last_seen: String,
    /// RFC 3339 of revocation: the tunnel refuses the device from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

pub struct Inventory {
    path: PathBuf,
    /// Serialises read-modify-write cycles within this process.
    lock: Mutex<Vec<(String, i64)>>,
}

impl Inventory {
    pub fn new(data_dir: &Path) -> Self {
        Inventory {
            path: devices_dir(data_dir).join("devices.json"),
            lock: Mutex::new(Vec::new()),
        }
    }

    /// All devices, oldest enrollment first.
    pub fn list(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| DeviceError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(DeviceError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Adds or replaces a device record.
    pub fn upsert(&self, record: DeviceRecord) -> Result<(), DeviceError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = self.list()?;
        match devices.iter_mut().find(|d| d.id == record.id) {
            Some(existing) => *existing = record,
            None => devices.push(record),
        }
        self.write(&devices)
    }

    /// Records that `id` connected now (written at most every few seconds per device)
    /// and answers whether it may: false for revoked and unknown devices.
    pub fn seen(&self, id: &str) -> Result<bool, DeviceError> {
        let now = now_unix();
        let mut recent = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = self.list()?;
        let Some(device) = devices.iter_mut().find(|d| d.id == id) else {
            return Ok(false);
        };
        if device.revoked_at.is_some() {
            return Ok(false);
        }
        if recent
            .iter()
            .any(|(d, at)| d == id && now - at < SEEN_WRITE_INTERVAL_SECS)
        {
            return Ok(true);
        }
        recent.retain(|(d, _)| d != id);
        recent.push((id.to_string(), now));
        device.last_seen = rfc3339(now);
        self.write(&devices)?;
        Ok(true)
    }

    /// Marks `id` revoked; false when no such device exists. New tunnel connections of
    /// the device are refused, and a running tunnel listener closes the open ones at
    /// its next check (at once through [`super::DeviceRegistry::revoke`]).
    pub fn revoke(&self, id: &str) -> Result<bool, DeviceError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = self.list()?;
        let Some(device) = devices.iter_mut().find(|d| d.id == id) else {
            return Ok(false);
        };
        if device.revoked_at.is_none() {
            device.revoked_at = Some(rfc3339(now_unix()));
        }
        self.write(&devices)?;
        Ok(true)
    }

    fn write(&self, devices: &[DeviceRecord]) -> Result<(), DeviceError> {
        let text = serde_json::to_vec_pretty(devices).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &text, 0o600)
    }
}

/// A device record for tests: enrolled by alice, never revoked.
#[cfg(test)]
pub(crate) fn test_record(id: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        user: Some("alice".into()),
        groups: vec![],
        hostname: "laptop".into(),
        agent_version: "0.1.0".into(),
        steering_mode: "local-proxy".into(),
        enrolled_at: "2026-01-01T00:00:00Z".into(),
        last_seen: "2026-01-01T00:00:00Z".into(),
        revoked_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_record as record;

    #[test]
    fn upsert_replaces_by_id_and_seen_updates_last_seen() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::new(dir.path());
        inventory.upsert(record("a")).unwrap();
        inventory.upsert(record("b")).unwrap();
        inventory.upsert(record("a")).unwrap();
        assert_eq!(inventory.list().unwrap().len(), 2);
        assert!(inventory.seen("a").unwrap());
        let a = inventory
            .list()
            .unwrap()
            .into_iter()
            .find(|d| d.id == "a")
            .unwrap();
        assert_ne!(a.last_seen, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn revoked_and_unknown_devices_are_not_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::new(dir.path());
        inventory.upsert(record("a")).unwrap();
        assert!(!inventory.seen("nobody").unwrap());
        assert!(inventory.revoke("a").unwrap());
        assert!(!inventory.seen("a").unwrap());
        assert!(!inventory.revoke("nobody").unwrap());
    }
}
