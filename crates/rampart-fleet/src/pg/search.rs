//! Reading: search with keyset pagination, counts, timelines, lookup by id
//! and tailing, with the embedded store's semantics and order.

use rampart_events::field::Field;
use rampart_events::query::{Expr, Op, Query, Value};
use rampart_events::store::Cursor;
use rampart_events::{Event, Page, SearchRequest};
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::error::{sql, PgStoreError};
use super::schema::EVENTS;
use super::translate::{add_query, Condition};
use super::FleetStore;

/// Largest page a search returns (as the embedded store).
const MAX_PAGE: usize = 10_000;

/// Whose timeline: a device (its uid, else hostname) or a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineSubject<'a> {
    Device(&'a str),
    User(&'a str),
}

impl TimelineSubject<'_> {
    fn query(self) -> Query {
        let (field, value) = match self {
            TimelineSubject::Device(d) => (Field::Device, d),
            TimelineSubject::User(u) => (Field::User, u),
        };
        Query {
            expr: Some(Expr::Compare {
                field,
                op: Op::Eq,
                value: Value::Text(value.to_string()),
            }),
        }
    }
}

fn event_of(row: &Row) -> Result<Event, PgStoreError> {
    row.try_get::<_, Json<Event>>(0)
        .map(|j| j.0)
        .map_err(|e| PgStoreError::DamagedDocument(super::error::chain(&e)))
}

/// `[from, to)` on the event time.
fn add_range(cond: &mut Condition, from_ms: Option<i64>, to_ms: Option<i64>) {
    if let Some(from) = from_ms {
        let p = cond.bind(Box::new(from), "bigint");
        cond.and(&format!("event_time >= {p}"));
    }
    if let Some(to) = to_ms {
        let p = cond.bind(Box::new(to), "bigint");
        cond.and(&format!("event_time < {p}"));
    }
}

/// The statement of a search page of `limit` events (one more is read to
/// know whether another page follows) and its parameters.
fn search_statement(req: &SearchRequest, limit: usize) -> (String, Condition) {
    let mut cond = Condition::new(1);
    add_range(&mut cond, req.from_ms, req.to_ms);
    if let Some(c) = req.cursor {
        let t = cond.bind(Box::new(c.time), "bigint");
        let s = cond.bind(Box::new(c.seq), "bigint");
        cond.and(&format!("(event_time, seq) < ({t}, {s})"));
    }
    add_query(&mut cond, &req.query);
    let n = cond.bind(Box::new(limit as i64 + 1), "bigint");
    let statement = format!(
        "SELECT doc, event_time, seq FROM {EVENTS} WHERE {} ORDER BY event_time DESC, seq DESC LIMIT {n}",
        cond.text()
    );
    (statement, cond)
}

