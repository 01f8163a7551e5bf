//! From the data path to the store and sinks without ever blocking the data path.
//!
//! ```text
//! EventSender::send ──try_send──► [bounded queue] ──► drainer ──► [batches] ──► writer ──► SQLite
//!                                                        │ full                 ▲   │
//!                                                        └──► overflow spool ───┘   └──► sink spools ──► sink threads
//! ```
//!
//! `send` is a non-blocking channel push that wakes no thread. The drainer only
//! moves events: to the writer when it keeps up (gathered for up to
//! [`HANDOFF_INTERVAL`] while the gateway is busy, so the writer wakes a few
//! times per commit, not once per drain tick), to the on-disk overflow spool
//! when it does not, so the in-memory queue stays short even when SQLite
//! stalls. The writer gathers what arrives for up to [`COMMIT_WINDOW`] and
//! commits it as one transaction (group commit), then hands the same rendered
//! JSON to each sink's spool.
//!
//! Crash safety: the drainer runs every [`JOURNAL_INTERVAL`] and first appends
//! what it took to the write-ahead journal (`journal.rs`, one `write(2)`), so
//! an event is in the kernel about a millisecond after `send`, long before its
//! commit. The writer records how far its commits reached in the journal; the
//! next start stores whatever the journal holds past that (see
//! [`Pipeline::start`]), skipping events the store already has.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{
    self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::EventsConfig;
use crate::error::EventsError;
use crate::event::{now_ms, Event};
use crate::flow::FlowEvent;
use crate::journal::{self, CommitMarker, Journal, JournalSync, Position, Recovery};
use crate::record::Record;
use crate::sink::{SinkStats, Sinks};
use crate::spool::Spool;
use crate::store::{db_path, decode_stored, encode_doc, Checkpointer, PreparedEvent, StoreWriter};

/// Events the drainer moves per tick at most.
const MAX_BATCH: usize = 8192;
/// Events per transaction at most.
const MAX_COMMIT: usize = 32_768;
/// How long the writer gathers events before committing them. Every commit
/// writes each index page it touched to the WAL (and a checkpoint copies it
/// again); events of 1,000 users land on ~1,000 user-index pages whether the
/// commit holds 300 events or 5,000, so fewer, larger commits cut the bytes
/// written per event several times over. Drain tick + window + the commit
/// itself stay well inside the one-second durability bound.
const COMMIT_WINDOW: Duration = Duration::from_millis(300);
/// Events rendered and waiting for the writer at most; beyond this the
/// drainer spills to disk rather than holding more in memory.
const MAX_IN_FLIGHT: usize = 65_536;
/// How often the drainer empties the queue when it is not saturated and the
/// journal is off: events reach the store well within the one-second bound.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// With the journal on, the drainer empties the queue this often and journals
/// what it took: the window in which a `kill -9` can lose a handed-over event.
const JOURNAL_INTERVAL: Duration = Duration::from_millis(1);
/// Empty polls after which the drainer parks until the next event rather than
/// waking every millisecond. One: a gateway serving a few hundred requests a
/// second leaves most 1 ms ticks empty, and each empty tick is two context
/// switches on a CPU the proxy shares. Parked, the first `send` wakes it (one
/// futex wake on the data path, at most once per [`JOURNAL_INTERVAL`]: the
/// drainer then gathers for that interval before it polls again); under load
/// every tick finds events and the drainer never parks.
const IDLE_POLLS: u32 = 1;
/// Batches in flight between drainer and writer (one per hand-off; the
/// writer takes them while it gathers); beyond this the drainer spills.
const BATCH_SLOTS: usize = 64;
/// How long the drainer gathers journaled batches before handing them to the
/// writer while the gateway is busy. The writer gathers for [`COMMIT_WINDOW`]
/// anyway, and the journal (not this hand-off) is what keeps events safe, so
/// handing over every drain tick would only wake the writer a thousand times a
/// second (a futex wake-up and a context switch on the proxy's CPU each).
const HANDOFF_INTERVAL: Duration = Duration::from_millis(50);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Counters for `/metrics`. Plain atomics: read them with `load(Relaxed)`.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events accepted by [`EventSender::send`].
    pub accepted: AtomicU64,
    /// Events moved off the in-memory queue (to the writer or the spool).
    pub drained: AtomicU64,
    /// Events written to the overflow spool because the store fell behind.
    pub spilled: AtomicU64,
    /// Events lost: the queue was full and the spool could not take them (disk failure).
    pub dropped: AtomicU64,
    /// Events committed to the store.
    pub stored: AtomicU64,
    /// Failed store commits (their events were spilled and retried).
    pub store_errors: AtomicU64,
    /// Bytes waiting in the overflow spool (gauge).
    pub spool_bytes: AtomicU64,
    /// Told about events once committed ([`Pipeline::set_stored_hook`]); kept
    /// here because the writer thread already shares this struct.
    pub hook: StoredHookSlot,
}

