//! The desired isolation state of every device, beside the device inventory in
//! `<data dir>/devices/isolation.json`: what was asked (isolate or release), by whom,
//! when, why, the triggering event when a response rule asked, the agent's last
//! report, and the device's one-time break-glass code (its hash only).
//!
//! Every change bumps the device's `generation`; the agent reports the generation it
//! applied, so the server shows `pending` until the agent confirmed the latest one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::devices::{devices_dir, now_unix, rfc3339, write_atomic, DeviceError};

/// What the operator (or a response rule) wants for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wanted {
    Isolated,
    Released,
}

impl Wanted {
    pub fn as_str(self) -> &'static str {
        match self {
            Wanted::Isolated => "isolated",
            Wanted::Released => "released",
        }
    }
}

/// What the agent last said about the kernel (its `IsolationStatus`, as text:
/// `pending`, `isolated`, `release-pending`, `released`, `drift`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The generation the agent was working on.
    pub generation: u64,
    pub status: String,
    /// Errors and drift reasons the agent gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The self-test after applying failed (isolation stays on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test_error: Option<String>,
    /// RFC 3339, server clock.
    pub at: String,
}

/// A one-time break-glass code: only its salted hash is kept (and sent to the agent,
/// which verifies a code typed on the device while it cannot reach the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlass {
    pub id: String,
    pub salt: String,
    /// hex SHA-256 of `salt:device:CODE` ([`code_hash`]).
    pub hash: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
}

/// One device's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIsolation {
    pub desired: Wanted,
    /// Bumped on every change of `desired`.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `admin`, `response:<rule name>` or `break-glass`.
    pub by: String,
    /// RFC 3339 of the change.
    pub since: String,
    /// Unix milliseconds of the change (latency measurement, ordering).
    pub since_ms: i64,
    /// The stored event a response rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<AgentReport>,
    /// RFC 3339 of the agent's first report confirming this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
}

impl DeviceIsolation {
    /// Whether the agent has confirmed the current generation in the wanted state.
    pub fn confirmed(&self) -> bool {
        self.actual
            .as_ref()
            .is_some_and(|a| a.generation == self.generation && a.status == self.desired.as_str())
    }

    /// `pending` until confirmed, then the agent's status; `released` for a device
    /// never isolated.
    pub fn state(&self) -> &str {
        if self.generation == 0 {
            return "released";
        }
        match &self.actual {
            Some(a) if a.generation == self.generation => match (self.desired, a.status.as_str()) {
                (Wanted::Isolated, "isolated") => "isolated",
                (Wanted::Released, "released") => "released",
                (Wanted::Released, _) => "release-pending",
                (Wanted::Isolated, "drift") => "drift",
                (Wanted::Isolated, _) => "pending",
            },
            _ => match self.desired {
                Wanted::Isolated => "pending",
                Wanted::Released => "release-pending",
            },
        }
    }
}

/// What an isolate or release call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// False when the device was already in the wanted state (idempotent repeat).
    pub changed: bool,
    pub record: DeviceIsolation,
}

/// Who asked, why, and the event that triggered it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub reason: Option<String>,
    pub by: String,
    pub trigger_event: Option<String>,
}

/// The file and the lock around its read-modify-write cycles.
pub struct IsolationStore {
    path: PathBuf,
    lock: Mutex<()>,
}

type Records = BTreeMap<String, DeviceIsolation>;

impl IsolationStore {
    pub fn new(data_dir: &Path) -> Self {
        IsolationStore {
            path: devices_dir(data_dir).join("isolation.json"),
            lock: Mutex::new(()),
        }
    }

