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
use super::schema::{self, LEGACY_EVENTS};
use super::segment::SegmentBuilder;
use super::writer::write_segment;

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
        if moved % (CHUNK * 128) < CHUNK {
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
    let mut stmt = conn.prepare(
        "SELECT seq, id, time, type = 'alert', doc FROM events ORDER BY seq LIMIT ?1",
    )?;
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
        let alert = row.get::<_, Option<bool>>(3)?.unwrap_or(false);
        let stored = match row.get_ref(4)? {
            ValueRef::Blob(b) => b.to_vec(),
            // The oldest rows hold the JSON text itself.
            ValueRef::Text(t) => doc::encode(&String::from_utf8_lossy(t)),
            _ => doc::encode("null"),
        };
        segment.push(id, time, &stored, alert);
        moved += 1;
    }
    if !segment.is_empty() {
        write_segment(conn, first, &mut segment)?;
    }
    conn.execute("DELETE FROM events WHERE seq <= ?1", [last])?;
    Ok(moved)
}
