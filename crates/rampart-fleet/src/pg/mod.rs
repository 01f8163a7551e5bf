//! The PostgreSQL fleet event store: where the server keeps the events of
//! every gateway when it runs in fleet mode (the embedded store stays for
//! all-in-one mode).
//!
//! - One table, `rampart_events`, range-partitioned by event time into
//!   daily partitions created ahead and on demand (`partition.rs`), with a
//!   typed column per query field (`columns.rs`) and the whole OCSF document
//!   as `json`. The schema is migrated when a server connects (`schema.rs`).
//! - Inserts are idempotent by event id (`ON CONFLICT DO NOTHING`), in bulk
//!   (`ingest.rs`), and say how many events were new.
//! - Searches take the query language's parsed [`Query`], translated to SQL
//!   with bind parameters only (`translate.rs`), and return the same events in
//!   the same order as the embedded store ([`rampart_events::StoreReader`]):
//!   newest first by `(time, seq)`, `seq` being the insertion order.
//! - Retention drops whole partitions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rampart_fleet::pg::FleetStore;
//! let store = FleetStore::connect("postgresql://rampart@127.0.0.1:5432/rampart").await?;
//! # let events: Vec<rampart_events::Event> = Vec::new();
//! let new = store.insert_batch(&events).await?; // a redelivered batch adds 0
//! let page = store
//!     .search(&rampart_events::SearchRequest {
//!         query: rampart_events::parse_query("user = alice and action = block")?,
//!         limit: 100,
//!         ..Default::default()
//!     })
//!     .await?;
//! # let _ = (new, page);
//! # Ok(()) }
//! ```
//!
//! Connections come from a pool that replaces broken ones, so the store
//! recovers by itself once PostgreSQL is back; errors say whether retrying
//! makes sense ([`PgStoreError::is_transient`]). No TLS to PostgreSQL yet:
//! keep it on a trusted network or a local socket.

mod columns;
mod error;
mod ingest;
mod partition;
mod schema;
mod search;
mod translate;

use std::collections::BTreeSet;
use std::sync::Mutex;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rampart_events::Event;

pub use error::PgStoreError;
pub use ingest::InsertMethod;
pub use partition::DAY_MS;
pub use search::TimelineSubject;

use error::sql;
use ingest::PreparedRow;

/// How to reach and use the database.
#[derive(Clone, Debug)]
pub struct FleetStoreConfig {
    /// `postgresql://user:password@host:port/database`, or the key=value form
    /// (`host=/run/postgresql dbname=rampart`).
    pub url: String,
    /// Connections kept open (ingest and searches share them).
    pub pool_size: usize,
    pub insert_method: InsertMethod,
    /// Daily partitions created ahead of today at connect and maintenance.
    pub days_ahead: i64,
}

impl FleetStoreConfig {
    pub fn new(url: impl Into<String>) -> FleetStoreConfig {
        FleetStoreConfig {
            url: url.into(),
            pool_size: 8,
            insert_method: InsertMethod::default(),
            days_ahead: 3,
        }
    }
}

/// A day partition and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub table: String,
    /// Days since the epoch (UTC).
    pub day: i64,
    /// `[from_ms, to_ms)`.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The fleet event store. Cheap to share (`Arc`); every method takes `&self`.
pub struct FleetStore {
    pool: Pool,
    insert_method: InsertMethod,
    days_ahead: i64,
    /// Days whose partition is known to exist, so most batches need no DDL.
    known_days: Mutex<BTreeSet<i64>>,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("insert_method", &self.insert_method)
            .finish_non_exhaustive()
    }
}

impl FleetStore {
    /// Connect with the defaults of [`FleetStoreConfig::new`].
    pub async fn connect(url: &str) -> Result<FleetStore, PgStoreError> {
        FleetStore::connect_with(FleetStoreConfig::new(url)).await
    }

