//! Read-only access: search with keyset pagination, lookup by id, device timelines, tailing.

use std::path::{Path, PathBuf};

use rusqlite::{params_from_iter, Connection, OpenFlags};

use rusqlite::types::ValueRef;

use super::doc;
use super::indexed::{KeyScan, ScanError};
use super::plan::{self, IndexPlan};
use super::schema;
use crate::error::EventsError;
use crate::event::Event;
use crate::field::Field;
use crate::query::{compile, Expr, Op, Query, SqlFilter, SqlValue, Value};

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
    /// Whether the store has block postings (schema 3; a store the server has
    /// not upgraded yet is searched through SQL alone).
    has_postings: bool,
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
        rusqlite::vtab::array::load_module(&conn).map_err(err)?;
        let has_postings = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'blocks'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)?
            > 0;
        Ok(StoreReader {
            conn,
            path: path.to_path_buf(),
            has_postings,
        })
    }

    fn err(&self, source: rusqlite::Error) -> EventsError {
        EventsError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// The event in a `doc` column (JSON text, compressed JSON or a flow record).
    fn decode(&self, doc: ValueRef<'_>) -> Result<Event, EventsError> {
        doc::decode_event(doc).map_err(|e| EventsError::DamagedDocument(e.to_string()))
    }

    fn scan_err(&self, e: ScanError) -> EventsError {
        match e {
            ScanError::Sql(source) => self.err(source),
            ScanError::Postings(p) => EventsError::DamagedDocument(p.to_string()),
        }
    }

    /// Events matching `req`, newest first.
    pub fn search(&self, req: &SearchRequest) -> Result<Page, EventsError> {
        let filter = compile(&req.query);
        if let Some(plan) = self.plan(&req.query) {
            return self.search_planned(req, &filter, &plan);
        }
        let mut sql = format!("SELECT seq, time, doc FROM events WHERE ({})", filter.sql);
        let mut params = filter.params;
        if let Some(from) = req.from_ms {
            sql.push_str(" AND time >= ?");
            params.push(SqlValue::Integer(from));
        }
        if let Some(to) = req.to_ms {
            sql.push_str(" AND time < ?");
            params.push(SqlValue::Integer(to));
        }
        if let Some(c) = req.cursor {
            sql.push_str(" AND (time < ? OR (time = ? AND seq < ?))");
            params.extend([
                SqlValue::Integer(c.time),
                SqlValue::Integer(c.time),
                SqlValue::Integer(c.seq),
            ]);
        }
        let limit = req.limit.clamp(1, 10_000);
        sql.push_str(" ORDER BY time DESC, seq DESC LIMIT ?");
        params.push(SqlValue::Integer(limit as i64 + 1));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params_from_iter(params.iter()))
            .map_err(|e| self.err(e))?;
        let mut events = Vec::new();
        let mut last = None;
        let mut more = false;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            if events.len() == limit {
                more = true;
                break;
            }
            let seq: i64 = row.get(0).map_err(|e| self.err(e))?;
            let time: i64 = row.get(1).map_err(|e| self.err(e))?;
            events.push(self.decode(row.get_ref(2).map_err(|e| self.err(e))?)?);
            last = Some(Cursor { time, seq });
        }
        Ok(Page {
            events,
            next_cursor: if more { last.map(|c| c.encode()) } else { None },
        })
    }

    /// The event with this id.
    pub fn get(&self, id: &str) -> Result<Option<Event>, EventsError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT doc FROM events WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([id]).map_err(|e| self.err(e))?;
        match rows.next().map_err(|e| self.err(e))? {
            Some(row) => Ok(Some(self.decode(row.get_ref(0).map_err(|e| self.err(e))?)?)),
            None => Ok(None),
        }
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
        let filter = compile(&query);
        if let Some(plan) = self.plan(&query) {
            let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
            let keys = KeyScan {
                filter: &filter,
                plan: &plan,
                from_ms: Some(from_ms),
                to_ms: Some(to_ms.saturating_add(1)),
                cursor: None,
                want: limit,
                descending: false,
            }
            .run(&tx)
            .map_err(|e| self.scan_err(e))?;
            let events = self.docs(&keys)?;
            tx.finish().map_err(|e| self.err(e))?;
            return Ok(events);
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT doc FROM events WHERE device = ?1 AND time >= ?2 AND time <= ?3 ORDER BY time, seq LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query((device, from_ms, to_ms, limit as i64))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(self.decode(row.get_ref(0).map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    /// The postings plan for `query`, when this store has postings.
    fn plan(&self, query: &Query) -> Option<IndexPlan> {
        if self.has_postings {
            plan::plan(query)
        } else {
            None
        }
    }

    /// [`StoreReader::search`] through block postings.
    fn search_planned(
        &self,
        req: &SearchRequest,
        filter: &SqlFilter,
        plan: &IndexPlan,
    ) -> Result<Page, EventsError> {
        let limit = req.limit.clamp(1, 10_000);
        // One read transaction: the tail and the blocks are one snapshot.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut keys = KeyScan {
            filter,
            plan,
            from_ms: req.from_ms,
            to_ms: req.to_ms,
            cursor: req.cursor,
            want: limit + 1,
            descending: true,
        }
        .run(&tx)
        .map_err(|e| self.scan_err(e))?;
        let more = keys.len() > limit;
        keys.truncate(limit);
        let events = self.docs(&keys)?;
        tx.finish().map_err(|e| self.err(e))?;
        let next_cursor = if more {
            keys.last()
                .map(|&(time, seq)| Cursor { time, seq }.encode())
        } else {
            None
        };
        Ok(Page {
            events,
            next_cursor,
        })
    }

    /// The events with these `(time, seq)` keys, in the keys' order.
    fn docs(&self, keys: &[(i64, i64)]) -> Result<Vec<Event>, EventsError> {
        let seqs: std::rc::Rc<Vec<rusqlite::types::Value>> = std::rc::Rc::new(
            keys.iter()
                .map(|&(_, seq)| rusqlite::types::Value::Integer(seq))
                .collect(),
        );
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, doc FROM events WHERE seq IN rarray(?1)")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([seqs]).map_err(|e| self.err(e))?;
        let mut by_seq = std::collections::HashMap::with_capacity(keys.len());
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let seq: i64 = row.get(0).map_err(|e| self.err(e))?;
            by_seq.insert(seq, self.decode(row.get_ref(1).map_err(|e| self.err(e))?)?);
        }
        Ok(keys
            .iter()
            .filter_map(|(_, seq)| by_seq.remove(seq))
            .collect())
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
        let filter = compile(query);
        let sql = format!(
            "SELECT seq, doc FROM events WHERE seq > ? AND ({}) ORDER BY seq LIMIT ?",
            filter.sql
        );
        let mut params = vec![SqlValue::Integer(seq)];
        params.extend(filter.params);
        params.push(SqlValue::Integer(limit as i64));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params_from_iter(params.iter()))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let s: i64 = row.get(0).map_err(|e| self.err(e))?;
            out.push((s, self.decode(row.get_ref(1).map_err(|e| self.err(e))?)?));
        }
        Ok(out)
    }

    /// The newest sequence number (0 when empty).
    pub fn last_seq(&self) -> Result<i64, EventsError> {
        self.conn
            .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    pub fn count(&self) -> Result<u64, EventsError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// SQLite's own consistency check; `ok` when the file is sound.
    pub fn integrity_check(&self) -> Result<String, EventsError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
