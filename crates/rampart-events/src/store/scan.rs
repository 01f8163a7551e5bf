//! Finding events: through block postings when the query has a plan, else by
//! walking the segments that overlap the time range, newest (or oldest)
//! first, stopping as soon as no further segment can change the result.
//!
//! Either way each candidate is decoded from its segment and the whole query
//! is evaluated on it in memory (`query::FieldValues` of the stored record).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::plan::IndexPlan;
use super::postings::{self, PostingsError};
use super::segment::{Segment, SegmentError};
use super::Cursor;
use crate::field::Field;
use crate::query::Query;
use crate::record::Record;

/// A failure reading the store, its postings or its segments.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("index block postings: {0}")]
    Postings(#[from] PostingsError),
    #[error("event segment {seg}: {source}")]
    Segment { seg: i64, source: SegmentError },
    #[error("event {seq}: {message}")]
    Document { seq: i64, message: String },
}

/// A matching event and its stored form (`doc.rs`): a copy of a few hundred
/// bytes, so a page holds no decoded segment alive.
pub struct Hit {
    pub time: i64,
    pub seq: i64,
    pub stored: Vec<u8>,
}

/// Decoded segments kept by one read: a query visits a block's events in seq
/// order, so a few recent segments are all it needs again.
const CACHED_SEGMENTS: usize = 16;

/// Recently decoded segments of one read, by first seq, [`CACHED_SEGMENTS`] at most.
#[derive(Default)]
pub struct SegmentCache {
    by_first: BTreeMap<i64, Rc<Segment>>,
}

impl SegmentCache {
    /// The segment holding `seq`, with its first seq.
    pub fn containing(
        &mut self,
        conn: &Connection,
        seq: i64,
    ) -> Result<Option<(i64, Rc<Segment>)>, ScanError> {
        if let Some((&first, seg)) = self.by_first.range(..=seq).next_back() {
            if seq < first + seg.len() as i64 {
                return Ok(Some((first, seg.clone())));
            }
        }
        let found: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT seg, events FROM segments WHERE seg <= ?1 ORDER BY seg DESC LIMIT 1",
            )?
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            Some((first, count)) if seq < first + count => {
                Ok(Some((first, self.load(conn, first, count)?)))
            }
            _ => Ok(None),
        }
    }

    /// The segment starting at `first`, holding `count` events.
    pub fn load(
        &mut self,
        conn: &Connection,
        first: i64,
        count: i64,
    ) -> Result<Rc<Segment>, ScanError> {
        if let Some(seg) = self.by_first.get(&first) {
            return Ok(seg.clone());
        }
        let mut stmt = conn.prepare_cached("SELECT data FROM segment_data WHERE seg = ?1")?;
        let mut rows = stmt.query([first])?;
        let damaged = |source| ScanError::Segment { seg: first, source };
        let seg = match rows.next()? {
            Some(row) => match row.get_ref(0)? {
                ValueRef::Blob(data) => {
                    Segment::decode(data, usize::try_from(count).unwrap_or(0)).map_err(damaged)?
                }
                _ => return Err(damaged(SegmentError::Truncated)),
            },
            None => return Err(damaged(SegmentError::Truncated)),
        };
        let seg = Rc::new(seg);
        if self.by_first.len() >= CACHED_SEGMENTS {
            self.by_first.clear();
        }
        self.by_first.insert(first, seg.clone());
        Ok(seg)
    }
}

/// The stored record at `offset` of `seg` (seq `seq`, for errors).
pub fn record(seg: &Segment, offset: usize, seq: i64) -> Result<Record, ScanError> {
    let stored = seg.stored(offset).ok_or(ScanError::Document {
        seq,
        message: "missing from its segment".into(),
    })?;
    super::decode_stored(stored).map_err(|e| ScanError::Document {
        seq,
        message: e.to_string(),
    })
}

/// What to collect: events matching `query` (through `plan` when there is
/// one) with `from <= time < to`, before `cursor` (descending only), `want`
/// at most.
pub struct Scan<'a> {
    pub query: &'a Query,
    pub plan: Option<&'a IndexPlan>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub cursor: Option<Cursor>,
    pub want: usize,
    pub descending: bool,
}

/// A segment's place and bounds.
struct SegmentRow {
    first: i64,
    count: i64,
    min_time: i64,
    max_time: i64,
}

