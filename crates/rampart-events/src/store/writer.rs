//! The single writer: batched inserts and retention.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::columns::Row;
use super::doc;
use super::postings::{self, PostingsBuilder, BLOCK_EVENTS};
use super::schema::{self, COLUMNS, INDEXED};
use crate::error::EventsError;
use crate::event::Event;

/// Rows deleted per retention statement, so one pass never holds the write lock long.
const RETENTION_CHUNK: i64 = 20_000;

pub struct StoreWriter {
    conn: Connection,
    path: PathBuf,
    insert_sql: String,
    /// Postings of the block being filled, built as rows are inserted so
    /// closing a block writes them without reading the block back. `None`
    /// after an error or at start: reloaded from the stored rows.
    filling: Option<BlockPostings>,
    /// Where each of [`INDEXED`] is in [`COLUMNS`].
    indexed_columns: [usize; INDEXED.len()],
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
    /// Open or create the store at `path` (the parent directory is created).
    /// `full_sync` fsyncs every commit (power-loss durability) instead of relying
    /// on the OS to keep committed WAL pages after a process crash.
    pub fn open(path: &Path, full_sync: bool) -> Result<StoreWriter, EventsError> {
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
        // The writer touches one leaf per index per row: a large page cache keeps
        // index leaves hot, and fewer, larger checkpoints mean fewer fsyncs.
        conn.pragma_update(None, "cache_size", -262_144)
            // Checkpoints (and their fsyncs) run on the checkpointer's connection, off
            // the insert path; this bound (1 GiB of WAL) is only a safety net.
            .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", 262_144))
            .and_then(|_| conn.pragma_update(None, "journal_size_limit", 256i64 << 20))
            .map_err(store_err)?;
        let names: Vec<&str> = COLUMNS.iter().map(|f| f.column()).collect();
        let marks = vec!["?"; COLUMNS.len() + 4].join(", ");
        let insert_sql = format!(
            "INSERT OR IGNORE INTO events (seq, id, time, {}, doc) VALUES ({marks})",
            names.join(", ")
        );
        let mut w = StoreWriter {
            conn,
            path: path.to_path_buf(),
            insert_sql,
            filling: None,
            indexed_columns: std::array::from_fn(|i| {
                COLUMNS
                    .iter()
                    .position(|c| *c == INDEXED[i])
                    .unwrap_or_default()
            }),
        };
        // A store written by schema 2 (or a crash between commits, which cannot
        // leave a closed block unindexed, but costs nothing to check) is indexed now.
        let tx = w
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let max_seq = max_seq(&tx).map_err(store_err)?;
        index_closed_blocks(&tx, max_seq).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        w.conn.set_prepared_statement_cache_capacity(32);
        Ok(w)
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

    /// Like [`StoreWriter::insert`], with each event's JSON already rendered
    /// (the pipeline renders once for the store and every sink).
    pub fn insert_with_docs(
        &mut self,
        events: &[Event],
        docs: &[String],
    ) -> Result<usize, EventsError> {
        let blobs: Vec<Vec<u8>> = docs.iter().map(|d| doc::encode(d)).collect();
        self.insert_encoded(events, &blobs)
    }

    /// Like [`StoreWriter::insert`], for events or flow records whose stored
    /// documents are already encoded by [`super::encode_doc`] or
    /// [`super::encode_flow`] (the pipeline does that off the writer thread).
    pub fn insert_encoded<R: Row>(
        &mut self,
        rows: &[R],
        blobs: &[Vec<u8>],
    ) -> Result<usize, EventsError> {
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
        // Seqs are assigned here rather than by SQLite: a new seq never falls
        // into a block that is already indexed, even after retention emptied
        // the table (SQLite would restart rowids at 1).
        let mut seq = max_seq(&tx)
            .and_then(|m| Ok(m.max(schema::next_block(&tx)? * BLOCK_EVENTS)))
            .map_err(wrap)?;
        index_closed_blocks(&tx, seq).map_err(wrap)?;
        // Taken: an error below leaves `None`, and the next call reloads.
        let block = seq / BLOCK_EVENTS;
        let mut filling = match self.filling.take() {
            Some(f) if f.block == block => f,
            _ => BlockPostings::read(&tx, block).map_err(wrap)?,
        };
        let mut inserted = 0;
        {
            let mut stmt = tx.prepare_cached(&self.insert_sql).map_err(wrap)?;
            let mut id_buf = uuid::Uuid::encode_buffer();
            for (row, blob) in rows.iter().zip(blobs) {
                // Each column's value once, for its parameter and for the
                // postings; borrowed from the row where it holds the text.
                let values: [ToSqlOutput<'_>; COLUMNS.len()] =
                    std::array::from_fn(|i| row.column(COLUMNS[i]));
                stmt.raw_bind_parameter(1, seq + 1).map_err(wrap)?;
                let id = row.id();
                let id: &str = id.hyphenated().encode_lower(&mut id_buf);
                stmt.raw_bind_parameter(2, id).map_err(wrap)?;
                let time = row.time();
                stmt.raw_bind_parameter(3, time).map_err(wrap)?;
                for (i, v) in values.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 4, v).map_err(wrap)?;
                }
                stmt.raw_bind_parameter(COLUMNS.len() + 4, blob.as_slice())
                    .map_err(wrap)?;
                // 0 when the id is already stored: that seq stays free.
                if stmt.raw_execute().map_err(wrap)? == 0 {
                    continue;
                }
                seq += 1;
                inserted += 1;
                filling.add(
                    seq,
                    time,
                    self.indexed_columns.iter().map(|&i| value_ref(&values[i])),
                );
                if seq == postings::block_seqs(filling.block).1 {
                    // The block's last seq: it is complete, index it now.
                    let next = BlockPostings::new(filling.block + 1);
                    std::mem::replace(&mut filling, next)
                        .write(&tx)
                        .map_err(wrap)?;
                    set_next_block(&tx, filling.block).map_err(wrap)?;
                }
            }
        }
        tx.commit().map_err(wrap)?;
        self.filling = Some(filling);
        Ok(inserted)
    }