    /// Connect, migrate the schema and create the partitions of the days
    /// around now.
    pub async fn connect_with(config: FleetStoreConfig) -> Result<FleetStore, PgStoreError> {
        let pg_config: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| PgStoreError::BadUrl(error::chain(&e)))?;
        let manager = Manager::from_config(
            pg_config,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection that broke (server restart) is replaced, not handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .build()
            .map_err(|e| PgStoreError::Connect(e.to_string()))?;
        let store = FleetStore {
            pool,
            insert_method: config.insert_method,
            days_ahead: config.days_ahead.max(0),
            known_days: Mutex::new(BTreeSet::new()),
        };
        {
            let mut client = store.client().await?;
            schema::migrate(&mut client).await?;
        }
        store.maintain_partitions(rampart_events::now_ms()).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgStoreError> {
        self.pool.get().await.map_err(|e| {
            let text = match &e {
                deadpool_postgres::PoolError::Backend(b) => error::chain(b),
                other => other.to_string(),
            };
            PgStoreError::Connect(text)
        })
    }

    /// Store `events`; returns how many were new (an event whose id is
    /// already stored is skipped, so a redelivered batch adds nothing).
    /// Events keep the batch's order among themselves.
    pub async fn insert_batch(&self, events: &[Event]) -> Result<u64, PgStoreError> {
        self.insert_events(events).await
    }

    /// [`FleetStore::insert_batch`] from borrowed events.
    pub async fn insert_events<'a>(
        &self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<u64, PgStoreError> {
        let rows = events
            .into_iter()
            .map(PreparedRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(0);
        }
        let days: BTreeSet<i64> = rows
            .iter()
            .filter_map(|r| partition::day_of(r.time))
            .collect();
        self.ensure_days(&days).await?;
        let mut client = self.client().await?;
        match ingest::write(&mut client, self.insert_method, &rows).await {
            // Another server's retention dropped a partition this one thought
            // existed: forget what it knew, create, retry once.
            Err(e) if ingest::is_missing_partition(&e) => {
                drop(client);
                self.forget_days();
                self.ensure_days(&days).await?;
                let mut client = self.client().await?;
                ingest::write(&mut client, self.insert_method, &rows).await
            }
            other => other,
        }
    }

    fn forget_days(&self) {
        if let Ok(mut known) = self.known_days.lock() {
            known.clear();
        }
    }

    /// Create the partitions of `days` that are not known to exist.
    async fn ensure_days(&self, days: &BTreeSet<i64>) -> Result<(), PgStoreError> {
        let missing: Vec<i64> = match self.known_days.lock() {
            Ok(known) => days.difference(&known).copied().collect(),
            Err(_) => days.iter().copied().collect(),
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting partition creation"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::DDL_LOCK])
            .await
            .map_err(sql("locking the schema for partition creation"))?;
        let mut ddl = String::from("SET LOCAL client_min_messages = warning;\n");
        for day in &missing {
            if let Some(stmt) = partition::create_sql(*day) {
                ddl.push_str(&stmt);
                ddl.push_str(";\n");
            }
        }
        tx.batch_execute(&ddl)
            .await
            .map_err(sql("creating daily partitions"))?;
        tx.commit()
            .await
            .map_err(sql("committing partition creation"))?;
        if let Ok(mut known) = self.known_days.lock() {
            known.extend(missing);
        }
        Ok(())
    }

    /// Create the partitions from yesterday to `days_ahead` days after
    /// `now_ms`. Run at connect; the server runs it daily with retention.
    pub async fn maintain_partitions(&self, now_ms: i64) -> Result<(), PgStoreError> {
        let Some(today) = partition::day_of(now_ms) else {
            return Ok(());
        };
        let existing = self.partitions().await?;
        if let Ok(mut known) = self.known_days.lock() {
            known.extend(existing.iter().map(|p| p.day));
        }
        let days: BTreeSet<i64> = (today - 1..=today + self.days_ahead).collect();
        self.ensure_days(&days).await
    }

    /// Make sure partitions exist for every day of `[from_ms, to_ms)`.
    pub async fn ensure_partitions(&self, from_ms: i64, to_ms: i64) -> Result<(), PgStoreError> {
        let (Some(first), Some(last)) = (
            partition::day_of(from_ms),
            partition::day_of(to_ms.saturating_sub(1)),
        ) else {
            return Ok(());
        };
        let days: BTreeSet<i64> = (first..=last).collect();
        self.ensure_days(&days).await
    }

    /// The day partitions, oldest first.
    pub async fn partitions(&self) -> Result<Vec<PartitionInfo>, PgStoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'rampart_events'::regclass",
                &[],
            )
            .await
            .map_err(sql("listing partitions"))?;
        let mut out: Vec<PartitionInfo> = rows
            .iter()
            .filter_map(|r| {
                let table: String = r.get(0);
                let day = partition::parse_name(&table)?;
                Some(PartitionInfo {
                    table,
                    day,
                    from_ms: day * DAY_MS,
                    to_ms: (day + 1) * DAY_MS,
                })
            })
            .collect();
        out.sort_by_key(|p| p.day);
        Ok(out)
    }

    /// Retention: drop every day partition that ends at or before
    /// `cutoff_ms` (its events are all older), and empty the partition of
    /// times before year 1. Returns the dropped tables. Partitions the cutoff
    /// falls inside are kept whole: retention is by the day.
    pub async fn drop_partitions_before(
        &self,
        cutoff_ms: i64,
    ) -> Result<Vec<String>, PgStoreError> {
        let doomed: Vec<PartitionInfo> = self
            .partitions()
            .await?
            .into_iter()
            .filter(|p| p.to_ms <= cutoff_ms)
            .collect();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting retention"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::DDL_LOCK])
            .await
            .map_err(sql("locking the schema for retention"))?;
        let mut ddl = format!("TRUNCATE {};\n", partition::BEFORE_MIN);
        for p in &doomed {
            // Names come from the catalogue and passed `parse_name`: digits only.
            ddl.push_str(&format!("DROP TABLE IF EXISTS {};\n", p.table));
        }
        tx.batch_execute(&ddl)
            .await
            .map_err(sql("dropping old partitions"))?;
        tx.commit().await.map_err(sql("committing retention"))?;
        if let Ok(mut known) = self.known_days.lock() {
            for p in &doomed {
                known.remove(&p.day);
            }
        }
        Ok(doomed.into_iter().map(|p| p.table).collect())
    }

    /// Retention by age: drop the partitions wholly older than `days` days before `now_ms`.
    pub async fn drop_partitions_older_than(
        &self,
        days: u32,
        now_ms: i64,
    ) -> Result<Vec<String>, PgStoreError> {
        self.drop_partitions_before(now_ms.saturating_sub(i64::from(days) * DAY_MS))
            .await
    }
}

/// The fleet store as the events consumer's sink (what the server runs in
/// fleet mode): a batch is committed in one transaction, and events whose id
/// is stored already are skipped, so redelivered messages and events re-sent
/// in another batch are stored once.
impl crate::nats::EventSink for FleetStore {
    type Error = PgStoreError;

    async fn insert_batch(
        &self,
        events: &[crate::nats::ReceivedEvent],
    ) -> Result<usize, PgStoreError> {
        let new = self.insert_events(events.iter().map(|r| &r.event)).await?;
        Ok(usize::try_from(new).unwrap_or(usize::MAX))
    }
}
