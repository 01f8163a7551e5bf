//! The pipeline between the data path and the store: non-blocking sends, spill
//! to disk when the store stalls, nothing lost.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rampart_events::{db_path, EventsConfig, FlowEvent, FlowKind, Pipeline, Record, StoreReader};

#[test]
fn send_never_blocks_while_the_store_is_locked_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A queue larger than the burst, so this test is about spilling, not the queue bound.
    let config = EventsConfig {
        queue_size: 200_000,
        ..EventsConfig::default()
    };
    let (pipeline, sender) = Pipeline::start(dir.path(), &config).unwrap();

    // Another connection holds the write lock: the writer stalls as on a slow disk.
    let blocker = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    // More than the writer may hold in flight (65,536 events): some must spill.
    // Half are flow events, half full OCSF events.
    let n = 100_000u64;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let t = rampart_events::now_ms() + i as i64;
            if i % 2 == 0 {
                Record::Flow(common::http_flow(i, t))
            } else {
                Record::Event(Box::new(common::http(i, t)))
            }
        })
        .collect();
    let ids: Vec<String> = records.iter().map(|r| r.id().to_string()).collect();
    let flows: Vec<FlowEvent> = records
        .iter()
        .step_by(1001)
        .filter_map(|r| match r {
            Record::Flow(f) => Some(f.clone()),
            Record::Event(_) => None,
        })
        .collect();
    let mut latencies = Vec::with_capacity(n as usize);
    for (i, r) in records.into_iter().enumerate() {
        let t = Instant::now();
        match r {
            Record::Flow(f) => sender.send_flow(f),
            Record::Event(e) => sender.send(*e),
        }
        latencies.push(t.elapsed());
        if i % 1000 == 999 {
            // Paced like a busy gateway rather than a tight loop.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let stats = pipeline.stats();
    // The store stays locked for seconds: a send that waited on it would show it.
    // (Single outliers are scheduler noise on a shared machine, hence p99 and a loose max.)
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    assert!(p99 < Duration::from_millis(2), "p99 send {p99:?}");
    assert!(max < Duration::from_millis(500), "slowest send {max:?}");
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.drained.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        stats.spilled.load(Ordering::Relaxed) > 0,
        "{:?}",
        stats.snapshot()
    );
    assert!(
        stats.stored.load(Ordering::Relaxed) < n,
        "the store was locked"
    );

    // Events spill in their stored form (flow records, compressed JSON of the
    // others), not as JSON text.
    let spool_dir = dir.path().join("spool").join("store");
    let spooled: Vec<u8> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<&[u8]> = spooled
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "nothing spilled");
    assert!(
        lines.iter().all(|l| l.starts_with(b"F:")),
        "a line not in stored form"
    );

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    assert!(
        pipeline.wait_stored(n, Duration::from_secs(120)),
        "stored {:?}",
        stats.snapshot()
    );
    pipeline.close();
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    assert_eq!(r.count().unwrap(), n);
    for id in ids.iter().step_by(997) {
        assert!(r.get(id).unwrap().is_some(), "{id} missing");
    }
    // Stored or spilled and replayed, a flow event reads back as the same event.
    for f in &flows {
        let got = r.get(&f.id.to_string()).unwrap().expect("stored");
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(f.event()).unwrap()
        );
    }
    assert_eq!(stats.snapshot().dropped, 0);
}

