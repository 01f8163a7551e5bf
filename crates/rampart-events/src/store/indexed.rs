//! Searching with block postings: the unindexed tail by scan, then the
//! indexed blocks that overlap the time range, newest (or oldest) first,
//! stopping as soon as no further block can change the result.

use std::collections::HashMap;
use std::rc::Rc;

use rusqlite::types::{ToSql, Value};
use rusqlite::{params_from_iter, Connection};

use super::plan::IndexPlan;
use super::postings::{self, PostingsError, BLOCK_EVENTS};
use super::schema;
use super::Cursor;
use crate::field::Field;
use crate::query::{SqlFilter, SqlValue};

/// What to collect: events matching `filter` (narrowed by `plan`) with
/// `from <= time < to`, before `cursor` (descending only), `want` at most.
pub struct KeyScan<'a> {
    pub filter: &'a SqlFilter,
    pub plan: &'a IndexPlan,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub cursor: Option<Cursor>,
    pub want: usize,
    pub descending: bool,
}

/// A failure reading the store or its postings.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("index block postings: {0}")]
    Postings(#[from] PostingsError),
}

struct Block {
    block: i64,
    min_time: i64,
    max_time: i64,
}

impl KeyScan<'_> {
    /// `(time, seq)` of the matching events in result order, `want` at most.
    /// Run inside one read transaction so the tail and the blocks agree.
    pub fn run(&self, conn: &Connection) -> Result<Vec<(i64, i64)>, ScanError> {
        if self.want == 0 {
            return Ok(Vec::new());
        }
        let tail_from = schema::next_block(conn)? * BLOCK_EVENTS;
        let (conds, cond_params) = self.conditions();
        let order = if self.descending {
            "time DESC, seq DESC"
        } else {
            "time, seq"
        };
        // NOT INDEXED: the rows are reached by seq (rowid) only; the time
        // index would visit the whole time range instead.
        let tail_sql = format!(
            "SELECT time, seq FROM events NOT INDEXED WHERE seq > ? AND ({}){conds} ORDER BY {order} LIMIT ?",
            self.filter.sql
        );
        let want = self.want as i64;
        let mut keys = Vec::new();
        let filter = &self.filter.params;
        collect(
            conn,
            &tail_sql,
            &bound(&tail_from, filter, &cond_params, &want),
            &mut keys,
        )?;
        let block_sql = format!(
            "SELECT time, seq FROM events NOT INDEXED WHERE seq IN rarray(?) AND ({}){conds} ORDER BY {order} LIMIT ?",
            self.filter.sql
        );
        for b in self.blocks(conn, tail_from)? {
            if keys.len() >= self.want {
                // Sorted and full: a block entirely after (or before) the last
                // kept event cannot contribute.
                let last = keys[self.want - 1].0;
                if (self.descending && b.max_time < last) || (!self.descending && b.min_time > last)
                {
                    break;
                }
            }
            let mut cache: HashMap<Field, Option<Rc<Vec<u8>>>> = HashMap::new();
            let offsets = self.plan.offsets::<ScanError>(&mut |f| {
                if let Some(v) = cache.get(&f) {
                    return Ok(v.clone());
                }
                let v = postings_blob(conn, b.block, f)?;
                cache.insert(f, v.clone());
                Ok(v)
            })?;
            if offsets.is_empty() {
                continue;
            }
            let first = postings::block_seqs(b.block).0;
            let seqs: Rc<Vec<Value>> = Rc::new(
                offsets
                    .iter()
                    .map(|&o| Value::Integer(first + i64::from(o)))
                    .collect(),
            );
            collect(
                conn,
                &block_sql,
                &bound(&seqs, filter, &cond_params, &want),
                &mut keys,
            )?;
            self.keep_first(&mut keys);
        }
        self.keep_first(&mut keys);
        Ok(keys)
    }

    /// Sort `keys` in result order and keep the first `want`.
    fn keep_first(&self, keys: &mut Vec<(i64, i64)>) {
        if self.descending {
            keys.sort_unstable_by(|a, b| b.cmp(a));
        } else {
            keys.sort_unstable();
        }
        keys.truncate(self.want);
    }

    /// The time range and cursor as SQL, `+time` so SQLite keeps to seq access.
    fn conditions(&self) -> (String, Vec<SqlValue>) {
        let mut sql = String::new();
        let mut params = Vec::new();
        if let Some(from) = self.from_ms {
            sql.push_str(" AND +time >= ?");
            params.push(SqlValue::Integer(from));
        }
        if let Some(to) = self.to_ms {
            sql.push_str(" AND +time < ?");
            params.push(SqlValue::Integer(to));
        }
        if let (Some(c), true) = (self.cursor, self.descending) {
            sql.push_str(" AND (+time < ? OR (+time = ? AND seq < ?))");
            params.extend([
                SqlValue::Integer(c.time),
                SqlValue::Integer(c.time),
                SqlValue::Integer(c.seq),
            ]);
        }
        (sql, params)
    }

    /// Indexed blocks with events that overlap the range, in scan order.
    fn blocks(&self, conn: &Connection, tail_from: i64) -> Result<Vec<Block>, ScanError> {
        let from = self.from_ms.unwrap_or(i64::MIN);
        let mut to = self.to_ms.unwrap_or(i64::MAX);
        if let (Some(c), true) = (self.cursor, self.descending) {
            to = to.min(c.time.saturating_add(1));
        }
        let order = if self.descending {
            "max_time DESC"
        } else {
            "min_time"
        };
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT block, min_time, max_time FROM blocks WHERE events > 0 AND block < ?1 AND max_time >= ?2 AND min_time < ?3 ORDER BY {order}"
        ))?;
        let rows = stmt.query_map((tail_from / BLOCK_EVENTS, from, to), |r| {
            Ok(Block {
                block: r.get(0)?,
                min_time: r.get(1)?,
                max_time: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// Parameters in the statements' order: rows, filter, conditions, limit.
fn bound<'a>(
    rows: &'a dyn ToSql,
    filter: &'a [SqlValue],
    conditions: &'a [SqlValue],
    limit: &'a i64,
) -> Vec<&'a dyn ToSql> {
    let mut p: Vec<&dyn ToSql> = vec![rows];
    p.extend(filter.iter().map(|v| v as &dyn ToSql));
    p.extend(conditions.iter().map(|v| v as &dyn ToSql));
    p.push(limit);
    p
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

fn collect(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    out: &mut Vec<(i64, i64)>,
) -> Result<(), ScanError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(row) = rows.next()? {
        out.push((row.get(0)?, row.get(1)?));
    }
    Ok(())
}
