//! Bulk inserts. Two ways, measured against each other in
//! `tests/pg_bench.rs`: a binary `COPY` into a session-local staging table
//! followed by one `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, or one
//! `INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT DO NOTHING` with
//! every column as an array parameter. Both keep the batch's order (it becomes
//! `seq`) and count only the rows that were new.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use futures_util::pin_mut;
use rampart_events::Event;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

use super::columns::{column_name, EventColumns, INTEGER_FIELDS, TEXT_FIELDS};
use super::error::{sql, PgStoreError};
use super::schema::EVENTS;

/// How [`super::FleetStore::insert_batch`] writes rows. Measured here
/// (`tests/pg_bench.rs`, batches of 2,000, 1.5 kB documents) the array insert
/// took less CPU than COPY + staging (client 7.0 vs 9.8 µs, PostgreSQL 34 vs
/// 37 µs per event) and needs no temporary table: it is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InsertMethod {
    /// `COPY ... FROM STDIN BINARY` into a staging table, then one insert.
    Copy,
    /// One `INSERT ... SELECT FROM unnest(...)` with array parameters.
    #[default]
    Arrays,
}

/// An event ready to be written: its columns and its JSON document.
pub struct PreparedRow {
    pub id: Uuid,
    pub time: i64,
    pub columns: EventColumns,
    pub doc: JsonDoc,
}

impl PreparedRow {
    pub fn new(e: &Event) -> Result<PreparedRow, PgStoreError> {
        let json = serde_json::to_vec(e)
            .map_err(|source| PgStoreError::Document { id: e.id(), source })?;
        let json =
            without_nul(json).map_err(|source| PgStoreError::Document { id: e.id(), source })?;
        Ok(PreparedRow {
            id: e.id(),
            time: e.time,
            columns: EventColumns::of(e),
            doc: JsonDoc(json),
        })
    }
}

/// A JSON document rendered once and sent as is: `json`'s binary form is
/// the text (`jsonb`'s is a version byte, then the text).
#[derive(Debug, Clone)]
pub struct JsonDoc(Vec<u8>);

impl ToSql for JsonDoc {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// PostgreSQL text cannot hold NUL (`jsonb` refuses `\u0000`, `json` keeps
/// it but fails when a value is extracted as text): such strings get U+FFFD
/// instead, as the typed columns do. The document is re-rendered only then.
fn without_nul(json: Vec<u8>) -> Result<Vec<u8>, serde_json::Error> {
    if !json.windows(6).any(|w| w == b"\\u0000") {
        return Ok(json);
    }
    let mut value: serde_json::Value = serde_json::from_slice(&json)?;
    replace_nul(&mut value);
    serde_json::to_vec(&value)
}

fn replace_nul(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        serde_json::Value::Array(items) => items.iter_mut().for_each(replace_nul),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut item) in entries {
                replace_nul(&mut item);
                map.insert(k.replace('\0', "\u{fffd}"), item);
            }
        }
        _ => {}
    }
}

/// The table's written columns, in the order both methods send them.
fn column_list() -> String {
    let mut cols = vec!["id", "event_time"];
    cols.extend(TEXT_FIELDS.iter().map(|f| column_name(*f)));
    cols.extend(INTEGER_FIELDS.iter().map(|f| column_name(*f)));
    cols.extend(["group_members", "group_text", "doc"]);
    cols.join(", ")
}

const STAGING: &str = "rampart_events_staging";

/// Write `rows` in one transaction; returns how many were new.
pub async fn write(
    client: &mut Client,
    method: InsertMethod,
    rows: &[PreparedRow],
) -> Result<u64, PgStoreError> {
    match method {
        InsertMethod::Copy => write_copy(client, rows).await,
        InsertMethod::Arrays => write_arrays(client, rows).await,
    }
}

