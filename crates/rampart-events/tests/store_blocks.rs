//! Block postings: queries on indexed fields answer exactly as the in-memory
//! matcher over several closed blocks plus the unindexed tail, in order,
//! across pages; retention and upgrades (older schemas move into segments)
//! keep them right.

mod common;

use std::collections::HashSet;

use rampart_events::query::parse;
use rampart_events::store::{Cursor, SearchRequest};
use rampart_events::{db_path, Event, StoreReader, StoreWriter};

/// Events per index block (the store's constant).
const BLOCK: u64 = 8192;

/// `n` events whose times are a permutation of `n` distinct instants, so a
/// block's events are scattered over the whole range and blocks overlap in time.
fn scattered(n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| common::http(i, 1_000_000 + ((i * 7919) % n) as i64 * 10))
        .collect()
}

fn fill(events: &[Event]) -> (tempfile::TempDir, StoreReader) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    // Uneven batches, as group commits are: blocks close mid-batch.
    for chunk in events.chunks(3001) {
        w.insert(chunk).unwrap();
    }
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    (dir, r)
}

/// Every page of `q` within `[from, to)`, `limit` per page, newest first.
fn all_pages(
    r: &StoreReader,
    q: &str,
    range: (Option<i64>, Option<i64>),
    limit: usize,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = r
            .search(&SearchRequest {
                query: parse(q).unwrap(),
                from_ms: range.0,
                to_ms: range.1,
                limit,
                cursor: cursor.as_deref().map(|c| Cursor::parse(c).unwrap()),
            })
            .unwrap();
        out.extend(page.events);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn expected(all: &[Event], q: &str, range: (Option<i64>, Option<i64>)) -> Vec<uuid::Uuid> {
    let parsed = parse(q).unwrap();
    let mut want: Vec<&Event> = all
        .iter()
        .filter(|e| parsed.matches(e))
        .filter(|e| range.0.is_none_or(|f| e.time >= f) && range.1.is_none_or(|t| e.time < t))
        .collect();
    want.sort_by_key(|e| std::cmp::Reverse(e.time));
    want.iter().map(|e| e.id()).collect()
}

#[test]
fn planned_queries_match_the_matcher_across_blocks_and_tail_in_order() {
    let n = 2 * BLOCK + 1500;
    let all = scattered(n);
    let (_d, r) = fill(&all);
    let ranges = [
        (None, None),
        (Some(1_000_000 + 20_000), Some(1_000_000 + 90_000)),
        (Some(1_000_000 + (n as i64 - 300) * 10), None),
    ];
    for q in [
        "user = alice",
        "user = ALICE and action = block",
        "category in (news, gambling) and status >= 400",
        "(user = bob or device = dev-3) and not category = search",
        "rule = 'block gambling' and host like 'h1*'",
        "host = h5.gambling.example",
        "user = nobody",
    ] {
        for range in ranges {
            let want = expected(&all, q, range);
            for limit in [10_000, 997, 7] {
                if limit == 7 && want.len() > 700 {
                    continue;
                }
                let got: Vec<_> = all_pages(&r, q, range, limit)
                    .iter()
                    .map(|e| e.id())
                    .collect();
                assert_eq!(got.len(), want.len(), "`{q}` {range:?} limit {limit}");
                assert_eq!(
                    got, want,
                    "`{q}` {range:?} limit {limit}: same events, newest first"
                );
            }
        }
    }
}

#[test]
fn device_timeline_spans_blocks_in_time_order() {
    let n = BLOCK + 2000;
    let all = scattered(n);
    let (_d, r) = fill(&all);
    let (from, to) = (1_000_000 + 5_000, 1_000_000 + 60_000);
    let got = r.timeline("dev-3", from, to, 100_000).unwrap();
    let mut want: Vec<&Event> = all
        .iter()
        .filter(|e| e.device_name() == Some("dev-3") && (from..=to).contains(&e.time))
        .collect();
    want.sort_by_key(|e| e.time);
    assert!(want.len() > 100);
    assert_eq!(
        got.iter().map(|e| e.id()).collect::<Vec<_>>(),
        want.iter().map(|e| e.id()).collect::<Vec<_>>()
    );
    let limited = r.timeline("dev-3", from, to, 10).unwrap();
    assert_eq!(limited.len(), 10);
    assert_eq!(limited[..], got[..10], "a limit keeps the oldest");
}

#[test]
fn events_after_retention_emptied_the_store_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let old: Vec<_> = (0..BLOCK + 10)
        .map(|i| common::http(i, 1_000 + i as i64))
        .collect();
    w.insert(&old).unwrap();
    let report = w.enforce_retention(10_000_000, Some(1_000), None).unwrap();
    assert_eq!(report.expired, BLOCK + 10);
    assert_eq!(w.count().unwrap(), 0);
    // New events must not reuse seqs of the block already indexed.
    let new: Vec<_> = (0..BLOCK + 10)
        .map(|i| common::http(i, 20_000_000 + i as i64))
        .collect();
    w.insert(&new).unwrap();
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    let want: HashSet<_> = new
        .iter()
        .filter(|e| e.user_name() == Some("carol"))
        .map(|e| e.id())
        .collect();
    let got: HashSet<_> = all_pages(&r, "user = carol", (None, None), 10_000)
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(got, want);
}

