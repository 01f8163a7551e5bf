//! The last good revision on the gateway's disk: what it starts from when NATS
//! is unreachable. It holds the coaching key, so it is written owner-only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nats::{ConfigRevision, NatsError};

const FILE_NAME: &str = "fleet-revision.json";

/// A revision the gateway applied, with its key-value sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGoodRevision {
    /// The bucket's sequence number of this revision (0 if unknown).
    pub kv_revision: u64,
    pub revision: ConfigRevision,
}

impl LastGoodRevision {
    /// Where it is kept under a gateway's state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Read it back; `Ok(None)` when there is none yet.
    pub fn load(state_dir: &Path) -> Result<Option<LastGoodRevision>, NatsError> {
        let path = Self::path(state_dir);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NatsError::io(path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NatsError::Document {
                what: format!(
                    "{} (delete it to start without a configuration)",
                    path.display()
                ),
                message: e.to_string(),
            })
    }

    /// Replace the file atomically: a crash leaves the old or the new one, never half.
    pub fn store(&self, state_dir: &Path) -> Result<(), NatsError> {
        fs::create_dir_all(state_dir).map_err(|e| NatsError::io(state_dir, e))?;
        let path = Self::path(state_dir);
        let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| NatsError::Document {
            what: "last good revision".into(),
            message: e.to_string(),
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| NatsError::io(&tmp, e))?;
        file.write_all(&bytes).map_err(|e| NatsError::io(&tmp, e))?;
        file.sync_all().map_err(|e| NatsError::io(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| NatsError::io(&path, e))?;
        // The rename itself must survive a power loss too.
        if let Ok(dir) = fs::File::open(state_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_revision_reads_back_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LastGoodRevision::load(dir.path()).unwrap().is_none());
        let revision = ConfigRevision::new(
            "g".into(),
            Default::default(),
            vec![],
            "k".into(),
            crate::nats::CaMaterial {
                certificate_pem: "c".into(),
                key_fingerprint: "f".into(),
            },
        );
        let good = LastGoodRevision {
            kv_revision: 7,
            revision,
        };
        good.store(dir.path()).unwrap();
        assert_eq!(LastGoodRevision::load(dir.path()).unwrap(), Some(good));
        let mode = fs::metadata(LastGoodRevision::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