    /// Delete events older than `max_age_ms` and, while the database is larger
    /// than `max_bytes`, the oldest events; then return freed pages to the OS.
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
                let n = self
                    .conn
                    .execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE time < ?1 ORDER BY time LIMIT ?2)",
                        (cutoff, RETENTION_CHUNK),
                    )
                    .map_err(|e| self.err(e))?;
                report.expired += n as u64;
                if (n as i64) < RETENTION_CHUNK {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes {
            // Bounded loop: each round removes ~5% of the rows.
            for _ in 0..64 {
                if self.live_bytes()? <= max {
                    break;
                }
                let rows: i64 = self
                    .conn
                    .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                    .map_err(|e| self.err(e))?;
                if rows == 0 {
                    break;
                }
                let chunk = (rows / 20).max(1);
                let n = self
                    .conn
                    .execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY time LIMIT ?1)",
                        [chunk],
                    )
                    .map_err(|e| self.err(e))?;
                report.evicted_for_size += n as u64;
            }
        }
        if report.expired + report.evicted_for_size > 0 {
            // Postings of blocks with no event left; a partly emptied block keeps
            // its postings (they point at a few missing seqs, which find nothing).
            self.conn
                .execute(
                    "DELETE FROM postings WHERE block < (SELECT coalesce((min(seq) - 1) / ?1, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_block'), 0) FROM events)",
                    [BLOCK_EVENTS],
                )
                .and_then(|_| {
                    self.conn.execute(
                        "DELETE FROM blocks WHERE block < (SELECT coalesce((min(seq) - 1) / ?1, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_block'), 0) FROM events)",
                        [BLOCK_EVENTS],
                    )
                })
                .map_err(|e| self.err(e))?;
            self.conn
                .execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|e| self.err(e))?;
        }
        Ok(report)
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
        let n: Option<i64> = self
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(n.unwrap_or(0) as u64)
    }
}

/// The highest seq in the table (0 when empty).
fn max_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
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

fn set_next_block(conn: &Connection, block: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
        .execute((schema::NEXT_BLOCK_KEY, block.to_string()))?;
    Ok(())
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
    fn add<'a>(&mut self, seq: i64, time: i64, values: impl Iterator<Item = ValueRef<'a>>) {
        let offset = (seq - postings::block_seqs(self.block).0) as u32;
        self.count += 1;
        self.min_time = self.min_time.min(time);
        self.max_time = self.max_time.max(time);
        for (b, v) in self.builders.iter_mut().zip(values) {
            match v {
                ValueRef::Text(t) => b.add(&String::from_utf8_lossy(t), offset),
                ValueRef::Integer(n) => b.add(&n.to_string(), offset),
                _ => {}
            }
        }
    }

    /// The postings of a block's stored rows (after a restart, or for a store
    /// written before postings existed).
    fn read(conn: &Connection, block: i64) -> rusqlite::Result<BlockPostings> {
        let (lo, hi) = postings::block_seqs(block);
        let cols: Vec<&str> = INDEXED.iter().map(|f| f.column()).collect();
        let sql = format!(
            "SELECT seq, time, {} FROM events WHERE seq BETWEEN ?1 AND ?2",
            cols.join(", ")
        );
        let mut out = BlockPostings::new(block);
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query((lo, hi))?;
        while let Some(row) = rows.next()? {
            let values = (0..INDEXED.len())
                .map(|i| row.get_ref(i + 2))
                .collect::<Result<Vec<_>, _>>()?;
            out.add(row.get(0)?, row.get(1)?, values.into_iter());
        }
        Ok(out)
    }

    /// Store the block's postings and time bounds.
    fn write(self, conn: &Connection) -> rusqlite::Result<()> {
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
        for (f, b) in INDEXED.iter().zip(self.builders) {
            if !b.is_empty() {
                put.execute((self.block, f.column(), b.encode()))?;
            }
        }
        Ok(())
    }
}

/// A bound value as SQLite sees it.
fn value_ref<'a>(v: &'a ToSqlOutput<'_>) -> ValueRef<'a> {
    match v {
        ToSqlOutput::Borrowed(v) => *v,
        ToSqlOutput::Owned(v) => ValueRef::from(v),
        _ => ValueRef::Null,
    }
}