/// Turn a store into what schema 2 or 3 wrote: one row per event in an
/// `events` table (same seqs; every third document as JSON text, the oldest
/// form, the others compressed), without segments; `postings` keeps the
/// block postings (schema 3) or drops them (schema 2). Seq `gap` is left out.
fn make_legacy(path: &std::path::Path, postings: bool, gap: i64) {
    let rows = StoreReader::open(path)
        .unwrap()
        .after(0, &parse("").unwrap(), 1_000_000)
        .unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "DROP TABLE segments; DROP TABLE segment_data;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time INTEGER NOT NULL,
           type TEXT COLLATE NOCASE, user_name TEXT COLLATE NOCASE, doc TEXT NOT NULL);
         CREATE INDEX events_time ON events(time);
         UPDATE meta SET value = '3' WHERE key = 'schema_version';",
    )
    .unwrap();
    // Schema 3 had no `type` postings.
    c.execute_batch(
        "DELETE FROM postings WHERE field = 'type'; DELETE FROM meta WHERE key = 'indexed_fields';",
    )
    .unwrap();
    if !postings {
        c.execute_batch(
            "DROP TABLE blocks; DROP TABLE postings; DELETE FROM meta WHERE key = 'next_block';",
        )
        .unwrap();
    }
    let mut insert = c
        .prepare("INSERT INTO events (seq, id, time, type, user_name, doc) VALUES (?1, ?2, ?3, 'http', ?4, ?5)")
        .unwrap();
    for (seq, e) in rows {
        if seq == gap {
            continue;
        }
        let json = serde_json::to_string(&e).unwrap();
        let doc = if seq % 3 == 0 {
            rusqlite::types::Value::Text(json)
        } else {
            rusqlite::types::Value::Blob(rampart_events::store::encode_doc(&json))
        };
        insert
            .execute((seq, e.id().to_string(), e.time, e.user_name(), doc))
            .unwrap();
    }
}