    fn read(&self) -> Result<Records, DeviceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| DeviceError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::new()),
            Err(source) => Err(DeviceError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, records: &Records) -> Result<(), DeviceError> {
        let text = serde_json::to_vec_pretty(records).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &text, 0o600)
    }

    fn update<T>(
        &self,
        f: impl FnOnce(&mut Records) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = self.read()?;
        let out = f(&mut records)?;
        self.write(&records)?;
        Ok(out)
    }

    pub fn get(&self, device: &str) -> Result<Option<DeviceIsolation>, DeviceError> {
        Ok(self.read()?.remove(device))
    }

    pub fn all(&self) -> Result<BTreeMap<String, DeviceIsolation>, DeviceError> {
        self.read()
    }

    /// Sets the wanted state; a repeat of the current one changes nothing.
    pub fn set(
        &self,
        device: &str,
        wanted: Wanted,
        request: Request,
    ) -> Result<Change, DeviceError> {
        self.update(|records| {
            let current = records.get(device);
            if current.is_some_and(|c| c.desired == wanted)
                || (current.is_none() && wanted == Wanted::Released)
            {
                let record = current.cloned().unwrap_or_else(|| never_isolated(&request));
                return Ok(Change {
                    changed: false,
                    record,
                });
            }
            let now_ms = now_millis();
            let record = DeviceIsolation {
                desired: wanted,
                generation: current.map_or(1, |c| c.generation + 1),
                reason: request.reason.clone(),
                by: request.by.clone(),
                since: rfc3339(now_ms / 1000),
                since_ms: now_ms,
                trigger_event: request.trigger_event.clone(),
                actual: current.and_then(|c| c.actual.clone()),
                confirmed_at: None,
                confirmed_ms: None,
                break_glass: current.and_then(|c| c.break_glass.clone()),
            };
            records.insert(device.to_string(), record.clone());
            Ok(Change {
                changed: true,
                record,
            })
        })
    }

    /// Records the agent's report; returns the record and whether this report is the
    /// first to confirm the current generation.
    pub fn report(
        &self,
        device: &str,
        report: AgentReport,
    ) -> Result<Option<(DeviceIsolation, bool)>, DeviceError> {
        self.update(|records| {
            let Some(record) = records.get_mut(device) else {
                return Ok(None);
            };
            let was = record.confirmed();
            record.actual = Some(report);
            let now = record.confirmed();
            let first = now && !was && record.confirmed_ms.is_none();
            if first {
                let ms = now_millis();
                record.confirmed_ms = Some(ms);
                record.confirmed_at = Some(rfc3339(ms / 1000));
            }
            Ok(Some((record.clone(), first)))
        })
    }

    /// Issues a new one-time code for `device` (replacing an unused one); returns the
    /// code, shown once.
    pub fn issue_code(&self, device: &str) -> Result<String, DeviceError> {
        let code = new_code();
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let mut id = [0u8; 4];
        rand::rng().fill_bytes(&mut id);
        let salt = hex::encode(salt);
        let glass = BreakGlass {
            id: hex::encode(id),
            hash: code_hash(&salt, device, &code),
            salt,
            issued_at: rfc3339(now_unix()),
            used_at: None,
        };
        self.update(|records| {
            let record = records
                .entry(device.to_string())
                .or_insert_with(|| never_isolated(&Request::default()));
            // The agent sees a new code only with a new document: bump nothing else.
            record.break_glass = Some(glass);
            Ok(())
        })?;
        Ok(code)
    }

    /// The agent used code `id` for `generation`: mark it used, and when that
    /// generation is still the wanted isolation, record the release.
    pub fn code_used(
        &self,
        device: &str,
        id: &str,
        generation: u64,
    ) -> Result<Option<Change>, DeviceError> {
        let marked = self.update(|records| {
            let Some(record) = records.get_mut(device) else {
                return Ok(false);
            };
            match &mut record.break_glass {
                Some(glass) if glass.id == id && glass.used_at.is_none() => {
                    glass.used_at = Some(rfc3339(now_unix()));
                    Ok(record.generation == generation && record.desired == Wanted::Isolated)
                }
                _ => Ok(false),
            }
        })?;
        if !marked {
            return Ok(None);
        }
        self.set(
            device,
            Wanted::Released,
            Request {
                reason: Some(format!("break-glass code {id} used on the device")),
                by: "break-glass".into(),
                trigger_event: None,
            },
        )
        .map(Some)
    }
}

fn never_isolated(request: &Request) -> DeviceIsolation {
    DeviceIsolation {
        desired: Wanted::Released,
        generation: 0,
        reason: None,
        by: if request.by.is_empty() {
            "-".into()
        } else {
            request.by.clone()
        },
        since: String::new(),
        since_ms: 0,
        trigger_event: None,
        actual: None,
        confirmed_at: None,
        confirmed_ms: None,
        break_glass: None,
    }
}

