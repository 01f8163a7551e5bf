//! Read-only access: search with keyset pagination, lookup by id, device timelines, tailing.

use std::path::{Path, PathBuf};

use rusqlite::{params_from_iter, Connection, OpenFlags};

use rusqlite::types::ValueRef;

use super::doc;
use super::schema;
use crate::error::EventsError;
use crate::event::Event;
use crate::query::{compile, Query, SqlValue};

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

    /// The event in a `doc` column (JSON text or the compressed form).
    fn decode(&self, doc: ValueRef<'_>) -> Result<Event, EventsError> {
        let json = doc::decode(doc).map_err(|e| EventsError::DamagedDocument(e.to_string()))?;
        serde_json::from_str(&json)
            .map_err(|e| EventsError::BadDocument(json.chars().take(60).collect(), e))
    }

    /// Events matching `req`, newest first.
    pub fn search(&self, req: &SearchRequest) -> Result<Page, EventsError> {
        let filter = compile(&req.query);
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