/// Stores written before segments (with or without block postings) move
/// into segments when the writer opens them: every event keeps its seq,
/// reads back exactly and is found through postings, and new events follow.
#[test]
fn stores_of_older_schemas_move_into_segments_when_the_writer_opens_them() {
    for postings in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(dir.path());
        let all = scattered(BLOCK + 500);
        {
            let mut w = StoreWriter::open(&path, false).unwrap();
            w.insert(&all).unwrap();
        }
        let gap = 100;
        let gone = StoreReader::open(&path)
            .unwrap()
            .after(gap - 1, &parse("").unwrap(), 1)
            .unwrap()[0]
            .1
            .id();
        make_legacy(&path, postings, gap);
        let all: Vec<Event> = all.into_iter().filter(|e| e.id() != gone).collect();
        // Until a writer has moved them, readers say what to do.
        let err = StoreReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("older Rampart"), "{err}");

        let mut w = StoreWriter::open(&path, false).unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        let legacy: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(legacy, 0, "the old table is gone");
        assert_eq!(w.count().unwrap(), all.len() as u64);
        let r = StoreReader::open(&path).unwrap();
        for q in [
            "user = dave",
            "device = dev-2 and action = block",
            "type = http and user = bob",
            "",
        ] {
            let got: Vec<_> = all_pages(&r, q, (None, None), 700)
                .iter()
                .map(|e| e.id())
                .collect();
            assert_eq!(
                got,
                expected(&all, q, (None, None)),
                "`{q}`, postings {postings}"
            );
        }
        for e in all.iter().step_by(97) {
            assert_eq!(r.get(&e.id().to_string()).unwrap().as_ref(), Some(e));
        }
        // New events continue after the old seqs and are found with them.
        let more: Vec<Event> = (0..50)
            .map(|i| common::http(i, 5_000_000 + i as i64))
            .collect();
        assert_eq!(w.insert(&more).unwrap(), 50);
        let mut both = all.clone();
        both.extend(more);
        let got: Vec<_> = all_pages(&r, "user = erin", (None, None), 1000)
            .iter()
            .map(|e| e.id())
            .collect();
        assert_eq!(got, expected(&both, "user = erin", (None, None)));
    }
}

#[test]
fn a_block_filled_across_writer_restarts_indexes_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let all = scattered(BLOCK + 3000);
    // Three writers in turn, each stopping mid-block: the postings of the
    // block being filled are rebuilt from its stored rows on the next insert.
    for part in all.chunks(4000) {
        let mut w = StoreWriter::open(&path, false).unwrap();
        w.insert(part).unwrap();
        // The same events again are ignored and take no seq.
        assert_eq!(w.insert(&part[..10]).unwrap(), 0);
    }
    let r = StoreReader::open(&path).unwrap();
    for q in ["user = erin", "device = dev-6 and action = block"] {
        let got: Vec<_> = all_pages(&r, q, (None, None), 1000)
            .iter()
            .map(|e| e.id())
            .collect();
        assert_eq!(got, expected(&all, q, (None, None)), "`{q}`");
    }
}

/// The pipeline starts at once on a store an older version wrote: its writer
/// thread moves the old rows while events sent meanwhile wait (queued or
/// spilled), and then every event, old and new, is there.
#[test]
fn the_pipeline_upgrades_an_older_store_while_events_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let old = scattered(BLOCK + 700);
    {
        let mut w = StoreWriter::open(&path, false).unwrap();
        w.insert(&old).unwrap();
    }
    make_legacy(&path, true, -1);
    // These events are from 1970: no age retention here.
    let config = rampart_events::EventsConfig {
        max_age: None,
        ..Default::default()
    };
    let (pipeline, sender) = rampart_events::Pipeline::start(dir.path(), &config).unwrap();
    let new: Vec<Event> = (0..300)
        .map(|i| common::http(i, 9_000_000 + i as i64))
        .collect();
    for e in &new {
        sender.send(e.clone());
    }
    let total = (old.len() + new.len()) as u64;
    assert!(
        pipeline.wait_stored(new.len() as u64, std::time::Duration::from_secs(60)),
        "the new events were stored"
    );
    pipeline.close();
    let r = StoreReader::open(&path).unwrap();
    assert_eq!(r.count().unwrap(), total);
    let mut all = old;
    all.extend(new);
    let got: Vec<_> = all_pages(&r, "user = carol", (None, None), 5000)
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(got, expected(&all, "user = carol", (None, None)));
}