async fn write_copy(client: &mut Client, rows: &[PreparedRow]) -> Result<u64, PgStoreError> {
    let cols = column_list();
    // Session-local, without the table's defaults (no `seq` is drawn for it)
    // and emptied at each commit; created once per connection.
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning;\n\
             CREATE TEMP TABLE IF NOT EXISTS {STAGING} ON COMMIT DELETE ROWS AS SELECT 0::integer AS ord, {cols} FROM {EVENTS} WITH NO DATA"
        ))
        .await
        .map_err(sql("creating the staging table"))?;
    let tx = client
        .transaction()
        .await
        .map_err(sql("starting an insert"))?;
    let sink = tx
        .copy_in(&format!(
            "COPY {STAGING} (ord, {cols}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(sql("starting the COPY of a batch"))?;
    let mut types = vec![Type::INT4, Type::UUID, Type::INT8];
    types.extend(std::iter::repeat_n(Type::TEXT, TEXT_FIELDS.len()));
    types.extend(std::iter::repeat_n(Type::INT8, INTEGER_FIELDS.len()));
    types.extend([Type::TEXT_ARRAY, Type::TEXT, Type::JSON]);
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(types.len());
    let ords: Vec<i32> = (0..rows.len() as i32).collect();
    for (ord, row) in ords.iter().zip(rows) {
        values.clear();
        values.push(ord);
        values.push(&row.id);
        values.push(&row.time);
        let c = &row.columns;
        values.extend(c.text.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.extend(c.integer.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.push(&c.group_members);
        values.push(&c.group_text);
        values.push(&row.doc);
        writer
            .as_mut()
            .write(&values)
            .await
            .map_err(sql("copying a batch"))?;
    }
    writer
        .finish()
        .await
        .map_err(sql("finishing the COPY of a batch"))?;
    let new = tx
        .execute(
            &format!(
                "INSERT INTO {EVENTS} ({cols}) SELECT {cols} FROM {STAGING} ORDER BY ord ON CONFLICT DO NOTHING"
            ),
            &[],
        )
        .await
        .map_err(sql("inserting a batch"))?;
    tx.commit().await.map_err(sql("committing a batch"))?;
    Ok(new)
}

async fn write_arrays(client: &mut Client, rows: &[PreparedRow]) -> Result<u64, PgStoreError> {
    let cols = column_list();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let times: Vec<i64> = rows.iter().map(|r| r.time).collect();
    let texts: Vec<Vec<Option<&str>>> = (0..TEXT_FIELDS.len())
        .map(|i| rows.iter().map(|r| r.columns.text[i].as_deref()).collect())
        .collect();
    let integers: Vec<Vec<Option<i64>>> = (0..INTEGER_FIELDS.len())
        .map(|i| rows.iter().map(|r| r.columns.integer[i]).collect())
        .collect();
    let joined: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.columns.group_joined.as_deref())
        .collect();
    let group_text: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.columns.group_text.as_deref())
        .collect();
    let docs: Vec<&JsonDoc> = rows.iter().map(|r| &r.doc).collect();

    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &times];
    let mut arrays = vec!["$1::uuid[]".to_string(), "$2::bigint[]".to_string()];
    for t in &texts {
        params.push(t);
        arrays.push(format!("${}::text[]", params.len()));
    }
    for n in &integers {
        params.push(n);
        arrays.push(format!("${}::bigint[]", params.len()));
    }
    params.push(&joined);
    arrays.push(format!("${}::text[]", params.len()));
    params.push(&group_text);
    arrays.push(format!("${}::text[]", params.len()));
    params.push(&docs);
    arrays.push(format!("${}::json[]", params.len()));

    let n = arrays.len();
    let names: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
    // c1..cN in column order; the joined groups (c{n-2}) split back into members.
    let mut select: Vec<String> = names[..n - 3].to_vec();
    let g = &names[n - 3];
    select.push(format!(
        "CASE WHEN {g} IS NULL THEN '{{}}'::text[] WHEN {g} = '' THEN ARRAY['']::text[] ELSE string_to_array({g}, ',') END"
    ));
    select.push(names[n - 2].clone());
    select.push(names[n - 1].clone());
    let statement = format!(
        "INSERT INTO {EVENTS} ({cols}) SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, ord) ORDER BY ord ON CONFLICT DO NOTHING",
        select.join(", "),
        arrays.join(", "),
        names.join(", "),
    );
    client
        .execute(&statement, &params)
        .await
        .map_err(sql("inserting a batch"))
}

/// Whether `e` is PostgreSQL's "no partition of relation found for row".
pub fn is_missing_partition(e: &PgStoreError) -> bool {
    match e {
        PgStoreError::Sql { source, .. } => {
            source
                .code()
                .is_some_and(|c| *c == tokio_postgres::error::SqlState::CHECK_VIOLATION)
                && source
                    .as_db_error()
                    .is_some_and(|d| d.message().contains("no partition"))
        }
        _ => false,
    }
}
