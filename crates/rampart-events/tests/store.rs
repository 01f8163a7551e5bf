//! The SQLite store: search semantics, keyset pagination, timelines, retention.

mod common;

use std::collections::HashSet;

use rampart_events::query::parse;
use rampart_events::store::{Cursor, SearchRequest};
use rampart_events::{db_path, StoreReader, StoreWriter};

fn filled(n: u64) -> (tempfile::TempDir, StoreReader) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let events: Vec<_> = (0..n)
        .map(|i| common::http(i, 1_000_000 + i as i64 * 1000))
        .collect();
    assert_eq!(w.insert(&events).unwrap(), n as usize);
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    (dir, r)
}

fn search(r: &StoreReader, q: &str) -> Vec<rampart_events::Event> {
    let req = SearchRequest {
        query: parse(q).unwrap(),
        limit: 10_000,
        ..Default::default()
    };
    r.search(&req).unwrap().events
}

#[test]
fn query_results_equal_the_in_memory_matcher_for_every_operator() {
    let (_d, r) = filled(200);
    let all = search(&r, "");
    assert_eq!(all.len(), 200);
    for q in [
        "user = alice",
        "user = ALICE and action = block",
        "user != alice",
        "category in (news, gambling)",
        "category not in (news)",
        "host like gambling",
        "host like 'h1.*'",
        "status >= 400",
        "bytes_in < 1010",
        "group = engineering and not action = allow",
        "(user = bob or user = carol) and category = search",
        "rule = 'block gambling'",
        "device = dev-3",
        "type = http and tls = decrypt",
        "process = nothing",
        "process != nothing",
    ] {
        let parsed = parse(q).unwrap();
        let want: HashSet<_> = all
            .iter()
            .filter(|e| parsed.matches(e))
            .map(|e| e.id())
            .collect();
        let got: HashSet<_> = search(&r, q).iter().map(|e| e.id()).collect();
        assert_eq!(got, want, "query `{q}`");
        let expect_empty = q == "process = nothing";
        assert_eq!(
            got.is_empty(),
            expect_empty,
            "`{q}` result count {}",
            got.len()
        );
    }
}

#[test]
fn keyset_pages_cover_everything_once_newest_first() {
    let (_d, r) = filled(95);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = r
            .search(&SearchRequest {
                query: parse("").unwrap(),
                limit: 10,
                cursor: cursor.as_deref().map(|c| Cursor::parse(c).unwrap()),
                ..Default::default()
            })
            .unwrap();
        seen.extend(page.events.iter().map(|e| e.time));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 95);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first"
    );
}

#[test]
fn time_range_is_from_inclusive_to_exclusive() {
    let (_d, r) = filled(10);
    let req = SearchRequest {
        query: parse("").unwrap(),
        from_ms: Some(1_002_000),
        to_ms: Some(1_005_000),
        limit: 100,
        ..Default::default()
    };
    let times: Vec<i64> = r
        .search(&req)
        .unwrap()
        .events
        .iter()
        .map(|e| e.time)
        .collect();
    assert_eq!(times, vec![1_004_000, 1_003_000, 1_002_000]);
}

#[test]
fn timeline_is_one_device_in_time_order() {
    let (_d, r) = filled(100);
    let t = r.timeline("dev-3", 1_010_000, 1_060_000, 1000).unwrap();
    assert!(!t.is_empty());
    assert!(t.iter().all(|e| e.device_name() == Some("dev-3")));
    assert!(t.windows(2).all(|w| w[0].time <= w[1].time));
    assert!(t.iter().all(|e| (1_010_000..=1_060_000).contains(&e.time)));
}

#[test]
fn duplicate_ids_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let e = common::http(1, 5_000);
    assert_eq!(w.insert(&[e.clone(), e.clone()]).unwrap(), 1);
    assert_eq!(w.insert(&[e]).unwrap(), 0);
    assert_eq!(w.count().unwrap(), 1);
}

/// A replayed batch mixing old, recent and new events (a spool replayed
/// after a crash, an agent's upload after days offline) stores only the new.
#[test]
fn replayed_events_are_ignored_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let day = 86_400_000;
    let events: Vec<_> = (0..5000u64)
        .map(|i| common::http(i, 1_700_000_000_000 + i as i64 * 60_000))
        .collect();
    for batch in events.chunks(100) {
        w.insert(batch).unwrap();
    }
    let fresh = common::http(9, 1_700_000_000_000 + 10 * day);
    let replay = vec![
        events[3].clone(),
        events[2500].clone(),
        fresh.clone(),
        events[4999].clone(),
        fresh,
    ];
    assert_eq!(w.insert(&replay).unwrap(), 1);
    assert_eq!(w.count().unwrap(), 5001);
}

