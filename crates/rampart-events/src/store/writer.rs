//! The single writer: batched inserts and retention.

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::hourly::{self, HourlyBuilder};
use super::postings::{self, PostingsBuilder, BLOCK_EVENTS};
use super::prepared::{indexed_values, PreparedEvent};
use super::schema::{self, INDEXED};
use super::segment::{self, Segment, SegmentBuilder};
use super::{doc, migrate};
use crate::error::EventsError;
use crate::event::Event;

/// Segments deleted per retention transaction, so one pass never holds the write lock long.
const RETENTION_CHUNK: i64 = 256;

/// The writer's page cache unless `[events] page_cache` says otherwise. The
/// writer's working set is small (the right edges of the segment and index
/// b-trees, the postings of the block being filled, the hourly rows of the
/// current hour), but SQLite keeps every page it touched until the cache is
/// full, so the cap, not the working set, decides how much memory a gateway
/// holds once its database is larger than the cap.
pub const DEFAULT_PAGE_CACHE_BYTES: u64 = 16 << 20;

/// Below this the writer would reread its own index pages on every insert.
pub const MIN_PAGE_CACHE_BYTES: u64 = 1 << 20;

pub struct StoreWriter {
    conn: Connection,
    path: PathBuf,
    /// Postings of the block being filled, built as rows are inserted so
    /// closing a block writes them without reading the block back. `None`
    /// after an error or at start: reloaded from the stored rows.
    filling: Option<BlockPostings>,
    /// Whether [`StoreWriter::prepare`] has run.
    prepared: bool,
}

/// Copies committed WAL pages into the database file in the background, so the
/// writer never waits for a checkpoint's fsyncs.
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Checkpointer, EventsError> {
        let conn = Connection::open(path).map_err(|source| EventsError::Store {
            path: path.to_path_buf(),
            source,
        })?;
        let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
        Ok(Checkpointer { conn })
    }

    /// One passive checkpoint: never blocks the writer or readers.
    pub fn run(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub expired: u64,
    pub evicted_for_size: u64,
}

impl StoreWriter {
    /// Open or create the store at `path` (the parent directory is created),
    /// ready to insert: see [`StoreWriter::prepare`].
    /// `full_sync` fsyncs every commit (power-loss durability) instead of relying
    /// on the OS to keep committed WAL pages after a process crash.
    pub fn open(path: &Path, full_sync: bool) -> Result<StoreWriter, EventsError> {
        let mut w = StoreWriter::open_unprepared(path, full_sync)?;
        w.prepare()?;
        Ok(w)
    }

