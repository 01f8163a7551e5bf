//! Hourly summaries: per clock hour, how many requests, blocks and alerts the
//! store received, and which hosts and categories were blocked and which users
//! raised alerts. The writer adds to them in the transaction that inserts the
//! events, so the console's overview reads a few hundred rows instead of every
//! event of the last 24 hours (at 10M events a day, reading the events took
//! seconds and had to stop at a sample).
//!
//! Counts say what was received. Retention removes the rows of hours before
//! the oldest stored event; an hour that retention emptied in part keeps its
//! full count. A store written before the summaries existed has none for its
//! older events: `meta.hourly_since_ms` says from when they are complete.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use super::prepared::SUMMARY;
use super::schema::{self, INDEXED};
use crate::field::Field;

pub const HOUR_MS: i64 = 3_600_000;

/// The `meta` key: the time from which every received event is counted.
pub const SINCE_KEY: &str = "hourly_since_ms";

/// What is counted per hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// HTTP and network flows.
    Requests,
    /// Flows the policy blocked.
    Blocks,
    /// Alert events.
    Alerts,
    /// Blocked flows by host.
    BlockedHost,
    /// Blocked flows by category (a flow counts once per category).
    BlockedCategory,
    /// Alerts by user.
    AlertUser,
    /// Flows that bypassed inspection (on the endpoint or at the gateway).
    Bypasses,
    /// Blocked flows by app.
    BlockedApp,
}

impl Metric {
    const ALL: [Metric; 8] = [
        Metric::Requests,
        Metric::Blocks,
        Metric::Alerts,
        Metric::BlockedHost,
        Metric::BlockedCategory,
        Metric::AlertUser,
        Metric::Bypasses,
        Metric::BlockedApp,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Blocks => "blocks",
            Metric::Alerts => "alerts",
            Metric::BlockedHost => "blocked_host",
            Metric::BlockedCategory => "blocked_category",
            Metric::AlertUser => "alert_user",
            Metric::Bypasses => "bypasses",
            Metric::BlockedApp => "blocked_app",
        }
    }

    fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS hourly (\n  hour INTEGER NOT NULL,\n  metric TEXT NOT NULL,\n  key TEXT NOT NULL,\n  count INTEGER NOT NULL,\n  PRIMARY KEY (hour, metric, key)\n) WITHOUT ROWID;",
    )
}

/// Sets [`SINCE_KEY`] the first time a writer opens the store: 0 for an
/// empty store (every event is counted), now for one with older events.
pub fn start(conn: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    if schema::meta(conn, SINCE_KEY)?.is_some() {
        return Ok(());
    }
    let in_segments: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM segments)", [], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    // Rows of schemas 1–3 are moved into segments without being counted.
    let legacy = schema::has_table(conn, schema::LEGACY_EVENTS)?
        && conn.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))?;
    let has_events = in_segments || legacy;
    let since = if has_events { now_ms } else { 0 };
    schema::set_meta(conn, SINCE_KEY, &since.to_string())
}

/// Where `field` is among the values [`HourlyBuilder::add`] is given.
fn position(field: Field) -> usize {
    INDEXED
        .iter()
        .chain(SUMMARY.iter())
        .position(|f| *f == field)
        .unwrap_or(usize::MAX)
}

/// The counts of one insert batch, written at its commit.
#[derive(Default)]
pub struct HourlyBuilder {
    counts: HashMap<(i64, Metric, String), i64>,
}

impl HourlyBuilder {
    /// Count an event at `time` with its [`INDEXED`] values followed by its
    /// [`SUMMARY`] ones (a prepared event's `indexed()` then `summary()`).
    pub fn add<'a>(&mut self, time: i64, values: impl Iterator<Item = Option<&'a str>>) {
        let values: Vec<Option<&str>> = values.collect();
        let value = |field: Field| values.get(position(field)).copied().flatten();
        let hour = time.div_euclid(HOUR_MS);
        let mut count = |metric: Metric, key: &str| {
            *self
                .counts
                .entry((hour, metric, key.to_string()))
                .or_default() += 1;
        };
        match value(Field::Type) {
            Some("http" | "network") => {
                count(Metric::Requests, "");
                if value(Field::Bypass).is_some() {
                    count(Metric::Bypasses, "");
                }
                if value(Field::Action) == Some("block") {
                    count(Metric::Blocks, "");
                    if let Some(host) = value(Field::Host) {
                        count(Metric::BlockedHost, host);
                    }
                    if let Some(app) = value(Field::App) {
                        count(Metric::BlockedApp, app);
                    }
                    for c in value(Field::Category)
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                    {
                        count(Metric::BlockedCategory, c);
                    }
                }
            }
            Some("alert") => {
                count(Metric::Alerts, "");
                if let Some(user) = value(Field::User) {
                    count(Metric::AlertUser, user);
                }
            }
            _ => {}
        }
    }

    /// Add this batch's counts to the stored ones.
    pub fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO hourly(hour, metric, key, count) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(hour, metric, key) DO UPDATE SET count = count + excluded.count",
        )?;
        for ((hour, metric, key), n) in self.counts.drain() {
            stmt.execute((hour, metric.as_str(), key, n))?;
        }
        Ok(())
    }
}

