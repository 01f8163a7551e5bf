//! Moving the one-row-per-event table of schemas 1–3 into segments.
//!
//! Events keep their seqs, so the block postings already built for them stay
//! valid. Rows move in chunks, one transaction each: an interrupted move
//! resumes at the next start, and readers see every event throughout (in the
//! old table or in a segment).

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use uuid::Uuid;

use super::doc;
use super::schema::{self, INDEXED, LEGACY_EVENTS};
use super::segment::SegmentBuilder;
use super::writer::{reindex_block, write_segment};

/// The `meta` key naming the fields the block postings were built for.
const INDEXED_FIELDS_KEY: &str = "indexed_fields";

/// Rows moved per transaction.
const CHUNK: i64 = 8192;

/// Move every row of the legacy `events` table into segments, then drop it.
pub fn legacy_rows(conn: &mut Connection) -> rusqlite::Result<()> {
    if !schema::has_table(conn, LEGACY_EVENTS)? {
        return Ok(());
    }
    let total: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    if total > 0 {
        tracing::info!(
            events = total,
            "moving stored events into segments (event store schema 4); this runs once"
        );
    }
    let mut moved = 0i64;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = move_chunk(&tx)?;
        if n == 0 {
            tx.execute_batch("DROP TABLE events;")?;
            tx.commit()?;
            break;
        }
        tx.commit()?;
        moved += n;
        // About every million events.
        if moved % (CHUNK * 128) < n {
            tracing::info!(moved, total, "moving stored events into segments");
        }
    }
    conn.execute_batch("PRAGMA incremental_vacuum;")?;
    if total > 0 {
        tracing::info!(events = moved, "stored events moved into segments");
    }
    Ok(())
}

/// Move the `CHUNK` oldest rows (by seq); how many moved.
fn move_chunk(conn: &Connection) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare("SELECT seq, id, time, doc FROM events ORDER BY seq LIMIT ?1")?;
    let mut rows = stmt.query([CHUNK])?;
    let mut segment = SegmentBuilder::default();
    let (mut first, mut last) = (0i64, 0i64);
    let mut moved = 0;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        // A segment holds consecutive seqs: a gap (retention, an ignored
        // duplicate) or a full segment starts the next one.
        if !segment.is_empty() && (seq != last + 1 || segment.is_full()) {
            write_segment(conn, first, &mut segment)?;
        }
        if segment.is_empty() {
            first = seq;
        }
        last = seq;
        // Ids were written by this program as UUID text; keep the event even if one is not.
        let id = match row.get_ref(1)? {
            ValueRef::Text(t) => std::str::from_utf8(t)
                .ok()
                .and_then(|t| Uuid::try_parse(t).ok()),
            _ => None,
        }
        .unwrap_or_else(Uuid::nil);
        let time: i64 = row.get(2)?;
        let stored = match row.get_ref(3)? {
            ValueRef::Blob(b) => b.to_vec(),
            // The oldest rows hold the JSON text itself.
            ValueRef::Text(t) => doc::encode(&String::from_utf8_lossy(t)),
            _ => doc::encode("null"),
        };
        segment.push(id, time, &stored);
        moved += 1;
    }
    if !segment.is_empty() {
        write_segment(conn, first, &mut segment)?;
    }
    conn.execute("DELETE FROM events WHERE seq <= ?1", [last])?;
    Ok(moved)
}

/// When the stored block postings were built for other fields than
/// [`INDEXED`] (schema 3 had no `type` postings), build them again.
pub fn indexed_fields(conn: &mut Connection) -> rusqlite::Result<()> {
    let want = INDEXED
        .iter()
        .map(|f| f.column())
        .collect::<Vec<_>>()
        .join(",");
    let have = schema::meta(conn, INDEXED_FIELDS_KEY)?;
    if have.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let blocks: Vec<i64> = conn
        .prepare("SELECT block FROM blocks ORDER BY block")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !blocks.is_empty() {
        tracing::info!(
            blocks = blocks.len(),
            fields = %want,
            "indexing stored events for the current query fields; this runs once"
        );
    }
    for chunk in blocks.chunks(16) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for &block in chunk {
            reindex_block(&tx, block)?;
        }
        tx.commit()?;
    }
    schema::set_meta(conn, INDEXED_FIELDS_KEY, &want)
}