#[test]
fn events_are_queryable_within_a_second_of_send() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    let e = common::http(7, rampart_events::now_ms());
    let id = e.id().to_string();
    let start = Instant::now();
    sender.send(e);
    let r = loop {
        if let Ok(r) = StoreReader::open(&db_path(dir.path())) {
            if r.get(&id).unwrap().is_some() {
                break r;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not stored within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(r.count().unwrap(), 1);
    pipeline.close();
}

#[test]
fn spilled_events_left_by_a_previous_run_are_stored_on_start() {
    let dir = tempfile::tempdir().unwrap();
    // Recent times: the default retention (30 days) would delete 1970.
    let now = rampart_events::now_ms();
    {
        let mut spool =
            rampart_events::spool::Spool::open(&dir.path().join("spool/store"), 1 << 30).unwrap();
        let lines: Vec<Vec<u8>> = (0..500)
            .map(|i| serde_json::to_vec(&common::http(i, now + i as i64)).unwrap())
            .collect();
        spool.append(lines.iter().map(Vec::as_slice)).unwrap();
    }
    let (pipeline, _sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    assert!(pipeline.wait_stored(500, Duration::from_secs(10)));
    pipeline.close();
    assert_eq!(
        StoreReader::open(&db_path(dir.path()))
            .unwrap()
            .count()
            .unwrap(),
        500
    );
}

#[test]
fn disabled_events_build_no_store_and_send_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let config: EventsConfig = toml::from_str("enabled = false").unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &config).unwrap();
    assert!(!sender.enabled());
    sender.send(common::http(1, rampart_events::now_ms()));
    assert_eq!(pipeline.stats().snapshot().accepted, 0);
    assert!(!db_path(dir.path()).exists(), "no events.db when disabled");
    pipeline.close();

    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    assert!(sender.enabled());
    pipeline.close();
}

/// Flow events are stored as flow records (no JSON) and read back as exactly
/// the OCSF event the flow builds, found by every field the query language has.
#[test]
fn flow_events_are_stored_compactly_and_read_back_as_their_ocsf_event() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    let now = rampart_events::now_ms();
    let mut flows: Vec<FlowEvent> = (0..40)
        .map(|i| common::http_flow(i, now + i as i64))
        .collect();
    let mut tunnel = common::summary(99, now + 100);
    tunnel.url = None;
    tunnel.method = Some("CONNECT".into());
    tunnel.sni = Some("Tunnel.Example".into());
    tunnel.reporter = "agent".into();
    flows.push(FlowEvent::new(FlowKind::Network, tunnel));
    for f in &flows {
        sender.send_flow(f.clone());
    }
    assert!(pipeline.wait_stored(flows.len() as u64, Duration::from_secs(20)));
    pipeline.close();

    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    for f in &flows {
        let want = serde_json::to_value(f.event()).unwrap();
        let got = r.get(&f.id.to_string()).unwrap().expect("stored");
        assert_eq!(serde_json::to_value(&got).unwrap(), want);
    }
    // Every field the event has finds it, as a query on the stored columns.
    let last = flows.last().unwrap().event();
    for field in rampart_events::field::Field::ALL {
        let Some(value) = field.text(&last) else {
            continue;
        };
        let value = value.split(',').next().unwrap().replace('"', "");
        let q = rampart_events::parse_query(&format!("{} = \"{value}\"", field.name())).unwrap();
        let page = r
            .search(&rampart_events::SearchRequest {
                query: q,
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(
            page.events.iter().any(|e| e.id() == last.id()),
            "{} = {value} did not find the tunnel event",
            field.name()
        );
    }
    // Stored small: a flow record, not JSON.
    let stored = r.stored_form(&flows[0].id.to_string()).unwrap().unwrap();
    let (format, len) = (stored[0], stored.len());
    let json = serde_json::to_string(&flows[0].event()).unwrap();
    assert_eq!(format, 2, "flow record format byte");
    assert!(
        len * 3 < json.len(),
        "{len} bytes stored for {} of JSON",
        json.len()
    );
}

/// `queue_size` bounds the in-memory queue: a burst beyond it is counted as
/// dropped, never blocks the sender, and every event is either accepted or
/// counted as dropped.
#[test]
fn a_full_queue_drops_and_counts_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let config = EventsConfig {
        queue_size: 10,
        ..EventsConfig::default()
    };
    let (pipeline, sender) = Pipeline::start(dir.path(), &config).unwrap();
    let n = 5_000u64;
    let start = Instant::now();
    for i in 0..n {
        sender.send_flow(common::http_flow(i, rampart_events::now_ms()));
    }
    let elapsed = start.elapsed();
    let stats = pipeline.stats().snapshot();
    assert_eq!(stats.accepted + stats.dropped, n, "{stats:?}");
    assert!(stats.dropped > 0, "{stats:?} in {elapsed:?}");
    // The drainer empties the queue (into the journal) every millisecond: at
    // most one queue's worth per tick.
    let ticks = elapsed.as_millis() as u64 + 2;
    assert!(stats.accepted <= 10 * ticks + 1, "{stats:?} in {elapsed:?}");
    assert!(pipeline.wait_stored(stats.accepted, Duration::from_secs(30)));
    pipeline.close();
}
