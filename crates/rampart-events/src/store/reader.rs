//! Read-only access: search with keyset pagination, lookup by id, device timelines, tailing.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::scan::{self, Hit, Scan, ScanError, SegmentCache};
use super::{doc, plan, schema, segment, writer};
use crate::error::EventsError;
use crate::event::Event;
use crate::field::Field;
use crate::query::{Expr, Op, Query, Value};

/// Where a page ended: newest-first order is `(time, seq)` descending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub time: i64,
    pub seq: i64,
}

impl Cursor {
    /// Opaque text form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.time, self.seq)
    }

    pub fn parse(text: &str) -> Result<Cursor, EventsError> {
        let bad = || EventsError::BadCursor(text.to_string());
        let (t, s) = text.split_once('.').ok_or_else(bad)?;
        Ok(Cursor {
            time: t.parse().map_err(|_| bad())?,
            seq: s.parse().map_err(|_| bad())?,
        })
    }
}

/// A search: query, time range (`from` inclusive, `to` exclusive, ms), page size and cursor.
#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    pub query: Query,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// One page of results, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    pub events: Vec<Event>,
    /// Present when more events may follow.
    pub next_cursor: Option<String>,
}

pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl StoreReader {
    /// Open the store at `path` for reading; it must exist.
    pub fn open(path: &Path) -> Result<StoreReader, EventsError> {
        if !path.exists() {
            return Err(EventsError::NoStore(path.to_path_buf()));
        }
        let err = |source| EventsError::Store {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        schema::configure(&conn, false).map_err(err)?;
        conn.pragma_update(None, "query_only", true).map_err(err)?;
        // A store written by an older version holds its events in one row
        // each until a writer (the server) has opened it once.
        if !schema::has_table(&conn, "segments").map_err(err)? {
            return Err(EventsError::OldStore(path.to_path_buf()));
        }
        Ok(StoreReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> EventsError {
        EventsError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// The event in a stored form.
    fn decode(&self, stored: &[u8]) -> Result<Event, EventsError> {
        doc::decode_event(ValueRef::Blob(stored))
            .map_err(|e| EventsError::DamagedDocument(e.to_string()))
    }

    fn scan_err(&self, e: ScanError) -> EventsError {
        match e {
            ScanError::Sql(source) => self.err(source),
            other => EventsError::DamagedDocument(other.to_string()),
        }
    }

    /// Run `scan` in one read transaction (postings and segments agree).
    fn run(&self, scan: &Scan<'_>) -> Result<Vec<Hit>, EventsError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let hits = scan.run(&tx).map_err(|e| self.scan_err(e))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(hits)
    }

    fn events(&self, hits: &[Hit]) -> Result<Vec<Event>, EventsError> {
        hits.iter().map(|h| self.decode(&h.stored)).collect()
    }

    /// Events matching `req`, newest first.
    pub fn search(&self, req: &SearchRequest) -> Result<Page, EventsError> {
        let limit = req.limit.clamp(1, 10_000);
        let plan = plan::plan(&req.query);
        let mut hits = self.run(&Scan {
            query: &req.query,
            plan: plan.as_ref(),
            from_ms: req.from_ms,
            to_ms: req.to_ms,
            cursor: req.cursor,
            want: limit + 1,
            descending: true,
        })?;
        let more = hits.len() > limit;
        hits.truncate(limit);
        let next_cursor = if more {
            hits.last().map(|h| {
                Cursor {
                    time: h.time,
                    seq: h.seq,
                }
                .encode()
            })
        } else {
            None
        };
        Ok(Page {
            events: self.events(&hits)?,
            next_cursor,
        })
    }

    /// The stored form of the event with this id (`doc.rs`), for diagnostics.
    pub fn stored_form(&self, id: &str) -> Result<Option<Vec<u8>>, EventsError> {
        let Ok(id) = uuid::Uuid::try_parse(id) else {
            return Ok(None);
        };
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let found = self.find(&tx, &id);
        tx.finish().map_err(|e| self.err(e))?;
        found
    }

    /// The event with this id.
    pub fn get(&self, id: &str) -> Result<Option<Event>, EventsError> {
        match self.stored_form(id)? {
            Some(stored) => Ok(Some(self.decode(&stored)?)),
            None => Ok(None),
        }
    }

    /// The stored form of `id`, from the segments whose id range holds it.
    fn find(&self, conn: &Connection, id: &uuid::Uuid) -> Result<Option<Vec<u8>>, EventsError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.seg, s.events, d.ids FROM segments s JOIN segment_data d ON d.seg = s.seg WHERE s.max_id >= ?1 AND s.min_id <= ?1",
            )
            .map_err(|e| self.err(e))?;
        let key = &id.as_bytes()[..];
        let mut rows = stmt.query([key]).map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let ValueRef::Blob(ids) = row.get_ref(2).map_err(|e| self.err(e))? else {
                continue;
            };
            let Some(offset) = segment::find_id(ids, id) else {
                continue;
            };
            let first: i64 = row.get(0).map_err(|e| self.err(e))?;
            let count: i64 = row.get(1).map_err(|e| self.err(e))?;
            let seg = SegmentCache::default()
                .load(conn, first, count)
                .map_err(|e| self.scan_err(e))?;
            return Ok(seg.stored(offset).map(<[u8]>::to_vec));
        }
        Ok(None)
    }

    /// The hourly summaries from `from_ms` on (`store::hourly`). A store no
    /// writer of this version has opened yet has none: `since_ms` is then
    /// `i64::MAX` (nothing is counted).
    pub fn hourly(&self, from_ms: i64) -> Result<super::hourly::Hourly, EventsError> {
        let err = |source| EventsError::Store {
            path: self.path.clone(),
            source,
        };
        if !schema::has_table(&self.conn, "hourly").map_err(err)? {
            return Ok(super::hourly::Hourly {
                rows: Vec::new(),
                since_ms: i64::MAX,
            });
        }
        super::hourly::read(&self.conn, from_ms).map_err(err)
    }

    /// Everything `device` did in `[from_ms, to_ms]`, oldest first.
    pub fn timeline(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>, EventsError> {
        let query = Query {
            expr: Some(Expr::Compare {
                field: Field::Device,
                op: Op::Eq,
                value: Value::Text(device.to_string()),
            }),
        };
        let plan = plan::plan(&query);
        let hits = self.run(&Scan {
            query: &query,
            plan: plan.as_ref(),
            from_ms: Some(from_ms),
            to_ms: Some(to_ms.saturating_add(1)),
            cursor: None,
            want: limit,
            descending: false,
        })?;
        self.events(&hits)
    }

    /// An alert and everything its device did within `window_ms` either side of it, in order.
    pub fn alert_timeline(
        &self,
        alert_id: &str,
        window_ms: i64,
    ) -> Result<Option<(Event, Vec<Event>)>, EventsError> {
        let Some(alert) = self.get(alert_id)? else {
            return Ok(None);
        };
        let device = alert
            .device_name()
            .ok_or_else(|| EventsError::NoDevice(alert_id.to_string()))?
            .to_string();
        let events = self.timeline(
            &device,
            alert.time - window_ms,
            alert.time + window_ms,
            100_000,
        )?;
        Ok(Some((alert, events)))
    }

    /// Events stored after `seq` that match `query`, oldest first, with their sequence numbers.
    pub fn after(
        &self,
        seq: i64,
        query: &Query,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>, EventsError> {
        self.walk_after(seq, limit, |seg, offset, s| {
            let rec = scan::record(seg, offset, s).map_err(|e| self.scan_err(e))?;
            if !query.matches(&rec) {
                return Ok(None);
            }
            self.decode(seg.stored(offset).unwrap_or_default())
                .map(Some)
        })
    }

    /// The stored forms (what [`super::decode_stored_event`] reads) of every
    /// event after `seq`, oldest first, `limit` at most: a forwarder sends
    /// them on without decoding and re-rendering each event.
    pub fn stored_after(&self, seq: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, EventsError> {
        self.walk_after(seq, limit, |seg, offset, _| {
            Ok(Some(seg.stored(offset).unwrap_or_default().to_vec()))
        })
    }

    /// Walks the events stored after `seq` in order, in one read transaction,
    /// and keeps what `take` returns for each (with its sequence number) until
    /// `limit` are kept: the one walk behind [`Self::after`] and
    /// [`Self::stored_after`], which differ only in what they keep.
    fn walk_after<T>(
        &self,
        seq: i64,
        limit: usize,
        mut take: impl FnMut(&segment::Segment, usize, i64) -> Result<Option<T>, EventsError>,
    ) -> Result<Vec<(i64, T)>, EventsError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let segments: Vec<(i64, i64)> = tx
            .prepare_cached(
                "SELECT seg, events FROM segments WHERE seg + events - 1 > ?1 ORDER BY seg",
            )
            .and_then(|mut stmt| {
                stmt.query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.err(e))?;
        let mut cache = SegmentCache::default();
        let mut out = Vec::new();
        'segments: for (first, count) in segments {
            let seg = cache
                .load(&tx, first, count)
                .map_err(|e| self.scan_err(e))?;
            for offset in 0..seg.len() {
                let s = first + offset as i64;
                if s <= seq {
                    continue;
                }
                if let Some(kept) = take(&seg, offset, s)? {
                    out.push((s, kept));
                    if out.len() >= limit {
                        break 'segments;
                    }
                }
            }
        }
        tx.finish().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The newest sequence number (0 when empty).
    pub fn last_seq(&self) -> Result<i64, EventsError> {
        writer::max_seq(&self.conn).map_err(|e| self.err(e))
    }

    pub fn count(&self) -> Result<u64, EventsError> {
        schema::event_count(&self.conn).map_err(|e| self.err(e))
    }

    /// SQLite's own consistency check; `ok` when the file is sound.
    pub fn integrity_check(&self) -> Result<String, EventsError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
