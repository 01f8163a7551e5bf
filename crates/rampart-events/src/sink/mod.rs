//! Export to SIEMs and files, at least once.
//!
//! The writer appends every stored event matching a sink's query to that sink's
//! own disk spool; a thread per sink delivers batches from the spool and
//! advances the spool's cursor only when the destination accepted them. A
//! failed delivery is retried with exponential back-off; while a destination is
//! down the spool grows up to `spool_max_size`, then its oldest events are
//! discarded and counted (`dropped`). Receivers de-duplicate on the event id
//! (`metadata.uid`) if they need exactly-once.

pub mod cef;
mod file;
mod hec;
mod set;
pub mod squid;
mod syslog;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{SinkConfig, SinkKind};
use crate::error::EventsError;
use crate::event::Event;
use crate::query::Query;
use crate::spool::Spool;

pub use file::RotatingFile;
pub use set::{SinkChanges, Sinks};

/// A place events are delivered to.
pub trait Destination: Send {
    /// Deliver a batch; `Ok` means the destination accepted all of it.
    fn deliver(&mut self, events: &[Event]) -> Result<(), String>;
}

/// Counters of one sink, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    /// Failed delivery attempts (each retried).
    pub failures: AtomicU64,
    /// Events discarded because the spool reached its size bound, or refused by
    /// the destination as malformed.
    pub dropped: AtomicU64,
    /// Bytes waiting in the sink's spool (gauge).
    pub pending_bytes: AtomicU64,
    /// `time` (ms since the epoch) of the oldest event not yet delivered, 0
    /// when nothing waits: the first event of the batch being delivered.
    pub oldest_pending_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
}

impl SinkStats {
    /// How long the oldest undelivered event has waited, at `now_ms`: 0 when
    /// the spool is drained.
    pub fn oldest_pending_seconds(&self, now_ms: i64) -> f64 {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            oldest => (now_ms - oldest).max(0) as f64 / 1000.0,
        }
    }
}

/// The writer's side of a sink: filter and spool.
pub(crate) struct SinkFeed {
    name: String,
    filter: Query,
    spool: Arc<Mutex<Spool>>,
    pub(crate) stats: Arc<SinkStats>,
}

impl SinkFeed {
    /// Append the matching events (already rendered as JSON) to the sink's spool.
    pub(crate) fn push(&self, events: &[&Event], docs: &[String]) {
        let lines = events
            .iter()
            .zip(docs)
            .filter(|(e, _)| self.filter.matches(e))
            .map(|(_, d)| d.as_bytes());
        let Ok(mut spool) = self.spool.lock() else {
            return;
        };
        let before = spool.dropped_lines();
        if let Err(err) = spool.append(lines) {
            tracing::error!(sink = %self.name, %err, "sink spool write failed");
        }
        let lost = spool.dropped_lines() - before;
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(sink = %self.name, lost, "sink spool full: oldest events discarded");
        }
        self.stats
            .pending_bytes
            .store(spool.pending_bytes(), Ordering::Relaxed);
    }
}

/// Where a sink's spool lives: by name, so a sink that is changed, or removed
/// and added again, finds its undelivered events.
pub(crate) fn spool_dir(data_dir: &Path, name: &str) -> std::path::PathBuf {
    data_dir.join("spool").join(format!("sink-{name}"))
}

/// A sink whose configuration is checked and whose destination is built, not
/// yet running: a reload prepares every new sink before it changes anything.
pub(crate) struct Prepared {
    filter: Query,
    destination: Box<dyn Destination>,
}

impl Prepared {
    pub(crate) fn new(config: &SinkConfig) -> Result<Prepared, EventsError> {
        let sink_err = |message: String| EventsError::Sink {
            sink: config.name.clone(),
            message,
        };
        config.validate().map_err(sink_err)?;
        let filter = crate::query::parse(&config.query)?;
        let destination = build(config).map_err(sink_err)?;
        Ok(Prepared {
            filter,
            destination,
        })
    }