/// Told about every event the writer commits to the store: the server's
/// response rules match stored events here, on the ingest path.
pub trait StoredHook: Send + Sync {
    /// Runs on the writer thread right after a commit: must not block (hand
    /// the work to another thread).
    fn stored(&self, events: &[PreparedEvent]);
}

/// The installed [`StoredHook`], if any.
#[derive(Default)]
pub struct StoredHookSlot(std::sync::RwLock<Option<Arc<dyn StoredHook>>>);

impl std::fmt::Debug for StoredHookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredHookSlot")
    }
}

impl StoredHookSlot {
    fn stored(&self, events: &[PreparedEvent]) {
        if let Ok(hook) = self.0.read() {
            if let Some(hook) = hook.as_ref() {
                hook.stored(events);
            }
        }
    }
}

impl PipelineStats {
    /// Events currently in the in-memory queue (gauge).
    pub fn queued(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.drained.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            queued: self.queued(),
            spilled: self.spilled.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            store_errors: self.store_errors.load(Ordering::Relaxed),
            spool_bytes: self.spool_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub queued: u64,
    pub spilled: u64,
    pub dropped: u64,
    pub stored: u64,
    pub store_errors: u64,
    pub spool_bytes: u64,
}

/// What the data path hands over.
#[derive(Debug)]
enum Queued {
    /// A flow event already prepared for the store (no sinks need its OCSF form).
    Prepared(PreparedEvent),
    Record(Box<Record>),
}

/// The data path's handle: cheap to clone, `send` never blocks.
#[derive(Clone, Debug)]
pub struct EventSender {
    /// `None` when events are disabled (`[events] enabled = false`).
    // An unbounded channel bounded by `queue_size` through the stats' gauge:
    // it allocates as events queue, where a bounded channel preallocates
    // every slot and keeps them resident at rest.
    tx: Option<Sender<Queued>>,
    queue_size: u64,
    stats: Arc<PipelineStats>,
    /// Set while a sink runs: flows are then handed over whole, else prepared
    /// on the caller's thread (see [`EventSender::send_flow`]).
    sinks_active: Arc<AtomicBool>,
}

impl EventSender {
    /// Hand an event over. Never waits: if the queue is full the event is counted as dropped.
    pub fn send(&self, event: Event) {
        self.send_queued(Queued::Record(Box::new(Record::Event(Box::new(event)))));
    }

    /// Hand an HTTP or network event over in its flow form: cheaper than
    /// [`EventSender::send`] of the OCSF event, which is built only if a sink
    /// needs it. Never waits.
    ///
    /// Without sinks the flow is prepared for the store here, on the caller's
    /// thread (a few hundred nanoseconds): its strings are freed where they
    /// were allocated, and one buffer crosses to the writer instead of a dozen
    /// allocations (see `store/prepared.rs`).
    pub fn send_flow(&self, flow: FlowEvent) {
        if self.tx.is_none() {
            return;
        }
        if !self.sinks_active.load(Ordering::Relaxed) {
            self.send_queued(Queued::Prepared(PreparedEvent::from_flow(&flow)));
        } else {
            self.send_queued(Queued::Record(Box::new(Record::Flow(flow))));
        }
    }

    /// [`EventSender::send_flow`] of a flow the caller keeps (and may reuse):
    /// copied only when sinks need it whole.
    pub fn send_flow_ref(&self, flow: &FlowEvent) {
        if self.tx.is_none() {
            return;
        }
        if !self.sinks_active.load(Ordering::Relaxed) {
            self.send_queued(Queued::Prepared(PreparedEvent::from_flow(flow)));
        } else {
            self.send_queued(Queued::Record(Box::new(Record::Flow(flow.clone()))));
        }
    }