pub(crate) fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// 20 characters of Crockford base32 (100 bits) in groups of five: typed by a user on
/// the phone with the help desk, and far too many to guess from the hash offline.
fn new_code() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The hash the agent compares a typed code against: the agent's own function, so
/// the two can never disagree (case, dashes and spaces do not matter).
pub fn code_hash(salt: &str, device: &str, code: &str) -> String {
    rampart_agent::isolation_sync::code_hash(salt, device, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(reason: &str) -> Request {
        Request {
            reason: Some(reason.into()),
            by: "admin".into(),
            trigger_event: None,
        }
    }

    fn report(generation: u64, status: &str) -> AgentReport {
        AgentReport {
            generation,
            status: status.into(),
            detail: None,
            self_test_error: None,
            at: String::new(),
        }
    }

    #[test]
    fn isolation_is_pending_until_the_agent_confirms_the_current_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = IsolationStore::new(dir.path());
        let c = store
            .set("dev-a", Wanted::Isolated, admin("alert"))
            .unwrap();
        assert!(c.changed);
        assert_eq!((c.record.generation, c.record.state()), (1, "pending"));
        let (r, first) = store
            .report("dev-a", report(1, "isolated"))
            .unwrap()
            .unwrap();
        assert!(first);
        assert_eq!(r.state(), "isolated");
        assert!(r.confirmed_ms.is_some());
        let (_, again) = store
            .report("dev-a", report(1, "isolated"))
            .unwrap()
            .unwrap();
        assert!(!again, "only the first confirmation counts");
        let (r, _) = store.report("dev-a", report(1, "drift")).unwrap().unwrap();
        assert_eq!(r.state(), "drift");
        // A release is pending until the agent reports the new generation released.
        let c = store.set("dev-a", Wanted::Released, admin("done")).unwrap();
        assert_eq!(
            (c.record.generation, c.record.state()),
            (2, "release-pending")
        );
        let (r, _) = store
            .report("dev-a", report(1, "isolated"))
            .unwrap()
            .unwrap();
        assert_eq!(r.state(), "release-pending", "an old generation's report");
        let (r, _) = store
            .report("dev-a", report(2, "released"))
            .unwrap()
            .unwrap();
        assert_eq!(r.state(), "released");
    }

    #[test]
    fn repeating_a_command_is_idempotent_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = IsolationStore::new(dir.path());
        assert!(
            !store
                .set("dev-a", Wanted::Released, admin("x"))
                .unwrap()
                .changed
        );
        assert!(
            store
                .set("dev-a", Wanted::Isolated, admin("first"))
                .unwrap()
                .changed
        );
        let again = store
            .set("dev-a", Wanted::Isolated, admin("second"))
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.record.reason.as_deref(), Some("first"));
        let reopened = IsolationStore::new(dir.path());
        let record = reopened.get("dev-a").unwrap().unwrap();
        assert_eq!((record.desired, record.generation), (Wanted::Isolated, 1));
        assert!(reopened
            .report("dev-nobody", report(1, "isolated"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_response_rule_isolation_records_the_triggering_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = IsolationStore::new(dir.path());
        let c = store
            .set(
                "dev-a",
                Wanted::Isolated,
                Request {
                    reason: Some("rule reverse shell".into()),
                    by: "response:reverse shell".into(),
                    trigger_event: Some("0193-ev".into()),
                },
            )
            .unwrap();
        assert_eq!(c.record.trigger_event.as_deref(), Some("0193-ev"));
        assert_eq!(c.record.by, "response:reverse shell");
    }

    #[test]
    fn a_break_glass_code_is_stored_hashed_and_releases_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = IsolationStore::new(dir.path());
        store.set("dev-a", Wanted::Isolated, admin("x")).unwrap();
        let code = store.issue_code("dev-a").unwrap();
        assert_eq!(code.len(), 23, "{code}");
        let text = std::fs::read_to_string(devices_dir(dir.path()).join("isolation.json")).unwrap();
        assert!(!text.contains(&code), "the code itself is never stored");
        let glass = store.get("dev-a").unwrap().unwrap().break_glass.unwrap();
        assert_eq!(
            glass.hash,
            code_hash(&glass.salt, "dev-a", &code.to_lowercase().replace('-', " "))
        );
        assert_ne!(glass.hash, code_hash(&glass.salt, "dev-b", &code));
        let released = store.code_used("dev-a", &glass.id, 1).unwrap().unwrap();
        assert_eq!(
            (released.record.desired, released.record.by.as_str()),
            (Wanted::Released, "break-glass")
        );
        assert!(
            store.code_used("dev-a", &glass.id, 1).unwrap().is_none(),
            "once only"
        );
    }
}
