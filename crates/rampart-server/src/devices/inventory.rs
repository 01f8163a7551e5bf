//! The device inventory: `<data dir>/devices/devices.json`, one record per enrolled
//! device. Small by nature (one entry per endpoint), so a JSON file rewritten
//! atomically is enough and stays readable with `jq`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{devices_dir, now_unix, rfc3339, write_atomic, DeviceError};

/// Default of `[tunnel] last_seen_interval`: a device's `last_seen` is written at most
/// this often, so a fleet of connected agents costs one small file write per device
/// per minute rather than one per connection check.
pub const DEFAULT_LAST_SEEN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// RFC 3339 of the last time the device had its tunnel open (or enrolled), to
    /// within `[tunnel] last_seen_interval`.
    pub last_seen: String,
    /// RFC 3339 of revocation: the tunnel refuses the device from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

pub struct Inventory {
    path: PathBuf,
    /// Serialises read-modify-write cycles within this process, and holds when each
    /// device's `last_seen` was last written (Unix seconds).
    lock: Mutex<Vec<(String, i64)>>,
    /// Seconds between two writes of one device's `last_seen`.
    seen_interval: i64,
}

impl Inventory {
    pub fn new(data_dir: &Path) -> Self {
        Inventory {
            path: devices_dir(data_dir).join("devices.json"),
            lock: Mutex::new(Vec::new()),
            seen_interval: DEFAULT_LAST_SEEN_INTERVAL.as_secs() as i64,
        }
    }

    /// Writes a device's `last_seen` at most every `interval` (at least one second).
    pub fn with_seen_interval(mut self, interval: std::time::Duration) -> Self {
        self.seen_interval = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX).max(1);
        self
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

    /// Records that `id` connected now (written at most once per interval per device)
    /// and answers whether it may: false for revoked and unknown devices.
    pub fn seen(&self, id: &str) -> Result<bool, DeviceError> {
        let mut written = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = self.list()?;
        let Some(device) = devices.iter().find(|d| d.id == id) else {
            return Ok(false);
        };
        if device.revoked_at.is_some() {
            return Ok(false);
        }
        self.mark_seen(&mut written, &mut devices, &[id.to_string()])?;
        Ok(true)
    }

    /// Records that the devices `open` have their tunnel open now: each admitted one's
    /// `last_seen` moves, written at most once per interval per device (one file write
    /// for all of them). Revoked and unknown devices are left alone.
    pub fn seen_open(&self, open: &[String]) -> Result<(), DeviceError> {
        let mut written = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = self.list()?;
        self.mark_seen(&mut written, &mut devices, open)
    }

    /// Sets `last_seen` to now for those of `ids` that are enrolled, not revoked and not
    /// written within the interval, and writes the file when any changed.
    fn mark_seen(
        &self,
        written: &mut Vec<(String, i64)>,
        devices: &mut [DeviceRecord],
        ids: &[String],
    ) -> Result<(), DeviceError> {
        let now = now_unix();
        let mut changed = false;
        for device in devices.iter_mut() {
            if device.revoked_at.is_some() || !ids.contains(&device.id) {
                continue;
            }
            let recent = written
                .iter()
                .any(|(d, at)| *d == device.id && now - at < self.seen_interval);
            if recent {
                continue;
            }
            written.retain(|(d, _)| *d != device.id);
            written.push((device.id.clone(), now));
            device.last_seen = rfc3339(now);
            changed = true;
        }
        if changed {
            self.write(devices)?;
        }
        Ok(())
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
    use std::time::Duration;

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

    fn last_seen(inventory: &Inventory, id: &str) -> String {
        inventory
            .list()
            .unwrap()
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
            .last_seen
    }

    #[test]
    fn open_tunnels_move_last_seen_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::new(dir.path()).with_seen_interval(Duration::from_secs(1));
        for id in ["a", "b", "gone"] {
            inventory.upsert(record(id)).unwrap();
        }
        assert!(inventory.revoke("gone").unwrap());
        let open = ["a".to_string(), "gone".to_string(), "unknown".to_string()];
        inventory.seen_open(&open).unwrap();
        let first = last_seen(&inventory, "a");
        assert_ne!(first, "2026-01-01T00:00:00Z");
        // Not open, revoked: untouched.
        assert_eq!(last_seen(&inventory, "b"), "2026-01-01T00:00:00Z");
        assert_eq!(last_seen(&inventory, "gone"), "2026-01-01T00:00:00Z");
        // Within the interval nothing is written, not even the file.
        let modified = std::fs::metadata(&inventory.path)
            .unwrap()
            .modified()
            .unwrap();
        inventory.seen_open(&open).unwrap();
        assert_eq!(
            std::fs::metadata(&inventory.path)
                .unwrap()
                .modified()
                .unwrap(),
            modified
        );
        std::thread::sleep(Duration::from_millis(2100));
        inventory.seen_open(&open).unwrap();
        assert!(last_seen(&inventory, "a") > first);
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
