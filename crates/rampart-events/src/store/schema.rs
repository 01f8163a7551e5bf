//! Table, indexes and connection settings.

use rusqlite::{Connection, OptionalExtension};

use crate::field::Field;

/// Fields with postings per index block (see `postings.rs`): the ones
/// investigations start from, and `type` for the alerts list (alerts are rare:
/// their postings find them without decoding the events around them).
pub const INDEXED: [Field; 7] = [
    Field::Type,
    Field::User,
    Field::Device,
    Field::Action,
    Field::Host,
    Field::Category,
    Field::Rule,
];

pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    // auto_vacuum must be chosen before the first table exists; INCREMENTAL lets
    // size-based retention hand pages back to the file system.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    // Schema 4: events live in segments (`segment.rs`), a row per ~250
    // events; `segments` is the small, scanned part, `segment_data` the bulk.
    // `seg` is the segment's first seq. The indexes serve time ranges and id
    // lookups (ids are time-ordered UUIDv7, so a segment's id range is narrow).
    // Block postings (`postings.rs`) address events by seq, as in schema 3.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS segments (\n  seg INTEGER PRIMARY KEY,\n  events INTEGER NOT NULL,\n  min_time INTEGER NOT NULL,\n  max_time INTEGER NOT NULL,\n  min_id BLOB NOT NULL,\n  max_id BLOB NOT NULL\n);\n\
         CREATE TABLE IF NOT EXISTS segment_data (\n  seg INTEGER PRIMARY KEY,\n  ids BLOB NOT NULL,\n  data BLOB NOT NULL\n);\n\
         CREATE INDEX IF NOT EXISTS segments_time ON segments(max_time, min_time);\n\
         CREATE INDEX IF NOT EXISTS segments_ids ON segments(max_id, min_id);\n\
         CREATE TABLE IF NOT EXISTS blocks (\n  block INTEGER PRIMARY KEY,\n  events INTEGER NOT NULL,\n  min_time INTEGER,\n  max_time INTEGER\n);\n\
         CREATE TABLE IF NOT EXISTS postings (\n  block INTEGER NOT NULL,\n  field TEXT NOT NULL,\n  data BLOB NOT NULL,\n  PRIMARY KEY (block, field)\n) WITHOUT ROWID;\n\
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n\
         INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '4');\n",
    )?;
    super::hourly::create(conn)
}

/// The table of one row per event that schemas 1–3 stored events in; the
/// writer moves its rows into segments (`writer.rs`, `migrate_rows`).
pub const LEGACY_EVENTS: &str = "events";

/// Whether `table` exists.
pub fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The `meta` key holding the first block not yet closed (the one being
/// filled): new seqs are never taken from a block before it.
pub const NEXT_BLOCK_KEY: &str = "next_block";

/// The value stored under `key` in `meta`.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Store `value` under `key` in `meta`.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
        .execute((key, value))?;
    Ok(())
}

/// The first block not yet closed (0 in a new store).
pub fn next_block(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta(conn, NEXT_BLOCK_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The number of stored events.
pub fn event_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT coalesce(sum(events), 0) FROM segments", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

/// Settings every connection needs. `busy_timeout` lets readers wait out a checkpoint.
pub fn configure(conn: &Connection, full_sync: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if full_sync { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    Ok(())
}
