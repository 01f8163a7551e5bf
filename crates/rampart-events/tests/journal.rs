//! The write-ahead journal between the data path and the store: events are
//! in it within milliseconds of `send`, before any commit, and whatever the
//! store had not committed when the process died is stored at the next start,
//! exactly once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use rampart_events::journal::{self, read_records, Journal};
use rampart_events::store::decode_stored;
use rampart_events::store::PreparedEvent;
use rampart_events::{db_path, EventsConfig, FlowEvent, Pipeline, StoreReader, StoreWriter};

fn flows(n: u64) -> Vec<FlowEvent> {
    let t = rampart_events::now_ms();
    (0..n).map(|i| common::http_flow(i, t + i as i64)).collect()
}

/// The ids of every intact record in the journal's segments, oldest first.
fn journaled_ids(data_dir: &Path) -> Vec<uuid::Uuid> {
    let dir = journal::journal_dir(data_dir);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    let mut ids = Vec::new();
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        for p in read_records(&bytes, 0).payloads {
            ids.push(decode_stored(p).unwrap().id());
        }
    }
    ids
}

fn stored_count(data_dir: &Path) -> u64 {
    StoreReader::open(&db_path(data_dir))
        .and_then(|r| r.count())
        .unwrap_or(0)
}

fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn sent_events_are_in_the_journal_within_milliseconds_while_the_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    // The writer cannot commit: only the journal can hold the events.
    let blocker = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sent = flows(500);
    let t = Instant::now();
    for f in &sent {
        sender.send_flow_ref(f);
    }
    assert!(
        wait(Duration::from_secs(5), || journaled_ids(dir.path()).len()
            == sent.len()),
        "journaled {} of {}",
        journaled_ids(dir.path()).len(),
        sent.len()
    );
    // Loose bound for a shared, loaded test machine; the drainer's period is 1 ms.
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let ids: Vec<_> = sent.iter().map(|f| f.id).collect();
    assert_eq!(journaled_ids(dir.path()), ids, "in the order sent");
    assert_eq!(stored_count(dir.path()), 0);
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(pipeline.wait_stored(500, Duration::from_secs(10)));
    pipeline.close();
}

/// The state a `kill -9` leaves: some events committed, the journal holding
/// those and more, its last record torn. The next start stores the rest once.
#[test]
fn journaled_events_the_store_lacks_are_stored_exactly_once_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let sent = flows(300);
    {
        let mut store = StoreWriter::open(&db_path(dir.path()), false).unwrap();
        let committed: Vec<PreparedEvent> =
            sent[..120].iter().map(PreparedEvent::from_flow).collect();
        store.insert_prepared(&committed).unwrap();
        let (mut j, _) = Journal::open(&journal::journal_dir(dir.path())).unwrap();
        let prepared: Vec<PreparedEvent> = sent.iter().map(PreparedEvent::from_flow).collect();
        j.append(prepared.iter().map(PreparedEvent::stored))
            .unwrap();
        drop(j);
        // The crash tore the record being written.
        let seg = journal::journal_dir(dir.path()).join(format!("{:016}.wal", 1));
        let mut f = std::fs::OpenOptions::new().append(true).open(seg).unwrap();
        std::io::Write::write_all(&mut f, &[200, 1, 0, 0, 9, 9]).unwrap();
    }
    assert_eq!(stored_count(dir.path()), 120);

    let (pipeline, _sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    assert!(wait(Duration::from_secs(10), || stored_count(dir.path()) == 300));
    pipeline.close();
    let reader = StoreReader::open(&db_path(dir.path())).unwrap();
    for f in &sent {
        assert!(reader.get(&f.id.to_string()).unwrap().is_some(), "{}", f.id);
    }
    assert_eq!(reader.count().unwrap(), 300, "no duplicates");

    // An orderly close marked all of it committed: the next start replays
    // nothing, and the previous runs' segments are gone.
    let (pipeline, _sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pipeline.close();
    assert_eq!(stored_count(dir.path()), 300);
    assert!(
        !journal::journal_dir(dir.path())
            .join(format!("{:016}.wal", 1))
            .exists(),
        "the replayed segment is deleted once marked committed"
    );
}

#[test]
fn a_journal_of_garbage_is_logged_and_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = journal::journal_dir(dir.path());
    std::fs::create_dir_all(&jdir).unwrap();
    std::fs::write(
        jdir.join(format!("{:016}.wal", 1)),
        b"\x00\xffnot a journal",
    )
    .unwrap();
    let mut bytes = journal::MAGIC.to_vec();
    journal::encode_record(&mut bytes, b"intact, but not an event");
    std::fs::write(jdir.join(format!("{:016}.wal", 2)), bytes).unwrap();
    std::fs::write(jdir.join("committed"), "7 bananas").unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    let f = flows(1);
    sender.send_flow_ref(&f[0]);
    assert!(pipeline.wait_stored(1, Duration::from_secs(10)));
    pipeline.close();
    assert_eq!(stored_count(dir.path()), 1);
}

#[test]
fn without_the_journal_nothing_is_written_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = EventsConfig {
        journal: false,
        ..EventsConfig::default()
    };
    let (pipeline, sender) = Pipeline::start(dir.path(), &config).unwrap();
    for f in &flows(10) {
        sender.send_flow_ref(f);
    }
    assert!(pipeline.wait_stored(10, Duration::from_secs(10)));
    pipeline.close();
    assert!(!journal::journal_dir(dir.path()).exists());
}

/// How long after `send` an event is in the kernel (the journal file has
/// grown): the window a `kill -9` can hit. A measurement, not a check (a loaded
/// machine stretches it): `cargo test --release -p rampart-events --test journal
/// -- --ignored --nocapture journal_window`.
#[test]
#[ignore]
fn journal_window_from_send_to_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    let seg = journal::journal_dir(dir.path()).join(format!("{:016}.wal", 1));
    let len = || std::fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    let all = flows(3000);
    let mut lags = Vec::with_capacity(all.len());
    for (i, f) in all.iter().enumerate() {
        let before = len();
        let t = Instant::now();
        sender.send_flow_ref(f);
        while len() == before && t.elapsed() < Duration::from_secs(1) {
            std::hint::spin_loop();
        }
        lags.push(t.elapsed());
        // Irregular gaps of 0–3 ms, like requests ending at ~1,000/s.
        std::thread::sleep(Duration::from_micros((i as u64 * 7919) % 3000));
    }
    lags.sort();
    let at = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize];
    eprintln!(
        "send → journal: p50 {:?}, p90 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    pipeline.close();
}
