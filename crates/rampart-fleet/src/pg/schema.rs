//! The fleet store's schema, applied when a server connects: numbered
//! migrations, each run once, under an advisory lock so servers starting
//! together do not race.

use tokio_postgres::Client;

use super::error::{sql, PgStoreError};
use super::partition;

/// Key of the advisory lock every schema change (migrations, partition DDL) takes.
pub const DDL_LOCK: i64 = 0x7261_6d70_6172_7401; // "rampart" + 1

/// The table queries read: partitioned by `event_time` (ms since the epoch).
pub const EVENTS: &str = "rampart_events";

/// Migration `n` is `MIGRATIONS[n - 1]`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4];

/// Schema 1. The primary key holds the partition key, as PostgreSQL requires
/// of a unique index on a partitioned table; ids are time-ordered UUIDv7 and
/// an event's time never changes, so `(id, event_time)` is unique by id.
/// `seq` is the insertion order: ties in time sort by it, as in the embedded
/// store, and `tail` follows it. The edge partitions hold times no day
/// partition can name (before year 1, from year 10000).
///
/// The document is `json` (validated, kept as text), not `jsonb`: parsing
/// into `jsonb` was 30 % of PostgreSQL's CPU per inserted event here
/// (~17 of ~56 µs for a 1.7 kB document), every query field has its own
/// column, and `->`/`->>` still reach into the document from SQL.
const MIGRATION_1: &str = r#"
CREATE SEQUENCE rampart_events_seq AS bigint CACHE 1000;
CREATE TABLE rampart_events (
  id uuid NOT NULL,
  event_time bigint NOT NULL,
  seq bigint NOT NULL DEFAULT nextval('rampart_events_seq'),
  flow text COLLATE "C",
  event_type text COLLATE "C",
  action text COLLATE "C",
  user_name text COLLATE "C",
  device text COLLATE "C",
  process text COLLATE "C",
  src_ip text COLLATE "C",
  dst_ip text COLLATE "C",
  host text COLLATE "C",
  url text COLLATE "C",
  method text COLLATE "C",
  category text COLLATE "C",
  app text COLLATE "C",
  rule text COLLATE "C",
  rule_id text COLLATE "C",
  revision text COLLATE "C",
  tls text COLLATE "C",
  bypass text COLLATE "C",
  severity text COLLATE "C",
  alert text COLLATE "C",
  reporter text COLLATE "C",
  dst_port bigint,
  status bigint,
  bytes_in bigint,
  bytes_out bigint,
  group_members text[] COLLATE "C" NOT NULL DEFAULT '{}',
  group_text text COLLATE "C",
  doc json NOT NULL,
  PRIMARY KEY (id, event_time)
) PARTITION BY RANGE (event_time);
CREATE INDEX rampart_events_time ON rampart_events (event_time, seq);
CREATE INDEX rampart_events_seq_idx ON rampart_events (seq);
CREATE INDEX rampart_events_user ON rampart_events (user_name, event_time, seq);
CREATE INDEX rampart_events_device ON rampart_events (device, event_time, seq);
CREATE INDEX rampart_events_host ON rampart_events (host, event_time, seq);
CREATE INDEX rampart_events_alerts ON rampart_events (event_time, seq) WHERE event_type = 'alert';
"#;

/// Schema 2: the fleet gateway that logged each event (query field
/// `gateway`), filled from the documents the server had stamped before.
/// No index here: schema 3 adds one (a gateway with few events in the range
/// was slow to find without it).
const MIGRATION_2: &str = r#"
ALTER TABLE rampart_events ADD COLUMN gateway text COLLATE "C";
UPDATE rampart_events SET gateway = lower(doc->'unmapped'->>'gateway')
  WHERE doc->'unmapped'->>'gateway' IS NOT NULL;
"#;

/// Schema 3: the index schema 2 went without. A busy gateway's events are
/// found fast through the time index, but a gateway with few or no events in
/// the range (one just added, one retired, a typo) made a search read every
/// row of the range: with a day of 1M events (a 10M-event, ten-day
/// store's partition), a gateway with none in the last 24 hours took 1.7 s (a
/// parallel sequential scan), one with 0.1 % of the events 170 ms; with
/// this index 0.4 and 3 ms (bench/notes/29-issue-20-fleet-search-at-10m-rows-2026-12-07-22.md). Ordered like the user, device and host indexes, so the newest
/// events of any gateway come straight from it. On an existing store it is
/// built when a server of this version first connects (inserts wait
/// meanwhile: ~5 s per million events measured here).
const MIGRATION_3: &str = r#"
CREATE INDEX rampart_events_gateway ON rampart_events (gateway, event_time, seq);
"#;

/// Schema 4: a user's blocked (or alerted) events. Through the user index,
/// `user = X and action = block` read the user's events newest first and
/// tested each row's action on its heap page: with 5 % of events blocked,
/// ~2,000 rows and pages for 100 hits, and every row of the range for a user
/// blocked less often (cold, over four 1M-event days: 1.6 s p95). This index
/// holds only the events that were not allowed, so its cost per insert is
/// paid by those few rows (bench/RESULTS.md, "Issue 20: user and action
/// search, index cost"). A search whose action is a value other than `allow`
/// implies the predicate, so PostgreSQL can use it; the action column leads
/// the time so one action's events come out newest first. Built when a
/// server of this version first connects (inserts wait meanwhile).
const MIGRATION_4: &str = r#"
CREATE INDEX rampart_events_user_not_allowed ON rampart_events (user_name, action, event_time, seq)
  WHERE action <> 'allow';
"#;

/// Bring the schema up to date (idempotent). Refuses a database whose
/// encoding is not UTF-8 (text comparison and `like` would differ from the
/// query language's) or whose schema is newer than this build.
pub async fn migrate(client: &mut Client) -> Result<(), PgStoreError> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .map_err(sql("reading the database encoding"))?
        .get(0);
    if encoding != "UTF8" {
        return Err(PgStoreError::Encoding(encoding));
    }
    let tx = client
        .transaction()
        .await
        .map_err(sql("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await
        .map_err(sql("locking the schema"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rampart_fleet_schema (\n  version integer PRIMARY KEY,\n  applied_at timestamptz NOT NULL DEFAULT now()\n)",
    )
    .await
    .map_err(sql("creating the schema version table"))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM rampart_fleet_schema",
            &[],
        )
        .await
        .map_err(sql("reading the schema version"))?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(PgStoreError::NewerSchema {
            found: current,
            known,
        });
    }
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(migration)
            .await
            .map_err(sql("applying a schema migration"))?;
        if n == 0 {
            tx.batch_execute(&partition::edge_partitions_sql())
                .await
                .map_err(sql("creating the edge partitions"))?;
        }
        tx.execute(
            "INSERT INTO rampart_fleet_schema (version) VALUES ($1)",
            &[&(n as i32 + 1)],
        )
        .await
        .map_err(sql("recording the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(sql("committing the schema migration"))?;
    Ok(())
}
