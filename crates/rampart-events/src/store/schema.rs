//! Table, indexes and connection settings.

use rusqlite::{Connection, OptionalExtension};

use crate::field::Field;

/// Columns filled from each event, in insert order (after `id`, `time`).
pub const COLUMNS: [Field; 25] = [
    Field::Type,
    Field::Flow,
    Field::Action,
    Field::User,
    Field::Group,
    Field::Device,
    Field::Process,
    Field::SrcIp,
    Field::DstIp,
    Field::DstPort,
    Field::Host,
    Field::Url,
    Field::Method,
    Field::Status,
    Field::Category,
    Field::App,
    Field::Rule,
    Field::RuleId,
    Field::Revision,
    Field::Tls,
    Field::Bypass,
    Field::BytesIn,
    Field::BytesOut,
    Field::Severity,
    Field::Reporter,
];

/// Fields with postings per index block (see `postings.rs`): the ones
/// investigations start from. `type` (four values) has none; alerts, the one
/// rare type people list, have a partial index instead ([`ALERTS_INDEX`]).
pub const INDEXED: [Field; 6] = [
    Field::User,
    Field::Device,
    Field::Action,
    Field::Host,
    Field::Category,
    Field::Rule,
];

/// Alerts by time. SQLite uses a partial index only when the query states its
/// condition literally, so `type = alert` compiles to this text (see `query::sql`).
pub const ALERTS_CONDITION: &str = "type = 'alert'";
const ALERTS_INDEX: &str = "events_alerts";

pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    // auto_vacuum must be chosen before the first table exists; INCREMENTAL lets
    // size-based retention hand pages back to the file system.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    let mut cols = String::new();
    for f in COLUMNS {
        let ty = match f.kind() {
            crate::field::FieldKind::Integer => "INTEGER",
            _ => "TEXT COLLATE NOCASE",
        };
        cols.push_str(&format!(",\n  {} {ty}", f.column()));
    }
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS events (\n  seq INTEGER PRIMARY KEY,\n  id TEXT NOT NULL UNIQUE,\n  time INTEGER NOT NULL{cols},\n  doc TEXT NOT NULL\n);\nCREATE INDEX IF NOT EXISTS events_time ON events(time);\n"
    );
    // Schema 3: the `(field, time)` B-tree indexes of schema 2 became block
    // postings, built once per 8,192 events instead of one insert per event and index.
    for f in INDEXED {
        sql.push_str(&format!("DROP INDEX IF EXISTS events_{};\n", f.column()));
    }
    sql.push_str(
        "CREATE TABLE IF NOT EXISTS blocks (\n  block INTEGER PRIMARY KEY,\n  events INTEGER NOT NULL,\n  min_time INTEGER,\n  max_time INTEGER\n);\n\
         CREATE TABLE IF NOT EXISTS postings (\n  block INTEGER NOT NULL,\n  field TEXT NOT NULL,\n  data BLOB NOT NULL,\n  PRIMARY KEY (block, field)\n) WITHOUT ROWID;\n",
    );
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {ALERTS_INDEX} ON events(time) WHERE {ALERTS_CONDITION};\n"
    ));
    // Schema 2: stores written by schema 1 had a `(type, time)` index; it
    // only slowed inserts once alerts had their own index.
    sql.push_str(
        "DROP INDEX IF EXISTS events_type;\n\
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n\
         INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '3');\n",
    );
    conn.execute_batch(&sql)
}

/// The `meta` key holding the first block not yet indexed: events with a seq
/// above that block's start are the unindexed tail.
pub const NEXT_BLOCK_KEY: &str = "next_block";

/// The first block not yet indexed (0 in a new store).
pub fn next_block(conn: &Connection) -> rusqlite::Result<i64> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [NEXT_BLOCK_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
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