impl FleetStore {
    /// Events matching `req`, newest first, a page at a time (`limit`
    /// clamped to 1..=10,000; `next_cursor` while more may follow). `from_ms`
    /// is inclusive, `to_ms` exclusive.
    pub async fn search(&self, req: &SearchRequest) -> Result<Page, PgStoreError> {
        let limit = req.limit.clamp(1, MAX_PAGE);
        let (statement, cond) = search_statement(req, limit);
        let client = self.client().await?;
        let rows = client
            .query(&statement, &cond.refs())
            .await
            .map_err(sql("searching events"))?;
        let more = rows.len() > limit;
        let rows = &rows[..rows.len().min(limit)];
        let next_cursor = match rows.last() {
            Some(last) if more => Some(
                Cursor {
                    time: last.get(1),
                    seq: last.get(2),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(Page {
            events: rows.iter().map(event_of).collect::<Result<_, _>>()?,
            next_cursor,
        })
    }

    /// The plan PostgreSQL chooses for [`FleetStore::search`] of `req`
    /// (`EXPLAIN`, text format, one line per node): which indexes a search
    /// reads, for the tests that guard them and for an operator puzzled by a
    /// slow search.
    pub async fn explain_search(&self, req: &SearchRequest) -> Result<String, PgStoreError> {
        let (statement, cond) = search_statement(req, req.limit.clamp(1, MAX_PAGE));
        let client = self.client().await?;
        let rows = client
            .query(&format!("EXPLAIN {statement}"), &cond.refs())
            .await
            .map_err(sql("explaining a search"))?;
        let lines: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0).unwrap_or_default())
            .collect();
        Ok(lines.join("\n"))
    }

    /// How many events match `query` in `[from_ms, to_ms)`.
    pub async fn count(
        &self,
        query: &Query,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> Result<u64, PgStoreError> {
        let mut cond = Condition::new(1);
        add_range(&mut cond, from_ms, to_ms);
        add_query(&mut cond, query);
        let statement = format!("SELECT count(*) FROM {EVENTS} WHERE {}", cond.text());
        let client = self.client().await?;
        let n: i64 = client
            .query_one(&statement, &cond.refs())
            .await
            .map_err(sql("counting events"))?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// Everything a device or user did in `[from_ms, to_ms]` (both
    /// inclusive, as the embedded store's timeline), oldest first, `limit` at most.
    pub async fn timeline(
        &self,
        subject: TimelineSubject<'_>,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>, PgStoreError> {
        let mut cond = Condition::new(1);
        add_range(&mut cond, Some(from_ms), Some(to_ms.saturating_add(1)));
        add_query(&mut cond, &subject.query());
        let n = cond.bind(Box::new(limit as i64), "bigint");
        let statement = format!(
            "SELECT doc FROM {EVENTS} WHERE {} ORDER BY event_time, seq LIMIT {n}",
            cond.text()
        );
        let client = self.client().await?;
        let rows = client
            .query(&statement, &cond.refs())
            .await
            .map_err(sql("reading a timeline"))?;
        rows.iter().map(event_of).collect()
    }

    /// The event with this id (`None` for an unknown or malformed id).
    pub async fn get(&self, id: &str) -> Result<Option<Event>, PgStoreError> {
        let Ok(id) = uuid::Uuid::try_parse(id) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT doc FROM {EVENTS} WHERE id = $1::uuid LIMIT 1"),
                &[&id],
            )
            .await
            .map_err(sql("reading an event by id"))?;
        row.as_ref().map(event_of).transpose()
    }

    /// An alert and everything its device did within `window_ms` either side.
    pub async fn alert_timeline(
        &self,
        alert_id: &str,
        window_ms: i64,
    ) -> Result<Option<(Event, Vec<Event>)>, PgStoreError> {
        let Some(alert) = self.get(alert_id).await? else {
            return Ok(None);
        };
        let Some(device) = alert.device_name().map(str::to_string) else {
            return Ok(Some((alert, Vec::new())));
        };
        let events = self
            .timeline(
                TimelineSubject::Device(&device),
                alert.time - window_ms,
                alert.time + window_ms,
                100_000,
            )
            .await?;
        Ok(Some((alert, events)))
    }

    /// Events stored after `seq` that match `query`, in storage order, with
    /// their sequence numbers: what `events tail` polls. Sequence numbers are
    /// drawn at insert, so with several concurrent writers one committing late
    /// can land behind a position already read; one ingest consumer per
    /// server keeps them in commit order.
    pub async fn after(
        &self,
        seq: i64,
        query: &Query,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>, PgStoreError> {
        let mut cond = Condition::new(1);
        let s = cond.bind(Box::new(seq), "bigint");
        cond.and(&format!("seq > {s}"));
        add_query(&mut cond, query);
        let n = cond.bind(Box::new(limit as i64), "bigint");
        let statement = format!(
            "SELECT doc, seq FROM {EVENTS} WHERE {} ORDER BY seq LIMIT {n}",
            cond.text()
        );
        let client = self.client().await?;
        let rows = client
            .query(&statement, &cond.refs())
            .await
            .map_err(sql("tailing events"))?;
        rows.iter()
            .map(|r| Ok((r.get::<_, i64>(1), event_of(r)?)))
            .collect()
    }

    /// The newest sequence number (0 when empty): where a tail starts.
    pub async fn last_seq(&self) -> Result<i64, PgStoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(&format!("SELECT coalesce(max(seq), 0) FROM {EVENTS}"), &[])
            .await
            .map_err(sql("reading the last sequence number"))?;
        Ok(row.get(0))
    }
}