impl Scan<'_> {
    /// The matching events in result order, `want` at most. Run inside one
    /// read transaction so postings and segments agree.
    pub fn run(&self, conn: &Connection) -> Result<Vec<Hit>, ScanError> {
        if self.want == 0 {
            return Ok(Vec::new());
        }
        match self.plan {
            Some(plan) => self.run_planned(conn, plan, &mut SegmentCache::default()),
            None => self.run_segments(conn),
        }
    }

    /// Whether the event (`time`, `seq`) is within the range and cursor.
    fn in_range(&self, time: i64, seq: i64) -> bool {
        if self.from_ms.is_some_and(|f| time < f) || self.to_ms.is_some_and(|t| time >= t) {
            return false;
        }
        match (self.cursor, self.descending) {
            (Some(c), true) => (time, seq) < (c.time, c.seq),
            _ => true,
        }
    }

    /// Test the event at `offset` of `seg` (seq `seq`) and keep it when it matches.
    fn consider(
        &self,
        seg: &Rc<Segment>,
        offset: usize,
        seq: i64,
        out: &mut Vec<Hit>,
    ) -> Result<(), ScanError> {
        let rec = record(seg, offset, seq)?;
        let time = rec.time();
        if self.in_range(time, seq) && self.query.matches(&rec) {
            out.push(Hit {
                time,
                seq,
                stored: seg.stored(offset).unwrap_or_default().to_vec(),
            });
        }
        Ok(())
    }

    /// Sort `hits` in result order and keep the first `want`.
    fn keep_first(&self, hits: &mut Vec<Hit>) {
        if self.descending {
            hits.sort_unstable_by_key(|h| std::cmp::Reverse((h.time, h.seq)));
        } else {
            hits.sort_unstable_by_key(|h| (h.time, h.seq));
        }
        hits.truncate(self.want);
    }

    /// Whether a segment or block with these time bounds can still add to
    /// `hits` (sorted and full, or not full).
    fn can_contribute(&self, hits: &[Hit], min_time: i64, max_time: i64) -> bool {
        if hits.len() < self.want {
            return true;
        }
        let last = hits[self.want - 1].time;
        if self.descending {
            max_time >= last
        } else {
            min_time <= last
        }
    }

    /// The time bounds segments and blocks must overlap: `[from, to)`.
    fn bounds(&self) -> (i64, i64) {
        let from = self.from_ms.unwrap_or(i64::MIN);
        let mut to = self.to_ms.unwrap_or(i64::MAX);
        if let (Some(c), true) = (self.cursor, self.descending) {
            to = to.min(c.time.saturating_add(1));
        }
        (from, to)
    }

    /// Every segment overlapping the time range, in scan order, decoded and
    /// tested event by event.
    fn run_segments(&self, conn: &Connection) -> Result<Vec<Hit>, ScanError> {
        let (from, to) = self.bounds();
        let order = if self.descending {
            "max_time DESC"
        } else {
            "min_time"
        };
        let segments = segment_rows(
            conn,
            &format!(
                "SELECT seg, events, min_time, max_time FROM segments WHERE max_time >= ?1 AND min_time < ?2 ORDER BY {order}"
            ),
            (from, to),
        )?;
        let mut hits = Vec::new();
        for s in segments {
            if !self.can_contribute(&hits, s.min_time, s.max_time) {
                break;
            }
            // Each segment is visited once: decoded, tested, dropped.
            let seg = SegmentCache::default().load(conn, s.first, s.count)?;
            for offset in 0..seg.len() {
                self.consider(&seg, offset, s.first + offset as i64, &mut hits)?;
            }
            self.keep_first(&mut hits);
        }
        Ok(hits)
    }

    /// The blocks that overlap the time range, through their postings (the
    /// writer keeps every committed event indexed, the block being filled too).
    fn run_planned(
        &self,
        conn: &Connection,
        plan: &IndexPlan,
        cache: &mut SegmentCache,
    ) -> Result<Vec<Hit>, ScanError> {
        let (from, to) = self.bounds();
        let mut hits = Vec::new();
        let order = if self.descending {
            "max_time DESC"
        } else {
            "min_time"
        };
        let blocks = segment_rows(
            conn,
            &format!(
                "SELECT block, events, min_time, max_time FROM blocks WHERE events > 0 AND max_time >= ?1 AND min_time < ?2 ORDER BY {order}"
            ),
            (from, to),
        )?;
        for b in blocks {
            if !self.can_contribute(&hits, b.min_time, b.max_time) {
                break;
            }
            let block = b.first;
            let mut blobs: HashMap<Field, Option<Rc<Vec<u8>>>> = HashMap::new();
            let offsets = plan.offsets::<ScanError>(&mut |f| {
                if let Some(v) = blobs.get(&f) {
                    return Ok(v.clone());
                }
                let v = postings_blob(conn, block, f)?;
                blobs.insert(f, v.clone());
                Ok(v)
            })?;
            let first_seq = postings::block_seqs(block).0;
            for o in offsets {
                let seq = first_seq + i64::from(o);
                // A seq whose segment retention removed finds nothing.
                if let Some((first, seg)) = cache.containing(conn, seq)? {
                    self.consider(&seg, (seq - first) as usize, seq, &mut hits)?;
                }
            }
            self.keep_first(&mut hits);
        }
        Ok(hits)
    }
}

fn segment_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<SegmentRow>, ScanError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok(SegmentRow {
            first: r.get(0)?,
            count: r.get(1)?,
            min_time: r.get(2)?,
            max_time: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn postings_blob(
    conn: &Connection,
    block: i64,
    field: Field,
) -> Result<Option<Rc<Vec<u8>>>, ScanError> {
    let mut stmt =
        conn.prepare_cached("SELECT data FROM postings WHERE block = ?1 AND field = ?2")?;
    let mut rows = stmt.query((block, field.column()))?;
    match rows.next()? {
        Some(row) => Ok(Some(Rc::new(row.get(0)?))),
        None => Ok(None),
    }
}