#[test]
fn retention_removes_old_events_then_oldest_until_under_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let events: Vec<_> = (0..5000)
        .map(|i| common::http(i, 1_000_000 + i as i64))
        .collect();
    // Commits of 100 events: segments of 100.
    for batch in events.chunks(100) {
        w.insert(batch).unwrap();
    }
    let r = w
        .enforce_retention(1_000_000 + 6_000, Some(5_000), None)
        .unwrap();
    assert_eq!(r.expired, 1000);
    assert_eq!(w.count().unwrap(), 4000);
    // A segment goes whole once its newest event is past the limit: a cutoff
    // inside the segment of events 1000..1100 keeps it.
    let r = w
        .enforce_retention(1_000_000 + 6_050, Some(5_000), None)
        .unwrap();
    assert_eq!(r.expired, 0);
    let r = w
        .enforce_retention(1_000_000 + 6_100, Some(5_000), None)
        .unwrap();
    assert_eq!(r.expired, 100);
    assert_eq!(w.count().unwrap(), 3900);
    let size = w.live_bytes().unwrap();
    let r = w.enforce_retention(0, None, Some(size / 2)).unwrap();
    assert!(r.evicted_for_size > 0);
    assert!(w.live_bytes().unwrap() <= size / 2);
    let reader = StoreReader::open(&db_path(dir.path())).unwrap();
    let oldest_left = reader
        .search(&SearchRequest {
            query: parse("").unwrap(),
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .events
        .last()
        .map(|e| e.time)
        .unwrap();
    assert!(oldest_left > 1_001_000, "the oldest went first");
}

#[test]
fn get_returns_the_stored_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let e = common::http(3, 9_000);
    w.insert(std::slice::from_ref(&e)).unwrap();
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    assert_eq!(r.get(&e.id().to_string()).unwrap(), Some(e));
    assert_eq!(r.get("00000000-0000-0000-0000-000000000000").unwrap(), None);
}

#[test]
fn missing_store_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = StoreReader::open(&db_path(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("events.db") && err.contains("--data-dir"),
        "{err}"
    );
}

/// The alerts list finds the rare alerts among many other events (through
/// `type` postings: the events around them are not decoded).
#[test]
fn alert_searches_find_every_alert_among_many_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let mut alerts = Vec::new();
    for batch in 0..20u64 {
        let mut events: Vec<_> = (0..1000)
            .map(|i| common::http(batch * 1000 + i, 1_000_000 + (batch * 1000 + i) as i64))
            .collect();
        if batch % 7 == 3 {
            let mut alert = common::alert(batch, 1_000_000 + (batch * 1000 + 500) as i64);
            alert.time = events[500].time;
            alerts.push(alert.id());
            events.push(alert);
        }
        w.insert(&events).unwrap();
    }
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    let found: Vec<_> = search(&r, "type = alert").iter().map(|e| e.id()).collect();
    alerts.reverse();
    assert_eq!(found, alerts, "every alert, newest first");
    assert_eq!(search(&r, "type = alert and user = nobody").len(), 0);
}

#[test]
fn hourly_summaries_equal_what_searches_count_per_hour() {
    use rampart_events::store::hourly::{Metric, HOUR_MS};
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    // Three hours of flows and alerts in several batches, one replayed.
    let base = 100 * HOUR_MS;
    let mut all = Vec::new();
    for i in 0..900u64 {
        let t = base + (i as i64 * 3 * HOUR_MS) / 900;
        all.push(if i % 7 == 0 {
            common::alert(i, t)
        } else {
            common::http(i, t)
        });
    }
    for batch in all.chunks(128) {
        w.insert(batch).unwrap();
    }
    w.insert(&all[..100]).unwrap();
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    let hourly = r.hourly(base).unwrap();
    assert_eq!(hourly.since_ms, 0, "a new store counts every event");
    let summed = |m: Metric, hour: i64, key: &str| -> i64 {
        hourly
            .rows
            .iter()
            .filter(|row| row.1 == m && row.0 == hour && row.2 == key)
            .map(|row| row.3)
            .sum()
    };
    let count = |q: &str, hour: i64| -> i64 {
        let req = SearchRequest {
            query: parse(q).unwrap(),
            from_ms: Some(hour),
            to_ms: Some(hour + HOUR_MS),
            limit: 10_000,
            ..Default::default()
        };
        r.search(&req).unwrap().events.len() as i64
    };
    for h in 0..3 {
        let hour = base + h * HOUR_MS;
        assert_eq!(
            summed(Metric::Requests, hour, ""),
            count("type in (http, network)", hour)
        );
        assert_eq!(
            summed(Metric::Blocks, hour, ""),
            count("type in (http, network) and action = block", hour)
        );
        assert_eq!(
            summed(Metric::Alerts, hour, ""),
            count("type = alert", hour)
        );
    }
    let total: i64 = hourly
        .rows
        .iter()
        .filter(|row| matches!(row.1, Metric::Requests | Metric::Alerts))
        .map(|row| row.3)
        .sum();
    assert_eq!(total, 900, "the replayed batch was counted again");
}
