//! The running sinks, changed in place by a reload.
//!
//! A reload that adds, removes or changes `[[events.sinks]]` applies here
//! without restarting the pipeline (issue 15: "sink changes apply"):
//! - every new or changed sink is prepared first (configuration checked, query
//!   parsed, destination built): one bad sink refuses the whole change and the
//!   running set stays as it was;
//! - an unchanged sink (same name, same configuration) keeps running untouched;
//! - a changed sink keeps its spool: its old thread stops, a new one delivers
//!   the same undelivered events to the new destination, and the writer never
//!   stops appending, so nothing is lost in between;
//! - a removed sink's thread stops; its undelivered events stay in its spool
//!   directory and are delivered if a sink of that name comes back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::{Prepared, Running, SinkFeed, SinkStats};
use crate::config::SinkConfig;
use crate::error::EventsError;

/// What a [`Sinks::reconfigure`] did, by sink name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl SinkChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

struct Entry {
    config: SinkConfig,
    feed: Arc<SinkFeed>,
    running: Running,
}

/// The pipeline's sinks. Shared by the writer (which appends to their spools),
/// the pipeline's owner (which reconfigures and closes them) and the data
/// path's senders (which hand flows over whole only while a sink runs).
pub struct Sinks {
    data_dir: PathBuf,
    /// The pipeline's closing flag: sinks deliver what is spooled, then stop.
    closing: Arc<AtomicBool>,
    /// What the writer feeds. The writer holds the read lock while it appends,
    /// so once a reconfiguration holds the write lock no append to a feed it
    /// replaces is under way.
    feeds: RwLock<Arc<Vec<Arc<SinkFeed>>>>,
    entries: Mutex<Vec<Entry>>,
    /// Whether any sink runs (the data path prepares flows for the store only
    /// when none does).
    active: Arc<AtomicBool>,
}

impl Sinks {
    pub(crate) fn start(
        configs: &[SinkConfig],
        data_dir: &Path,
        closing: Arc<AtomicBool>,
    ) -> Result<Sinks, EventsError> {
        let sinks = Sinks {
            data_dir: data_dir.to_path_buf(),
            closing,
            feeds: RwLock::new(Arc::new(Vec::new())),
            entries: Mutex::new(Vec::new()),
            active: Arc::new(AtomicBool::new(false)),
        };
        sinks.reconfigure(configs)?;
        Ok(sinks)
    }

    /// Apply a new list of sink configurations (see the module documentation).
    pub fn reconfigure(&self, configs: &[SinkConfig]) -> Result<SinkChanges, EventsError> {
        let mut entries = lock(&self.entries);
        let mut changes = SinkChanges::default();
        // 1. Prepare every new or changed sink; nothing changes on an error.
        let mut prepared = Vec::new();
        for config in configs {
            if configs.iter().filter(|c| c.name == config.name).count() > 1 {
                return Err(EventsError::Sink {
                    sink: config.name.clone(),
                    message: "two sinks have this name; names must be unique".into(),
                });
            }
            match entries.iter().find(|e| e.config.name == config.name) {
                Some(e) if e.config == *config => {}
                existing => {
                    if existing.is_some() {
                        changes.changed.push(config.name.clone());
                    } else {
                        changes.added.push(config.name.clone());
                    }
                    prepared.push((config.clone(), Prepared::new(config)?));
                }
            }
        }
        // 2. Open the spools of added sinks before anything stops.
        let mut spools = Vec::new();
        for (config, _) in &prepared {
            let spool = match entries.iter().find(|e| e.config.name == config.name) {
                Some(e) => (e.feed.spool.clone(), e.feed.stats.clone()),
                None => (
                    Arc::new(Mutex::new(crate::spool::Spool::open(
                        &super::spool_dir(&self.data_dir, &config.name),
                        config.spool_max_size.0,
                    )?)),
                    Arc::new(SinkStats::default()),
                ),
            };
            spools.push(spool);
        }
        // 3. Retire removed and changed sinks' threads (their spools stay).
        let mut kept = Vec::new();
        for entry in entries.drain(..) {
            let name = entry.config.name.clone();
            let wanted = configs.iter().any(|c| c.name == name);
            if !wanted {
                changes.removed.push(name.clone());
            }
            if wanted && !changes.changed.contains(&name) {
                kept.push(entry);
            } else {
                entry.running.retire();
            }
        }
        // 4. Start the new threads on their spools.
        for ((config, prepared), (spool, stats)) in prepared.into_iter().zip(spools) {
            let (feed, running) = prepared.run(&config, spool, stats, self.closing.clone())?;
            kept.push(Entry {
                config,
                feed: Arc::new(feed),
                running,
            });
        }
        // 5. Hand the writer the new set, in configuration order.
        kept.sort_by_key(|e| configs.iter().position(|c| c.name == e.config.name));
        let feeds: Vec<Arc<SinkFeed>> = kept.iter().map(|e| e.feed.clone()).collect();
        self.active.store(!feeds.is_empty(), Ordering::SeqCst);
        match self.feeds.write() {
            Ok(mut slot) => *slot = Arc::new(feeds),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(feeds),
        }
        *entries = kept;
        Ok(changes)
    }

    /// Run `f` over the current feeds, holding them against a concurrent
    /// reconfiguration.
    pub(crate) fn with_feeds(&self, f: impl FnOnce(&[Arc<SinkFeed>])) {
        match self.feeds.read() {
            Ok(feeds) => f(&feeds),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Whether any sink runs.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn active_flag(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    /// Per-sink counters, by sink name, in configuration order.
    pub fn stats(&self) -> Vec<(String, Arc<SinkStats>)> {
        lock(&self.entries)
            .iter()
            .map(|e| (e.config.name.clone(), e.feed.stats.clone()))
            .collect()
    }

    /// The delivery threads, for the pipeline's close (the closing flag is
    /// already set: each delivers what is spooled, then stops).
    pub(crate) fn take_threads(&self) -> Vec<std::thread::JoinHandle<()>> {
        lock(&self.entries)
            .drain(..)
            .map(|e| e.running.handle)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