    fn send_queued(&self, queued: Queued) {
        let Some(tx) = &self.tx else {
            return;
        };
        // Senders on other threads may pass this check together: the queue
        // can exceed its bound by at most one event per sending thread.
        if self.stats.queued() >= self.queue_size {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tx.send(queued) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// Whether events are recorded: callers skip building events when not.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}

/// The running pipeline; [`Pipeline::close`] drains and stops it.
pub struct Pipeline {
    stats: Arc<PipelineStats>,
    closing: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    sinks: Arc<Sinks>,
    db: PathBuf,
}

impl Pipeline {
    /// Open the store in `data_dir`, replay any spilled events, start the writer and sinks.
    pub fn start(
        data_dir: &Path,
        config: &EventsConfig,
    ) -> Result<(Pipeline, EventSender), EventsError> {
        config.validate().map_err(|message| EventsError::Sink {
            sink: "config".into(),
            message,
        })?;
        let db = db_path(data_dir);
        if !config.enabled {
            let stats = Arc::new(PipelineStats::default());
            let sender = EventSender {
                tx: None,
                queue_size: 0,
                stats: stats.clone(),
                sinks_active: Arc::new(AtomicBool::new(false)),
            };
            let closing = Arc::new(AtomicBool::new(false));
            let pipeline = Pipeline {
                stats,
                sinks: Arc::new(Sinks::start(&[], data_dir, closing.clone())?),
                closing,
                threads: Vec::new(),
                db,
            };
            return Ok((pipeline, sender));
        }
        // Upgrading a store an older version wrote can take a while: the
        // writer thread does it (`prepare`) while events queue and spill.
        let writer = StoreWriter::open_unprepared(&db, config.full_sync)?;
        writer.set_page_cache(config.page_cache.0)?;
        // Opened before anything is appended: what the last run left is
        // replayed by the writer, and this run writes a fresh segment.
        let (journal, recovery) = if config.journal {
            match Journal::open(&journal::journal_dir(data_dir)) {
                Ok((j, r)) => (Some(j), Some(r)),
                // Another process (an import next to a running server) has
                // it: the store still takes this one's events, unjournaled.
                Err(err @ EventsError::JournalBusy(_)) => {
                    tracing::warn!(%err, "events of this process are not journaled");
                    (None, None)
                }
                Err(err) => return Err(err),
            }
        } else {
            (None, None)
        };
        let journal_sync = journal.as_ref().map(Journal::syncer);
        let writer_journal = match (&journal, recovery) {
            (Some(j), Some(recovery)) => Some(WriterJournal {
                marker: CommitMarker::new(&journal::journal_dir(data_dir)),
                start: j.start(),
                recovery: Some(recovery),
                committed: None,
                to_mark: None,
                last_mark: Instant::now(),
                interval: config.fsync_interval,
                full_sync: config.full_sync,
                usable: true,
            }),
            _ => None,
        };
        let spool = Arc::new(Mutex::new(Spool::open(
            &data_dir.join("spool").join("store"),
            config.spool_max_size.0,
        )?));
        let stats = Arc::new(PipelineStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let sinks = Arc::new(Sinks::start(&config.sinks, data_dir, closing.clone())?);
        let (tx, rx) = mpsc::channel::<Queued>();
        let (btx, brx) = mpsc::sync_channel::<Batch>(BATCH_SLOTS);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let d = Drainer {
            rx,
            journal,
            spare: Vec::new(),
            journal_failed_at: None,
            sinks: sinks.clone(),
            btx,
            gathered: None,
            in_flight: in_flight.clone(),
            spool: spool.clone(),
            stats: stats.clone(),
            closing: closing.clone(),
        };
        threads.push(spawn("rampart-events-drain", move || d.run())?);
        let w = Writer {
            brx,
            in_flight,
            store: writer,
            spool,
            sinks: sinks.clone(),
            stats: stats.clone(),
            closing: closing.clone(),
            max_age_ms: config.max_age.map(|d| d.as_millis() as i64),
            max_bytes: config.max_size.map(|b| b.0),
            journal: writer_journal,
        };
        threads.push(spawn("rampart-events-write", move || w.run())?);
        let checkpointer = Checkpointer::open(&db)?;
        let stop = closing.clone();
        let fsync_interval = config.fsync_interval;
        threads.push(spawn("rampart-events-checkpoint", move || {
            // The journal's fsync runs here, off the drainer: an fsync that
            // takes milliseconds never delays the next journal batch.
            let tick = fsync_interval.min(Duration::from_millis(250));
            let mut last_sync = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(tick);
                if let Some(sync) = &journal_sync {
                    if last_sync.elapsed() >= fsync_interval {
                        last_sync = Instant::now();
                        sync_journal(sync);
                    }
                }
                checkpointer.run();
            }
        })?);
        let sender = EventSender {
            tx: Some(tx),
            queue_size: config.queue_size.max(1) as u64,
            stats: stats.clone(),
            sinks_active: sinks.active_flag(),
        };
        Ok((
            Pipeline {
                stats,
                closing,
                threads,
                sinks,
                db,
            },
            sender,
        ))
    }

    /// Install the hook told about every committed event (replacing any).
    pub fn set_stored_hook(&self, hook: Arc<dyn StoredHook>) {
        if let Ok(mut slot) = self.stats.hook.0.write() {
            *slot = Some(hook);
        }
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// Per-sink counters, by sink name.
    pub fn sink_stats(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.sinks.stats()
    }

    /// The running sinks, to change them in place (a reload).
    pub fn sinks(&self) -> Arc<Sinks> {
        self.sinks.clone()
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// Wait until at least `n` events are stored (tests, benchmarks, orderly shutdown).
    pub fn wait_stored(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.stats.stored.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Store what is queued, stop the threads. Sinks keep undelivered events in
    /// their spools for the next start.
    pub fn close(self) {
        self.closing.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        // After the writer: the last batches are in their spools by now.
        for t in self.sinks.take_threads() {
            let _ = t.join();
        }
    }
}

fn sync_journal(sync: &JournalSync) {
    if let Err(err) = sync.sync() {
        tracing::warn!(%err, "event journal fsync failed; events stay safe from a crash, not from power loss");
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, EventsError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| EventsError::Io {
            path: PathBuf::from(name),
            source: e,
        })
}

/// Events prepared for the store ([`PreparedEvent`]), on the drainer's thread
/// so the writer spends its time in SQLite (flow events mostly arrive
/// prepared by the data path). With sinks configured, flow records are turned
/// into OCSF events and every event's JSON is rendered once, for the store and
/// the sinks alike; without sinks nothing renders JSON.
#[derive(Default)]
struct Batch {
    events: Vec<PreparedEvent>,
    /// The full events, for the sinks (with sinks only; empty otherwise).
    // Boxed records: they arrive boxed from the channel, and moving a box is a
    // pointer copy where moving a record is over a kilobyte.
    #[allow(clippy::vec_box)]
    records: Vec<Box<Record>>,
    /// The records' JSON (with sinks only; empty otherwise).
    docs: Vec<String>,
    /// Where the journal ends after these events: once they are committed
    /// the store has everything before it.
    journal_end: Option<Position>,
}

impl Batch {
    /// Takes every queued event out of `queued` (left empty, its capacity kept).
    fn encode(queued: &mut Vec<Queued>, for_sinks: bool) -> Batch {
        let mut batch = Batch {
            events: Vec::with_capacity(queued.len()),
            ..Batch::default()
        };
        for q in queued.drain(..) {
            let record = match q {
                Queued::Prepared(p) if !for_sinks => {
                    batch.events.push(p);
                    continue;
                }
                // Not sent prepared while sinks run; kept all the same.
                Queued::Prepared(p) => match decode_stored(p.stored()) {
                    Ok(r) => Box::new(r),
                    Err(_) => {
                        batch.events.push(p);
                        continue;
                    }
                },
                Queued::Record(r) => r,
            };
            match (*record, for_sinks) {
                (Record::Flow(f), false) => batch.events.push(PreparedEvent::from_flow(&f)),
                (Record::Event(e), false) => batch
                    .events
                    .push(PreparedEvent::new(&*e, &encode_doc(&render_json(&e)))),
                (r, true) => {
                    let event = match r {
                        Record::Flow(f) => f.event(),
                        Record::Event(e) => *e,
                    };
                    let doc = render_json(&event);
                    batch
                        .events
                        .push(PreparedEvent::new(&event, &encode_doc(&doc)));
                    batch.docs.push(doc);
                    batch.records.push(Box::new(Record::Event(Box::new(event))));
                }
            }
        }
        batch
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn append(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.records.extend(other.records);
        self.docs.extend(other.docs);
        self.journal_end = self.journal_end.max(other.journal_end);
    }

    /// Every event as an overflow-spool line: its stored form (see [`stored_line`]).
    fn spool_lines(&self) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .map(|e| stored_line(e.stored()))
            .collect()
    }
}

/// Overflow-spool lines start with this, followed by the event's stored form
/// in base64 (the flow record of HTTP and network events, compressed JSON of
/// the others): spilling and replaying them costs no JSON, which matters most
/// exactly when the store is behind. OCSF JSON lines, written by older
/// versions, start with `{` and are still read.
const STORED_LINE_PREFIX: &[u8] = b"F:";

fn stored_line(stored: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let mut line = STORED_LINE_PREFIX.to_vec();
    line.extend_from_slice(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(stored)
            .as_bytes(),
    );
    line
}

/// A spooled line back as a record and its stored form. `pub(crate)` for the
/// `spool_line` fuzz target (`crate::fuzzing`).
pub(crate) fn parse_spool_line(line: &[u8]) -> Result<(Record, Vec<u8>), String> {
    if let Some(b64) = line.strip_prefix(STORED_LINE_PREFIX) {
        use base64::Engine;
        let stored = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_err(|e| e.to_string())?;
        let record = decode_stored(&stored).map_err(|e| e.to_string())?;
        return Ok((record, stored));
    }
    let json = std::str::from_utf8(line).map_err(|e| e.to_string())?;
    let event: Event = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok((Record::Event(Box::new(event)), encode_doc(json)))
}

/// An event's OCSF JSON. Sized for a typical document up front: growing from
/// serde_json's default capacity reallocates several times per event.
fn render_json(e: &Event) -> String {
    let mut buf = Vec::with_capacity(2048);
    match serde_json::to_writer(&mut buf, e) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(buf).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

struct Drainer {
    rx: Receiver<Queued>,
    /// The write-ahead journal (`[events] journal`, on by default).
    journal: Option<Journal>,
    /// The previous tick's event list, emptied: reused so a busy tick does
    /// not grow a new one from nothing.
    spare: Vec<Queued>,
    /// When a journal write last failed (logged at most every 10 s).
    journal_failed_at: Option<Instant>,
    /// While any sink runs, every event is rendered as OCSF JSON.
    sinks: Arc<Sinks>,
    btx: SyncSender<Batch>,
    /// Journaled batches gathered for the writer (see [`HANDOFF_INTERVAL`]),
    /// and when the first of them came.
    gathered: Option<(Batch, Instant)>,
    /// Events handed to the writer (or gathered for it) and not yet committed
    /// (or spilled).
    in_flight: Arc<AtomicUsize>,
    spool: Arc<Mutex<Spool>>,
    stats: Arc<PipelineStats>,
    closing: Arc<AtomicBool>,
}

impl Drainer {
    fn run(mut self) {
        let mut saturated = false;
        let mut empty_polls = 0u32;
        loop {
            // Hand over what was gathered once it is old enough, or before
            // this thread may park (an idle tick: nothing else would come to
            // push it out), or at close.
            let due = self.gathered.as_ref().is_some_and(|(b, since)| {
                empty_polls > 0 || b.len() >= MAX_BATCH || since.elapsed() >= HANDOFF_INTERVAL
            });
            if due || self.closing.load(Ordering::SeqCst) {
                self.hand_over();
            }
            // Poll on a short timer rather than parking in `recv`: a parked
            // receiver makes every `send` on the data path pay a futex wake-up.
            // With the journal, park only once the gateway is idle.
            let mut batch = std::mem::take(&mut self.spare);
            if self.journal.is_some() && empty_polls >= IDLE_POLLS {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(r) => {
                        batch.push(r);
                        // Woken by the first event after a quiet spell: gather
                        // for one interval (its bound: it is journaled within
                        // it) rather than writing each event of a trickle alone.
                        std::thread::sleep(JOURNAL_INTERVAL);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        if self.closing.load(Ordering::SeqCst) {
                            self.finish();
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            } else if !saturated {
                std::thread::sleep(if self.journal.is_some() {
                    JOURNAL_INTERVAL
                } else {
                    DRAIN_INTERVAL
                });
            }
            let closing = self.closing.load(Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) if batch.is_empty() => {
                    if closing {
                        self.finish();
                        return;
                    }
                    // Every sender is gone: nothing more will come; wait for close.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(TryRecvError::Disconnected) => {}
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            saturated = batch.len() >= MAX_BATCH;
            empty_polls = if batch.is_empty() {
                empty_polls.saturating_add(1)
            } else {
                0
            };
            if !batch.is_empty() {
                self.stats
                    .drained
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let n = batch.len();
                let encoded = Batch::encode(&mut batch, self.sinks.is_active());
                // Emptied, its capacity kept for the next tick.
                self.spare = batch;
                let mut batch = encoded;
                batch.journal_end = self.journal(&batch);
                // Gathered events count as in flight: the bound holds for
                // everything in memory between the queue and the store.
                if self.in_flight.load(Ordering::Relaxed) + n > MAX_IN_FLIGHT {
                    self.spill(batch);
                } else {
                    self.in_flight.fetch_add(n, Ordering::Relaxed);
                    match self.gathered.as_mut() {
                        Some((pending, _)) => pending.append(batch),
                        None => self.gathered = Some((batch, Instant::now())),
                    }
                }
            } else if closing {
                self.finish();
                return;
            }
        }
    }

    /// Give the gathered batches (already counted in `in_flight`) to the
    /// writer, or to the spool when it has no room.
    fn hand_over(&mut self) {
        let Some((batch, _)) = self.gathered.take() else {
            return;
        };
        let n = batch.len();
        match self.btx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                self.in_flight.fetch_sub(n, Ordering::Relaxed);
                self.spill(b)
            }
        }
    }

    /// Append the batch's events to the journal: in the kernel on return.
    /// A failed write is logged (not on every batch) and the events go on
    /// to the store all the same: only their crash safety is lost.
    fn journal(&mut self, batch: &Batch) -> Option<Position> {
        let journal = self.journal.as_mut()?;
        match journal.append(batch.events.iter().map(PreparedEvent::stored)) {
            Ok(end) => Some(end),
            Err(err) => {
                if self
                    .journal_failed_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    self.journal_failed_at = Some(Instant::now());
                    tracing::error!(%err, events = batch.len(), "event journal write failed; these events are lost if the process crashes before they are stored");
                }
                None
            }
        }
    }

    /// On close: hand over what was gathered and make the journal durable
    /// (the sync thread may stop first).
    fn finish(&mut self) {
        self.hand_over();
        if let Some(journal) = self.journal.as_mut() {
            sync_journal(&journal.syncer());
        }
    }

    fn spill(&self, batch: Batch) {
        let n = batch.len() as u64;
        let lines = batch.spool_lines();
        let result = match self.spool.lock() {
            Ok(mut s) => {
                let r = s.append(lines.iter().map(|l| l.as_slice()));
                self.stats
                    .spool_bytes
                    .store(s.pending_bytes(), Ordering::Relaxed);
                r
            }
            Err(_) => return,
        };
        match result {
            Ok(()) => {
                self.stats.spilled.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) => {
                tracing::error!(%err, events = n, "event spool write failed; events dropped");
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    brx: Receiver<Batch>,
    in_flight: Arc<AtomicUsize>,
    store: StoreWriter,
    spool: Arc<Mutex<Spool>>,
    sinks: Arc<Sinks>,
    stats: Arc<PipelineStats>,
    closing: Arc<AtomicBool>,
    max_age_ms: Option<i64>,
    max_bytes: Option<u64>,
    journal: Option<WriterJournal>,
}

/// The writer's side of the journal: the previous run's tail to replay, and
/// the committed marker.
struct WriterJournal {
    recovery: Option<Recovery>,
    marker: CommitMarker,
    /// Where this run's journal starts: once the previous run's tail is
    /// stored, everything before it is committed.
    start: Position,
    /// How far committed batches reach in the journal.
    committed: Option<Position>,
    /// What `committed` was at the previous marker update: the next one writes it.
    to_mark: Option<Position>,
    last_mark: Instant,
    interval: Duration,
    /// Commits are fsynced: the marker need not lag behind them.
    full_sync: bool,
    /// False when the previous run's tail could not be stored: the marker is
    /// then left alone, so the next start tries again.
    usable: bool,
}

impl WriterJournal {
    fn committed(&mut self, end: Option<Position>) {
        self.committed = self.committed.max(end);
    }

    /// Every `fsync_interval`, persist how far the store has committed. The
    /// marker lags one interval behind (unless `full_sync`): by then the
    /// checkpointer has fsynced those commits, so power loss cannot take an
    /// event from the store after the journal let it go.
    fn mark(&mut self, force: bool) {
        if !self.usable || (!force && self.last_mark.elapsed() < self.interval) {
            return;
        }
        self.last_mark = Instant::now();
        let pos = if self.full_sync {
            self.committed
        } else {
            std::mem::replace(&mut self.to_mark, self.committed)
        };
        if let Some(pos) = pos {
            if let Err(err) = self.marker.write(pos) {
                tracing::warn!(%err, "event journal marker update failed; a restart replays more (duplicates are skipped)");
            }
        }
    }
}

impl Writer {
    fn run(mut self) {
        if let Err(err) = self.store.prepare() {
            // Each commit tries again; until then batches go to the spool.
            tracing::error!(%err, "event store upgrade failed");
        }
        self.replay_journal();
        let mut last_retention = Instant::now() - RETENTION_EVERY;
        let mut disconnected = false;
        loop {
            let mut pending = Batch::default();
            match self.brx.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => pending = b,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            // Group commit: gather for COMMIT_WINDOW from the first event (or
            // until the transaction is full, or the pipeline closes).
            let deadline = Instant::now() + COMMIT_WINDOW;
            while pending.len() > 0 && pending.len() < MAX_COMMIT {
                let now = Instant::now();
                if now >= deadline || self.closing.load(Ordering::Relaxed) {
                    break;
                }
                match self.brx.recv_timeout(deadline - now) {
                    Ok(b) => pending.append(b),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if pending.len() > 0 {
                let n = pending.len();
                self.commit(pending);
                self.in_flight.fetch_sub(n, Ordering::Relaxed);
            } else if !self.replay_spool() && disconnected {
                self.finish();
                return;
            }
            if last_retention.elapsed() >= RETENTION_EVERY {
                last_retention = Instant::now();
                self.retention();
            }
            if let Some(j) = self.journal.as_mut() {
                j.mark(false);
            }
            if disconnected && self.closing.load(Ordering::SeqCst) {
                // Drain the spool before stopping, within reason.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.replay_spool() {}
                self.finish();
                return;
            }
        }
    }

    /// On close: mark everything committed in the journal.
    fn finish(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            // Once the checkpoint has fsynced the WAL, every commit is
            // durable and the marker may say so without lagging.
            if self.store.checkpoint().is_ok() {
                j.to_mark = j.committed;
                j.mark(true);
            }
        }
    }

    /// Store what the previous run journaled and the store had not committed
    /// (a `kill -9`, a crash, power loss after the last fsync). Events the
    /// store already has are skipped by id, so a replay interrupted by another
    /// crash is simply done again.
    fn replay_journal(&mut self) {
        let Some(recovery) = self.journal.as_mut().and_then(|j| j.recovery.take()) else {
            return;
        };
        if recovery.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut stored = 0u64;
        let mut unreadable = 0u64;
        let result = recovery.replay(|payloads| {
            let mut records = Vec::with_capacity(payloads.len());
            let mut prepared = Vec::with_capacity(payloads.len());
            for p in payloads {
                match decode_stored(p) {
                    Ok(record) => {
                        prepared.push(PreparedEvent::new(&record, p));
                        records.push(record);
                    }
                    // Intact by its checksum, yet not an event: written by a
                    // newer version, or damage the checksum missed.
                    Err(_) => unreadable += 1,
                }
            }
            let n = self.store.insert_prepared(&prepared)?;
            stored += n as u64;
            self.stats.stored.fetch_add(n as u64, Ordering::Relaxed);
            // Sinks are at least once: events the store already had may be
            // delivered again.
            self.feed_records(&records);
            Ok(())
        });
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        match result {
            Ok((read, damaged)) => {
                j.committed(Some(j.start));
                tracing::info!(
                    journaled = read,
                    stored,
                    unreadable,
                    damaged_segments = damaged,
                    ms = started.elapsed().as_millis() as u64,
                    "event journal replayed"
                );
                if unreadable > 0 {
                    self.stats.dropped.fetch_add(unreadable, Ordering::Relaxed);
                }
            }
            Err(err) => {
                j.usable = false;
                tracing::error!(%err, "event journal replay failed; it is kept and replayed at the next start");
            }
        }
    }

    /// Hand replayed records to the sinks (as full events with their JSON).
    fn feed_records(&self, records: &[Record]) {
        if !self.sinks.is_active() || records.is_empty() {
            return;
        }
        let events: Vec<Event> = records.iter().map(|r| r.to_event().into_owned()).collect();
        let docs: Vec<String> = events.iter().map(render_json).collect();
        let events: Vec<&Event> = events.iter().collect();
        self.sinks.with_feeds(|feeds| {
            for feed in feeds {
                feed.push(&events, &docs);
            }
        });
    }

    /// Store a batch; on failure spill it so nothing is lost, and back off.
    fn commit(&mut self, batch: Batch) {
        let n = batch.len();
        match self.store.insert_prepared(&batch.events) {
            Ok(_) => {
                if let Some(j) = self.journal.as_mut() {
                    j.committed(batch.journal_end);
                }
                self.stats.stored.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.hook.stored(&batch.events);
                // A batch encoded while sinks ran has every record as a full
                // event with its JSON (see `Batch::encode`); one encoded before
                // the first sink was added has none, and feeds nothing.
                if batch.docs.len() == batch.records.len() && !batch.docs.is_empty() {
                    let events: Vec<&Event> =
                        batch.records.iter().filter_map(|r| r.as_event()).collect();
                    if events.len() == batch.docs.len() {
                        self.sinks.with_feeds(|feeds| {
                            for feed in feeds {
                                feed.push(&events, &batch.docs);
                            }
                        });
                    }
                }
            }
            Err(err) => {
                tracing::error!(%err, events = n, "event store commit failed; spilling");
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                let lines = batch.spool_lines();
                if let Ok(mut s) = self.spool.lock() {
                    let counter = match s.append(lines.iter().map(|l| l.as_slice())) {
                        Ok(()) => &self.stats.spilled,
                        Err(_) => &self.stats.dropped,
                    };
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Move one chunk from the overflow spool into the store. Returns whether there was any.
    fn replay_spool(&mut self) -> bool {
        let chunk = match self.spool.lock() {
            Ok(mut s) => {
                self.stats
                    .spool_bytes
                    .store(s.pending_bytes(), Ordering::Relaxed);
                match s.read(MAX_BATCH) {
                    Ok(c) => c,
                    Err(err) => {
                        tracing::error!(%err, "event spool read failed");
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let Some(chunk) = chunk else {
            return false;
        };
        let mut records = Vec::with_capacity(chunk.lines.len());
        let mut prepared = Vec::with_capacity(chunk.lines.len());
        for line in &chunk.lines {
            match parse_spool_line(line) {
                Ok((record, stored)) => {
                    prepared.push(PreparedEvent::new(&record, &stored));
                    records.push(record);
                }
                Err(err) => {
                    tracing::error!(%err, "unreadable event in the overflow spool; skipped");
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        match self.store.insert_prepared(&prepared) {
            Ok(_) => {
                self.stats
                    .stored
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                self.stats.hook.stored(&prepared);
                self.feed_records(&records);
                if let Ok(mut s) = self.spool.lock() {
                    if let Err(err) = s.ack(chunk.end) {
                        tracing::error!(%err, "event spool cursor update failed");
                    }
                    self.stats
                        .spool_bytes
                        .store(s.pending_bytes(), Ordering::Relaxed);
                }
                true
            }
            Err(err) => {
                tracing::error!(%err, "event store commit of spooled events failed");
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        }
    }

    fn retention(&mut self) {
        if self.max_age_ms.is_none() && self.max_bytes.is_none() {
            return;
        }
        match self
            .store
            .enforce_retention(now_ms(), self.max_age_ms, self.max_bytes)
        {
            Ok(r) if r.expired + r.evicted_for_size > 0 => {
                tracing::info!(
                    expired = r.expired,
                    evicted = r.evicted_for_size,
                    "event retention"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "event retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowKind, FlowSummary};

    fn flow() -> FlowEvent {
        let mut s = FlowSummary::new(crate::event::new_flow_id(), 1_763_900_000_000);
        s.user = Some("alice".into());
        s.url = Some("https://a.example/x".into());
        FlowEvent::new(FlowKind::Http, s)
    }

    #[test]
    fn spool_lines_round_trip_flow_records_and_other_events() {
        let f = flow();
        let e = f.summary.network_event();
        let batch = Batch::encode(
            &mut vec![
                Queued::Prepared(PreparedEvent::from_flow(&f)),
                Queued::Record(Box::new(Record::Flow(f.clone()))),
                Queued::Record(Box::new(Record::Event(Box::new(e.clone())))),
            ],
            false,
        );
        assert_eq!(batch.events[0], batch.events[1]);
        let lines = batch.spool_lines();
        assert!(lines.iter().all(|l| l.starts_with(STORED_LINE_PREFIX)));
        match parse_spool_line(&lines[0]).unwrap() {
            (Record::Flow(back), stored) => {
                assert_eq!(back, f);
                assert_eq!(stored, batch.events[0].stored());
            }
            other => panic!("{other:?}"),
        }
        match parse_spool_line(&lines[2]).unwrap().0 {
            Record::Event(back) => assert_eq!(*back, e),
            other => panic!("{other:?}"),
        }
        // Lines older versions wrote as OCSF JSON still read back.
        match parse_spool_line(render_json(&e).as_bytes()).unwrap().0 {
            Record::Event(back) => assert_eq!(*back, e),
            other => panic!("{other:?}"),
        }
    }

    /// With sinks, every event reaches the batch as a full OCSF event with its
    /// JSON, prepared flows included, and is stored from that same JSON.
    #[test]
    fn with_sinks_every_event_is_rendered_once_for_store_and_sinks() {
        let f = flow();
        let batch = Batch::encode(
            &mut vec![
                Queued::Prepared(PreparedEvent::from_flow(&f)),
                Queued::Record(Box::new(Record::Flow(f.clone()))),
            ],
            true,
        );
        assert_eq!(
            (batch.len(), batch.records.len(), batch.docs.len()),
            (2, 2, 2)
        );
        for (i, p) in batch.events.iter().enumerate() {
            assert_eq!(p.id(), f.id);
            assert_eq!(batch.records[i].as_event(), Some(&f.event()));
            match decode_stored(p.stored()).unwrap() {
                Record::Event(back) => assert_eq!(*back, f.event()),
                other => panic!("{other:?}"),
            }
            assert_eq!(batch.docs[i], render_json(&f.event()));
        }
    }

    /// A flow line whose stored form is compressed JSON (the encoder's fallback)
    /// still reads back, as the full event.
    #[test]
    fn a_flow_line_holding_another_stored_form_is_not_lost() {
        let e = flow().event();
        let line = stored_line(&encode_doc(&render_json(&e)));
        match parse_spool_line(&line).unwrap().0 {
            Record::Event(back) => assert_eq!(*back, e),
            other => panic!("{other:?}"),
        }
        assert!(parse_spool_line(b"F:!!not base64").is_err());
        assert!(parse_spool_line(b"{\"not\": \"an event\"}").is_err());
    }
}