/// Remove the summaries of hours that end before `before_ms`.
pub fn prune(conn: &Connection, before_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM hourly WHERE hour < ?1")?
        .execute([before_ms.div_euclid(HOUR_MS)])?;
    Ok(())
}

/// The summaries of the hours from `from_ms` on.
#[derive(Clone, Debug, Default)]
pub struct Hourly {
    /// `(hour start in ms, metric, key, count)`; `key` is empty for the totals.
    pub rows: Vec<(i64, Metric, String, i64)>,
    /// From when every received event is counted (0: always).
    pub since_ms: i64,
}

pub fn read(conn: &Connection, from_ms: i64) -> rusqlite::Result<Hourly> {
    let since_ms = schema::meta(conn, SINCE_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut stmt =
        conn.prepare_cached("SELECT hour, metric, key, count FROM hourly WHERE hour >= ?1")?;
    let rows = stmt
        .query_map([from_ms.div_euclid(HOUR_MS)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .filter_map(|row| match row {
            Ok((hour, metric, key, n)) => {
                Metric::parse(&metric).map(|m| Ok((hour * HOUR_MS, m, key, n)))
            }
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Hourly { rows, since_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexed<'a>(
        ty: &'a str,
        action: &'a str,
        host: &'a str,
        cat: &'a str,
        user: &'a str,
    ) -> Vec<Option<&'a str>> {
        INDEXED
            .iter()
            .chain(SUMMARY.iter())
            .map(|f| match f {
                Field::Type => Some(ty),
                Field::Action => Some(action),
                Field::Host => Some(host),
                Field::Category => Some(cat).filter(|c| !c.is_empty()),
                Field::User => Some(user),
                Field::App => Some("dropbox").filter(|_| action == "block"),
                Field::Bypass => Some("client").filter(|_| action == "bypass"),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn counting_starts_now_for_a_store_with_older_events_and_at_zero_for_a_new_one() {
        let since = |legacy_row: bool| {
            let conn = Connection::open_in_memory().unwrap();
            schema::create(&conn).unwrap();
            if legacy_row {
                conn.execute_batch(
                    "CREATE TABLE events (seq INTEGER, id BLOB, time INTEGER, doc BLOB);\
                     INSERT INTO events VALUES (1, x'00', 5, x'00');",
                )
                .unwrap();
            }
            start(&conn, 1_000).unwrap();
            // A second start keeps the first answer.
            start(&conn, 2_000).unwrap();
            read(&conn, 0).unwrap().since_ms
        };
        assert_eq!(since(false), 0);
        assert_eq!(since(true), 1_000);
    }

    #[test]
    fn batches_add_up_per_hour_metric_and_key_and_prune_drops_old_hours() {
        let conn = Connection::open_in_memory().unwrap();
        schema::create(&conn).unwrap();
        create(&conn).unwrap();
        let mut b = HourlyBuilder::default();
        let t0 = 10 * HOUR_MS;
        b.add(
            t0 + 1,
            indexed("http", "allow", "a.test", "news", "u").into_iter(),
        );
        b.add(
            t0 + 2,
            indexed("http", "block", "b.test", "news,gambling", "u").into_iter(),
        );
        b.add(
            t0 + HOUR_MS,
            indexed("network", "block", "b.test", "", "u").into_iter(),
        );
        b.add(
            t0 + HOUR_MS,
            indexed("alert", "alert", "b.test", "", "eve").into_iter(),
        );
        b.add(
            t0 + HOUR_MS,
            indexed("audit", "", "", "", "root").into_iter(),
        );
        b.write(&conn).unwrap();
        // A second batch adds to the same rows.
        b.add(
            t0 + 3,
            indexed("http", "block", "b.test", "news", "u").into_iter(),
        );
        b.write(&conn).unwrap();
        let h = read(&conn, t0).unwrap();
        let get = |hour: i64, m: Metric, key: &str| {
            h.rows
                .iter()
                .find(|r| r.0 == hour && r.1 == m && r.2 == key)
                .map_or(0, |r| r.3)
        };
        assert_eq!(get(t0, Metric::Requests, ""), 3);
        assert_eq!(get(t0, Metric::Blocks, ""), 2);
        assert_eq!(get(t0, Metric::BlockedHost, "b.test"), 2);
        assert_eq!(get(t0, Metric::BlockedCategory, "news"), 2);
        assert_eq!(get(t0, Metric::BlockedCategory, "gambling"), 1);
        assert_eq!(get(t0 + HOUR_MS, Metric::Requests, ""), 1);
        assert_eq!(get(t0 + HOUR_MS, Metric::Alerts, ""), 1);
        assert_eq!(get(t0 + HOUR_MS, Metric::AlertUser, "eve"), 1);
        assert_eq!(get(t0, Metric::BlockedApp, "dropbox"), 2);
        b.add(
            t0 + 4,
            indexed("network", "bypass", "c.test", "", "u").into_iter(),
        );
        b.write(&conn).unwrap();
        let h2 = read(&conn, t0).unwrap();
        assert!(h2
            .rows
            .iter()
            .any(|r| r.0 == t0 && r.1 == Metric::Bypasses && r.3 == 1));
        prune(&conn, t0 + HOUR_MS).unwrap();
        let h = read(&conn, 0).unwrap();
        assert!(h.rows.iter().all(|r| r.0 == t0 + HOUR_MS), "{:?}", h.rows);
    }
}