    /// Open or create the store without [`StoreWriter::prepare`]: quick even
    /// for a store an older version wrote, so the data path can start while
    /// the writer thread upgrades it (events queue and spill meanwhile).
    pub fn open_unprepared(path: &Path, full_sync: bool) -> Result<StoreWriter, EventsError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| EventsError::Io {
                path: parent.to_path_buf(),
                source: e,
            })?;
        }
        let store_err = |source| EventsError::Store {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(store_err)?;
        // auto_vacuum has to be set before WAL and before the table exists.
        schema::create(&conn).map_err(store_err)?;
        schema::configure(&conn, full_sync).map_err(store_err)?;
        // Checkpoints (and their fsyncs) run on the checkpointer's connection, off
        // the insert path; this bound (1 GiB of WAL) is only a safety net.
        conn.pragma_update(None, "wal_autocheckpoint", 262_144)
            .and_then(|_| conn.pragma_update(None, "journal_size_limit", 256i64 << 20))
            .map_err(store_err)?;
        conn.set_prepared_statement_cache_capacity(32);
        let w = StoreWriter {
            conn,
            path: path.to_path_buf(),
            filling: None,
            prepared: false,
        };
        w.set_page_cache(DEFAULT_PAGE_CACHE_BYTES)?;
        Ok(w)
    }

    /// Cap the writer's SQLite page cache at `bytes` (rounded down to whole
    /// KiB, at least [`MIN_PAGE_CACHE_BYTES`]). Pages beyond the cap are
    /// evicted least recently used first; a smaller cap frees memory at once.
    pub fn set_page_cache(&self, bytes: u64) -> Result<(), EventsError> {
        let kib = (bytes.max(MIN_PAGE_CACHE_BYTES) / 1024).min(i64::MAX as u64) as i64;
        // A negative cache_size is a size in KiB rather than a number of pages.
        self.conn
            .pragma_update(None, "cache_size", -kib)
            .map_err(|e| self.err(e))
    }

    /// The page cache's cap in bytes, as SQLite has it (`PRAGMA cache_size`).
    pub fn page_cache(&self) -> Result<u64, EventsError> {
        let size: i64 = self
            .conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if size < 0 {
            return Ok(size.unsigned_abs() * 1024);
        }
        // A positive value counts pages.
        let page: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(size as u64 * page.max(0) as u64)
    }

    /// Bring the store up to date before the first insert (once; inserts call
    /// it too): rows of schemas 1–3 move into segments (an interrupted move
    /// resumes), postings built for other fields are rebuilt, blocks left
    /// unindexed are indexed, and the block being filled is loaded.
    pub fn prepare(&mut self) -> Result<(), EventsError> {
        if self.prepared {
            return Ok(());
        }
        let path = self.path.clone();
        let store_err = |source| EventsError::Store {
            path: path.clone(),
            source,
        };
        hourly::start(&self.conn, crate::event::now_ms()).map_err(store_err)?;
        migrate::legacy_rows(&mut self.conn).map_err(store_err)?;
        migrate::indexed_fields(&mut self.conn).map_err(store_err)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let max_seq = max_seq(&tx).map_err(store_err)?;
        index_closed_blocks(&tx, max_seq).map_err(store_err)?;
        // The block being filled, in case its postings are missing (a store
        // moved from schema 3 had an unindexed tail); kept for the next insert.
        let filling = BlockPostings::read(&tx, schema::next_block(&tx).map_err(store_err)?)
            .map_err(store_err)?;
        if filling.count > 0 {
            filling.write(&tx).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)?;
        self.filling = Some(filling);
        self.prepared = true;
        Ok(())
    }

    fn err(&self, source: rusqlite::Error) -> EventsError {
        EventsError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Insert `events` in one transaction. Events already stored (same id) are
    /// ignored, so replaying a spool after a crash never duplicates.
    pub fn insert(&mut self, events: &[Event]) -> Result<usize, EventsError> {
        let docs = events
            .iter()
            .map(|e| {
                serde_json::to_string(e)
                    .map_err(|err| EventsError::BadDocument(e.id().to_string(), err))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_with_docs(events, &docs)
    }

    /// Like [`StoreWriter::insert`], with each event's JSON already rendered.
    pub fn insert_with_docs(
        &mut self,
        events: &[Event],
        docs: &[String],
    ) -> Result<usize, EventsError> {
        let prepared: Vec<PreparedEvent> = events
            .iter()
            .zip(docs)
            .map(|(e, d)| PreparedEvent::new(e, &doc::encode(d)))
            .collect();
        self.insert_prepared(&prepared)
    }

    /// Insert events prepared for the store (the pipeline prepares them off
    /// the writer thread, most on the data path). Events already stored (same
    /// id) are ignored.
    pub fn insert_prepared(&mut self, events: &[PreparedEvent]) -> Result<usize, EventsError> {
        self.prepare()?;
        let path = self.path.clone();
        let wrap = |source| EventsError::Store {
            path: path.clone(),
            source,
        };
        // IMMEDIATE: the seqs below are chosen from what this transaction reads,
        // so no other connection may write in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wrap)?;
        // Seqs are assigned here: a new seq never falls into a block that is
        // already indexed, even after retention emptied the store.
        let mut seq = max_seq(&tx)
            .and_then(|m| Ok(m.max(schema::next_block(&tx)? * BLOCK_EVENTS)))
            .map_err(wrap)?;
        index_closed_blocks(&tx, seq).map_err(wrap)?;
        let Known {
            mut stored,
            repeated,
        } = known_ids(&tx, events).map_err(wrap)?;
        // Taken: an error below leaves `None`, and the next call reloads.
        let block = seq / BLOCK_EVENTS;
        let mut filling = match self.filling.take() {
            Some(f) if f.block == block => f,
            _ => BlockPostings::read(&tx, block).map_err(wrap)?,
        };
        let mut segment = SegmentBuilder::default();
        let mut segment_first = seq + 1;
        let mut inserted = 0;
        let mut summary = HourlyBuilder::default();
        for event in events {
            let id = event.id();
            // Already stored (a replayed spool, a retried upload): skip it.
            if stored.contains(id.as_bytes()) {
                continue;
            }
            // Twice in this batch: the first one is stored, later ones skipped.
            if repeated.contains(id.as_bytes()) {
                stored.insert(*id.as_bytes());
            }
            let time = event.time();
            seq += 1;
            inserted += 1;
            segment.push(id, time, event.stored());
            filling.add(seq, time, event.indexed());
            summary.add(time, event.indexed().chain(event.summary()));
            if segment.is_full() {
                write_segment(&tx, segment_first, &mut segment).map_err(wrap)?;
                segment_first = seq + 1;
            }
            if seq == postings::block_seqs(filling.block).1 {
                // The block's last seq: it is complete, index it now.
                let next = BlockPostings::new(filling.block + 1);
                std::mem::replace(&mut filling, next)
                    .write(&tx)
                    .map_err(wrap)?;
                set_next_block(&tx, filling.block).map_err(wrap)?;
            }
        }
        if !segment.is_empty() {
            write_segment(&tx, segment_first, &mut segment).map_err(wrap)?;
        }
        // The block being filled is indexed as far as it goes, so every
        // committed event is found through postings.
        if filling.count > 0 && inserted > 0 {
            filling.write(&tx).map_err(wrap)?;
        }
        summary.write(&tx).map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        self.filling = Some(filling);
        Ok(inserted)
    }

    /// Copy committed WAL pages into the database, fsyncing the WAL first:
    /// after it, every commit so far survives power loss (the journal's
    /// committed marker relies on this at shutdown).
    pub fn checkpoint(&self) -> Result<(), EventsError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    /// Delete events older than `max_age_ms` and, while the database is larger
    /// than `max_bytes`, the oldest events; then return freed pages to the OS.
    ///
    /// Whole segments go: a segment leaves once its newest event is older than
    /// the limit, so an event can outlive the limit by the time span of its
    /// segment (one commit of the writer: a second or less on a live gateway).
    pub fn enforce_retention(
        &mut self,
        now_ms: i64,
        max_age_ms: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<RetentionReport, EventsError> {
        let mut report = RetentionReport::default();
        if let Some(age) = max_age_ms {
            let cutoff = now_ms.saturating_sub(age);
            loop {
                let (segments, events) = self
                    .delete_oldest(cutoff, RETENTION_CHUNK)
                    .map_err(|e| self.err(e))?;
                report.expired += events;
                if segments < RETENTION_CHUNK {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes {
            // Bounded loop: each round removes ~5% of the segments.
            for _ in 0..64 {
                if self.live_bytes()? <= max {
                    break;
                }
                let segments: i64 = self
                    .conn
                    .query_row("SELECT count(*) FROM segments", [], |r| r.get(0))
                    .map_err(|e| self.err(e))?;
                if segments == 0 {
                    break;
                }
                let (_, events) = self
                    .delete_oldest(i64::MAX, (segments / 20).max(1))
                    .map_err(|e| self.err(e))?;
                report.evicted_for_size += events;
            }
        }
        if report.expired + report.evicted_for_size > 0 {
            // The block being filled may have lost events: rebuild it from
            // what is stored at the next insert.
            self.filling = None;
            // Postings of blocks with no event left; a partly emptied block keeps
            // its postings (they point at a few missing seqs, which find nothing).
            let first_live = "(SELECT coalesce((min(seg) - 1) / ?1, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_block'), 0) FROM segments)";
            self.conn
                .execute(
                    &format!("DELETE FROM postings WHERE block < {first_live}"),
                    [BLOCK_EVENTS],
                )
                .and_then(|_| {
                    self.conn.execute(
                        &format!("DELETE FROM blocks WHERE block < {first_live}"),
                        [BLOCK_EVENTS],
                    )
                })
                .map_err(|e| self.err(e))?;
            // Hours before the oldest stored event; with none left, hours
            // before what age retention allows (everything, for size alone).
            let oldest: Option<i64> = self
                .conn
                .query_row("SELECT min(min_time) FROM segments", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            let keep_from = oldest
                .unwrap_or_else(|| max_age_ms.map_or(now_ms, |age| now_ms.saturating_sub(age)));
            hourly::prune(&self.conn, keep_from).map_err(|e| self.err(e))?;
            self.conn
                .execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|e| self.err(e))?;
        }
        Ok(report)
    }

    /// Delete up to `limit` segments whose newest event is older than
    /// `before`, oldest first, in one transaction: (segments, events) deleted.
    fn delete_oldest(&mut self, before: i64, limit: i64) -> rusqlite::Result<(i64, u64)> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let doomed: Vec<(i64, i64)> = tx
            .prepare_cached(
                "SELECT seg, events FROM segments WHERE max_time < ?1 ORDER BY max_time LIMIT ?2",
            )?
            .query_map((before, limit), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        {
            let mut meta = tx.prepare_cached("DELETE FROM segments WHERE seg = ?1")?;
            let mut data = tx.prepare_cached("DELETE FROM segment_data WHERE seg = ?1")?;
            for (seg, _) in &doomed {
                meta.execute([seg])?;
                data.execute([seg])?;
            }
        }
        tx.commit()?;
        let events = doomed.iter().map(|(_, n)| *n as u64).sum();
        Ok((doomed.len() as i64, events))
    }

    /// Bytes used by live pages (file size minus free pages).
    pub fn live_bytes(&self) -> Result<u64, EventsError> {
        let q = |sql: &str| -> Result<i64, EventsError> {
            self.conn
                .query_row(sql, [], |r| r.get(0))
                .map_err(|e| self.err(e))
        };
        let pages = q("PRAGMA page_count")?;
        let free = q("PRAGMA freelist_count")?;
        let size = q("PRAGMA page_size")?;
        Ok(((pages - free).max(0) * size) as u64)
    }

    /// Number of stored events.
    pub fn count(&self) -> Result<u64, EventsError> {
        schema::event_count(&self.conn).map_err(|e| self.err(e))
    }
}

/// The highest seq stored (0 when empty).
pub(super) fn max_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT seg + events - 1 FROM segments ORDER BY seg DESC LIMIT 1), 0)",
        [],
        |r| r.get(0),
    )
}

/// Store a segment whose first seq is `first` (the builder is emptied).
pub(super) fn write_segment(
    conn: &Connection,
    first: i64,
    segment: &mut SegmentBuilder,
) -> rusqlite::Result<()> {
    let s = segment.finish();
    conn.prepare_cached(
        "INSERT INTO segments (seg, events, min_time, max_time, min_id, max_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((
        first,
        s.count as i64,
        s.min_time,
        s.max_time,
        &s.min_id[..],
        &s.max_id[..],
    ))?;
    conn.prepare_cached("INSERT INTO segment_data (seg, ids, data) VALUES (?1, ?2, ?3)")?
        .execute((first, s.ids, s.data))?;
    Ok(())
}

/// Ids closer than this (by their UUIDv7 time) are looked up as one range.
const ID_RANGE_GAP_MS: u64 = 10_000;

/// What an insert must know to refuse duplicates.
struct Known {
    /// Ids stored in the segments whose id range overlaps the batch's
    /// (a superset of the batch's ids already stored).
    stored: IdSet,
    /// Ids the batch holds more than once (normally none).
    repeated: IdSet,
}

type IdSet = HashSet<[u8; 16], foldhash::fast::RandomState>;

/// The ids of `rows` that are already stored, from the segments whose id
/// range overlaps theirs, and those the batch repeats. Ids are time-ordered,
/// so on the live path that is the newest segment or two. The batch's ids
/// are split where they are far apart in time, so one old event (an agent's
/// upload after days offline) costs a look at its own time, not at every
/// segment since.
fn known_ids(conn: &Connection, events: &[PreparedEvent]) -> rusqlite::Result<Known> {
    let mut ids: Vec<[u8; 16]> = events.iter().map(|e| *e.id().as_bytes()).collect();
    ids.sort_unstable();
    let repeated: IdSet = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let mut in_ranges = IdSet::default();
    let mut stmt = conn.prepare_cached(
        "SELECT d.ids FROM segments s JOIN segment_data d ON d.seg = s.seg WHERE s.max_id >= ?1 AND s.min_id <= ?2",
    )?;
    let mut start = 0;
    for i in 1..=ids.len() {
        if i < ids.len() && id_ms(&ids[i]) - id_ms(&ids[i - 1]) <= ID_RANGE_GAP_MS {
            continue;
        }
        let mut found = stmt.query((&ids[start][..], &ids[i - 1][..]))?;
        while let Some(row) = found.next()? {
            if let ValueRef::Blob(stored) = row.get_ref(0)? {
                in_ranges.extend(segment::ids(stored));
            }
        }
        start = i;
    }
    Ok(Known {
        stored: in_ranges,
        repeated,
    })
}

/// The millisecond time in a UUIDv7 (its first 48 bits; any other id
/// sorts the same way, which is all the split above needs).
fn id_ms(id: &[u8; 16]) -> u64 {
    id[..6]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Index every block whose seqs are all assigned (`max_seq` is the highest)
/// that is not indexed yet (a store written before postings existed), in the
/// caller's transaction.
fn index_closed_blocks(conn: &Connection, max_seq: i64) -> rusqlite::Result<()> {
    let first = schema::next_block(conn)?;
    let mut next = first;
    while postings::block_seqs(next).1 <= max_seq {
        BlockPostings::read(conn, next)?.write(conn)?;
        next += 1;
    }
    if next != first {
        set_next_block(conn, next)?;
    }
    Ok(())
}

/// Build `block`'s postings again from its stored events.
pub(super) fn reindex_block(conn: &Connection, block: i64) -> rusqlite::Result<()> {
    BlockPostings::read(conn, block)?.write(conn)
}

fn set_next_block(conn: &Connection, block: i64) -> rusqlite::Result<()> {
    schema::set_meta(conn, schema::NEXT_BLOCK_KEY, &block.to_string())
}

/// One block's postings (one builder per indexed field) and time bounds.
struct BlockPostings {
    block: i64,
    builders: Vec<PostingsBuilder>,
    count: i64,
    min_time: i64,
    max_time: i64,
}

impl BlockPostings {
    fn new(block: i64) -> BlockPostings {
        BlockPostings {
            block,
            builders: INDEXED.iter().map(|_| Default::default()).collect(),
            count: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
        }
    }

    /// Add the event at `seq` with its indexed columns' values (in [`INDEXED`] order).
    fn add<'a>(&mut self, seq: i64, time: i64, values: impl Iterator<Item = Option<&'a str>>) {
        let offset = (seq - postings::block_seqs(self.block).0) as u32;
        self.count += 1;
        self.min_time = self.min_time.min(time);
        self.max_time = self.max_time.max(time);
        for (b, v) in self.builders.iter_mut().zip(values) {
            if let Some(text) = v {
                b.add(text, offset);
            }
        }
    }

    /// The postings of a block's stored events (after a restart, or for a
    /// store written before postings existed). An event whose stored form
    /// cannot be read is left out of the postings, not the store.
    fn read(conn: &Connection, block: i64) -> rusqlite::Result<BlockPostings> {
        let (lo, hi) = postings::block_seqs(block);
        let mut out = BlockPostings::new(block);
        let mut stmt = conn.prepare_cached(
            "SELECT s.seg, s.events, d.data FROM segments s JOIN segment_data d ON d.seg = s.seg WHERE s.seg <= ?2 AND s.seg + s.events - 1 >= ?1 ORDER BY s.seg",
        )?;
        let mut rows = stmt.query((lo, hi))?;
        while let Some(row) = rows.next()? {
            let first: i64 = row.get(0)?;
            let count: i64 = row.get(1)?;
            let ValueRef::Blob(data) = row.get_ref(2)? else {
                continue;
            };
            let Ok(seg) = Segment::decode(data, count as usize) else {
                tracing::warn!(
                    segment = first,
                    "unreadable event segment left out of the index"
                );
                continue;
            };
            for offset in 0..seg.len() {
                let seq = first + offset as i64;
                if seq < lo || seq > hi {
                    continue;
                }
                let Some(Ok(record)) = seg.stored(offset).map(super::decode_stored) else {
                    continue;
                };
                let values = indexed_values(&record);
                out.add(seq, record.time(), values.iter().map(|v| v.as_deref()));
            }
        }
        Ok(out)
    }

    /// Store the block's postings and time bounds (again, for a block being filled).
    fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let (min_time, max_time) = if self.count > 0 {
            (Some(self.min_time), Some(self.max_time))
        } else {
            (None, None)
        };
        conn.prepare_cached(
            "INSERT OR REPLACE INTO blocks (block, events, min_time, max_time) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute((self.block, self.count, min_time, max_time))?;
        let mut put = conn.prepare_cached(
            "INSERT OR REPLACE INTO postings (block, field, data) VALUES (?1, ?2, ?3)",
        )?;
        let mut clear =
            conn.prepare_cached("DELETE FROM postings WHERE block = ?1 AND field = ?2")?;
        for (f, b) in INDEXED.iter().zip(&self.builders) {
            if b.is_empty() {
                clear.execute((self.block, f.column()))?;
            } else {
                put.execute((self.block, f.column(), b.encode()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_cache_is_applied_to_the_writer_connection() {
        let dir = tempfile::tempdir().unwrap();
        let w = StoreWriter::open(&dir.path().join("events.db"), false).unwrap();
        assert_eq!(w.page_cache().unwrap(), DEFAULT_PAGE_CACHE_BYTES);
        w.set_page_cache(64 << 20).unwrap();
        let pragma: i64 = w
            .conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(pragma, -65_536, "cache_size in KiB, negative");
        assert_eq!(w.page_cache().unwrap(), 64 << 20);
        // Below the floor: the floor.
        w.set_page_cache(4096).unwrap();
        assert_eq!(w.page_cache().unwrap(), MIN_PAGE_CACHE_BYTES);
    }
}
