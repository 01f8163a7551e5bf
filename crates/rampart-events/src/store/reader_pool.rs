//! Store readers reused across requests (the events API and the console):
//! opening a reader costs a database open per request otherwise.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreReader;
use crate::error::EventsError;

pub struct ReaderPool {
    db: PathBuf,
    idle: Mutex<Vec<StoreReader>>,
    /// Readers kept idle at most; more open while requests overlap.
    keep: usize,
}

impl ReaderPool {
    pub fn new(db: PathBuf, keep: usize) -> ReaderPool {
        ReaderPool {
            db,
            idle: Mutex::new(Vec::new()),
            keep,
        }
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Runs `f` with an idle reader (or a new one) and keeps it for the next
    /// call. Blocking: call it from a blocking thread.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&StoreReader) -> Result<T, EventsError>,
    ) -> Result<T, EventsError> {
        let pooled = self.idle.lock().ok().and_then(|mut p| p.pop());
        let reader = match pooled {
            Some(r) => r,
            None => StoreReader::open(&self.db)?,
        };
        let result = f(&reader);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.keep {
                idle.push(reader);
            }
        }
        result
    }
}
