//! The store writer's memory is bounded by `[events] page_cache`: SQLite keeps
//! every page the writer touched until the cache is full, so without a small
//! cap a gateway's resident memory grows with its database (the one-hour soak
//! of issue 16, bench/RESULTS.md). Each test runs in its own process under
//! nextest, so the process's anonymous RSS is the writer's.

mod common;

use rampart_events::store::PreparedEvent;
use rampart_events::{db_path, StoreWriter};

/// The process's anonymous resident memory (`RssAnon` of /proc/self/status), KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status (Linux only)")
}

/// Fill a new store with events until its database holds `db_mib` MiB, the
/// writer's page cache capped at `cache_mib` MiB, in batches checkpointed as
/// the pipeline's checkpointer does; returns (database KiB, anonymous RSS
/// growth KiB).
fn fill(cache_mib: u64, db_mib: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(dir.path());
    let mut w = StoreWriter::open(&db, false).unwrap();
    w.set_page_cache(cache_mib << 20).unwrap();
    let size = || std::fs::metadata(&db).map_or(0, |m| m.len());
    let before = rss_anon_kib();
    let start = rampart_events::now_ms() - 3_600_000;
    let mut i = 0u64;
    while size() < db_mib << 20 {
        let batch: Vec<PreparedEvent> = (i..i + 2000)
            .map(|k| {
                let mut f = common::summary(k, start + k as i64);
                // A unique, barely compressible URL, so the database grows
                // by ~100 bytes per event as on a gateway.
                f.url = Some(format!(
                    "https://h{}.example/p/{}",
                    k % 13,
                    rampart_events::new_event_id(start)
                ));
                PreparedEvent::from_flow(&rampart_events::FlowEvent::new(
                    rampart_events::FlowKind::Http,
                    f,
                ))
            })
            .collect();
        w.insert_prepared(&batch).unwrap();
        w.checkpoint().unwrap();
        i += 2000;
    }
    let grown = rss_anon_kib().saturating_sub(before);
    (size() >> 10, grown)
}

#[test]
fn writer_memory_stops_growing_at_the_page_cache_cap() {
    let (db_kib, grown_kib) = fill(2, 16);
    eprintln!(
        "page_cache 2 MiB: database {} MiB, anonymous RSS +{:.1} MiB",
        db_kib >> 10,
        grown_kib as f64 / 1024.0
    );
    // The cap (2 MiB) plus one batch being built and the allocator's slack.
    assert!(
        grown_kib < 6 << 10,
        "the writer's memory grew {grown_kib} KiB for a {db_kib} KiB database with a 2 MiB page cache"
    );
}

#[test]
fn writer_memory_grows_with_the_database_under_a_large_page_cache() {
    // The counter-proof: with room for every page, the cache (and the
    // process) grows with the database, which is what the soak saw.
    let (db_kib, grown_kib) = fill(256, 16);
    eprintln!(
        "page_cache 256 MiB: database {} MiB, anonymous RSS +{:.1} MiB",
        db_kib >> 10,
        grown_kib as f64 / 1024.0
    );
    assert!(
        grown_kib > db_kib * 3 / 4,
        "with a 256 MiB page cache the writer's memory grew only {grown_kib} KiB for a {db_kib} KiB database"
    );
}
