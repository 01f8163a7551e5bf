//! Alert acknowledgements: who acknowledged which alert, when, with what note,
//! in `<data dir>/console-acks.json` (mode 0600). The event store is never
//! written by the console; acknowledgements live beside it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const ACKS_FILE: &str = "console-acks.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub by: String,
    pub note: String,
    /// RFC 3339.
    pub time: String,
}

pub struct AckStore {
    path: PathBuf,
    /// One writer at a time: read, change, replace.
    lock: Mutex<()>,
}

impl AckStore {
    pub fn new(data_dir: &Path) -> AckStore {
        AckStore {
            path: data_dir.join(ACKS_FILE),
            lock: Mutex::new(()),
        }
    }

    /// Every acknowledgement by alert id; none when the file does not exist yet.
    pub fn load(&self) -> anyhow::Result<BTreeMap<String, Ack>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an acknowledgement file", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn add(&self, alert_id: &str, by: &str, note: &str) -> anyhow::Result<()> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("acknowledgement lock poisoned"))?;
        let mut all = self.load()?;
        all.insert(
            alert_id.to_string(),
            Ack {
                by: by.to_string(),
                note: note.to_string(),
                time: rampart_events::render::time_text(rampart_events::now_ms()),
            },
        );
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&all).context("encoding acknowledgements")?)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))
    }
}