    /// Start delivering from `spool` (a new one, or the one a changed sink of
    /// the same name leaves behind: its undelivered events go to the new
    /// destination).
    pub(crate) fn run(
        self,
        config: &SinkConfig,
        spool: Arc<Mutex<Spool>>,
        stats: Arc<SinkStats>,
        closing: Arc<AtomicBool>,
    ) -> Result<(SinkFeed, Running), EventsError> {
        let retire = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            name: config.name.clone(),
            destination: self.destination,
            spool: spool.clone(),
            stats: stats.clone(),
            batch_size: config.batch_size,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
            closing,
            retire: retire.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("rampart-sink-{}", config.name))
            .spawn(move || worker.run())
            .map_err(|e| EventsError::Sink {
                sink: config.name.clone(),
                message: format!("cannot start its delivery thread: {e}"),
            })?;
        Ok((
            SinkFeed {
                name: config.name.clone(),
                filter: self.filter,
                spool,
                stats,
            },
            Running { handle, retire },
        ))
    }
}

/// A sink's delivery thread.
pub(crate) struct Running {
    pub(crate) handle: JoinHandle<()>,
    /// Set to stop the thread without draining its spool (the sink was removed
    /// or replaced; what it had not delivered stays in the spool).
    retire: Arc<AtomicBool>,
}

impl Running {
    /// Stop the thread at its next step and wait for it (at most one delivery
    /// attempt, or 50 ms).
    pub(crate) fn retire(self) {
        self.retire.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// The destination a sink configuration describes.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Destination>, String> {
    Ok(match config.kind {
        SinkKind::File => Box::new(file::NdjsonFile::new(file_of(config)?)),
        SinkKind::Squid => Box::new(file::SquidFile::new(file_of(config)?)),
        SinkKind::Syslog => Box::new(syslog::Syslog::new(config)?),
        SinkKind::Hec => Box::new(hec::Hec::new(config)?),
    })
}

fn file_of(config: &SinkConfig) -> Result<RotatingFile, String> {
    let path = config.path.clone().ok_or("missing `path`")?;
    Ok(RotatingFile::new(
        path,
        config.rotate_size.map_or(100 << 20, |b| b.0),
        config.keep.unwrap_or(5),
    ))
}

struct Worker {
    name: String,
    destination: Box<dyn Destination>,
    spool: Arc<Mutex<Spool>>,
    stats: Arc<SinkStats>,
    batch_size: usize,
    retry_initial: Duration,
    retry_max: Duration,
    /// The pipeline closes: deliver what is spooled, then stop.
    closing: Arc<AtomicBool>,
    /// The sink was removed or replaced: stop now.
    retire: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = self.retry_initial;
        loop {
            if self.retire.load(Ordering::SeqCst) {
                return;
            }
            let closing = self.closing.load(Ordering::SeqCst);
            let chunk = match self.spool.lock() {
                Ok(mut s) => {
                    self.stats
                        .pending_bytes
                        .store(s.pending_bytes(), Ordering::Relaxed);
                    s.read(self.batch_size).unwrap_or_else(|err| {
                        tracing::error!(sink = %self.name, %err, "sink spool read failed");
                        None
                    })
                }
                Err(_) => return,
            };
            let Some(chunk) = chunk else {
                self.stats.oldest_pending_ms.store(0, Ordering::Relaxed);
                if closing {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let events: Vec<Event> = chunk
                .lines
                .iter()
                .filter_map(|l| serde_json::from_slice(l).ok())
                .collect();
            // Spool order is commit order, close to time order: the batch's
            // oldest event is the oldest waiting.
            let oldest = events.iter().map(|e| e.time).filter(|&t| t > 0).min();
            self.stats
                .oldest_pending_ms
                .store(oldest.unwrap_or(0), Ordering::Relaxed);
            match self.destination.deliver(&events) {
                Ok(()) => {
                    if let Ok(mut s) = self.spool.lock() {
                        if let Err(err) = s.ack(chunk.end) {
                            tracing::error!(sink = %self.name, %err, "sink spool cursor update failed");
                        }
                    }
                    self.stats
                        .delivered
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    backoff = self.retry_initial;
                }
                Err(err) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %self.name, %err, retry_in = ?backoff, "sink delivery failed");
                    if let Ok(mut last) = self.stats.last_error.lock() {
                        *last = Some(err);
                    }
                    if closing {
                        return;
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
    }

    /// Sleep in short steps so `close` is not held up by a long back-off.
    fn sleep(&self, d: Duration) {
        let step = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero()
            && !self.closing.load(Ordering::SeqCst)
            && !self.retire.load(Ordering::SeqCst)
        {
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
    }
}
