//! Event store performance: ingest throughput (store alone and through the
//! pipeline) and query latency over a large store.
//!
//! `cargo bench -p rampart-events --bench store` (RAMPART_BENCH_EVENTS sets the
//! store size, default 1,000,000). Prints a Markdown table for bench/RESULTS.md.

use std::time::{Duration, Instant};

use rampart_events::query::parse;
use rampart_events::store::SearchRequest;
use rampart_events::{
    db_path, Event, EventsConfig, FlowSummary, Pipeline, StoreReader, StoreWriter, TlsDecision,
    Verdict,
};

const USERS: u64 = 1000;
const DEVICES: u64 = 500;
const CATEGORIES: [&str; 6] = [
    "news",
    "search",
    "social",
    "cloud-storage",
    "finance",
    "gambling",
];
/// Events are spread over one day.
const SPAN_MS: i64 = 86_400_000;

fn event(i: u64, n: u64, base: i64) -> Event {
    let t = base + (i as i64 * SPAN_MS) / n as i64;
    let mut f = FlowSummary::new(rampart_events::new_flow_id(), t - 120);
    f.end_ms = t;
    f.user = Some(format!("user{}", i % USERS));
    f.groups = vec![format!("group{}", i % 20)];
    f.device_uid = Some(format!("device{}", (i * 7) % DEVICES));
    f.process_name = Some("firefox".into());
    let cat = CATEGORIES[(i % CATEGORIES.len() as u64) as usize];
    let host = format!("www{}.{cat}.example", i % 5000);
    f.url = Some(format!("https://{host}/path/{i}?q=1"));
    f.host = Some(host);
    f.method = Some("GET".into());
    f.status = Some(if i.is_multiple_of(20) { 403 } else { 200 });
    f.categories = vec![cat.into()];
    f.verdict = if i.is_multiple_of(20) {
        Verdict::Block
    } else {
        Verdict::Allow
    };
    f.rule_name = Some(
        if i.is_multiple_of(20) {
            "block gambling"
        } else {
            "default allow"
        }
        .into(),
    );
    f.rule_id = Some("r1".into());
    f.policy_revision = Some("42".into());
    f.tls_decision = Some(TlsDecision::Decrypt);
    f.src = Some("10.0.3.4:51234".parse().unwrap());
    f.dst = Some("198.51.100.20:443".parse().unwrap());
    f.bytes_in = 20_000 + i % 1000;
    f.bytes_out = 800;
    f.http_event()
}

/// CPU time used by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: u64 = std::env::var("RAMPART_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let base = rampart_events::now_ms() - SPAN_MS;
    let chunk = 8192u64;

    // 1. The store alone: batched transactions from one writer.
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    // The pipeline's background checkpointer, as in production.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ckpt = {
        let c = rampart_events::store::Checkpointer::open(&db_path(dir.path())).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                c.run();
            }
        })
    };
    let mut insert_time = Duration::ZERO;
    let mut insert_cpu = Duration::ZERO;
    let mut i = 0;
    while i < n {
        let batch: Vec<Event> = (i..(i + chunk).min(n)).map(|k| event(k, n, base)).collect();
        let t = Instant::now();
        let c = thread_cpu();
        w.insert(&batch).unwrap();
        insert_cpu += thread_cpu() - c;
        insert_time += t.elapsed();
        i += chunk;
    }
    let store_rate = n as f64 / insert_time.as_secs_f64();
    let store_cpu_rate = n as f64 / insert_cpu.as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ckpt.join().unwrap();
    drop(w);
    let db = db_path(dir.path());
    let wal = db.with_extension("db-wal");
    let db_bytes = [&db, &wal]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>();

    // 2. Queries over the filled store.
    let r = StoreReader::open(&db_path(dir.path())).unwrap();
    let mut by_user = Vec::new();
    let mut timeline = Vec::new();
    let mut blocked_news = Vec::new();
    for q in 0..300u64 {
        let user = (q * 37) % USERS;
        let from = base + ((q * 7919) % 23) as i64 * 3_600_000;
        let req = SearchRequest {
            query: parse(&format!("user = user{user}")).unwrap(),
            from_ms: Some(from),
            to_ms: Some(from + 3_600_000),
            limit: 100,
            cursor: None,
        };
        let t = Instant::now();
        let page = r.search(&req).unwrap();
        by_user.push(t.elapsed());
        assert!(!page.events.is_empty() || n < 100_000);

        let device = format!("device{}", (q * 13) % DEVICES);
        let around = base + ((q * 104_729) % SPAN_MS as u64) as i64;
        let t = Instant::now();
        let _ = r
            .timeline(&device, around - 300_000, around + 300_000, 100_000)
            .unwrap();
        timeline.push(t.elapsed());

        let req = SearchRequest {
            query: parse("action = block and category in (gambling, news)").unwrap(),
            from_ms: Some(from),
            to_ms: Some(from + 3_600_000),
            limit: 100,
            cursor: None,
        };
        let t = Instant::now();
        let _ = r.search(&req).unwrap();
        blocked_news.push(t.elapsed());
    }
    drop(r);

    // 3. Through the pipeline (what the gateway sees): send, then wait until committed.
    let pdir = tempfile::tempdir().unwrap();
    let pn = n.min(500_000);
    let events: Vec<Event> = (0..pn).map(|k| event(k, pn, base)).collect();
    let (pipeline, sender) = Pipeline::start(
        pdir.path(),
        &EventsConfig {
            max_age: None,
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut sends = Vec::with_capacity(pn as usize);
    for e in events {
        // Pace to the queue like a gateway would never need to: measure send cost, not overflow.
        while sender.stats().queued() > 60_000 {
            std::thread::yield_now();
        }
        let s = Instant::now();
        sender.send(e);
        sends.push(s.elapsed());
    }
    assert!(pipeline.wait_stored(pn, Duration::from_secs(600)));
    let pipe_rate = pn as f64 / t.elapsed().as_secs_f64();
    let snap = pipeline.stats().snapshot();
    pipeline.close();

    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| store insert, batches of {chunk}, {n} events (wall clock) | {:.0} events/s |",
        store_rate
    );
    println!(
        "| store insert, writer thread CPU time only | {:.0} events/s per core |",
        store_cpu_rate
    );
    println!("| pipeline ingest (send → committed), {pn} events | {:.0} events/s (spilled {}, dropped {}) |", pipe_rate, snap.spilled, snap.dropped);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| `EventSender::send` p50 / p99.9 / max | {:.2} / {:.1} / {:.0} µs |",
        us(percentile(sends.clone(), 0.5)),
        us(percentile(sends.clone(), 0.999)),
        us(percentile(sends, 1.0))
    );
    println!(
        "| database size, {n} events | {:.0} MB ({:.0} bytes/event) |",
        db_bytes as f64 / 1e6,
        db_bytes as f64 / n as f64
    );
    println!(
        "| `user = X`, 1 h range, limit 100, p50 / p95 | {} / {} |",
        ms(percentile(by_user.clone(), 0.5)),
        ms(percentile(by_user, 0.95))
    );
    println!(
        "| device timeline ±5 min, p50 / p95 | {} / {} |",
        ms(percentile(timeline.clone(), 0.5)),
        ms(percentile(timeline, 0.95))
    );
    println!("| `action = block and category in (gambling, news)`, 1 h, limit 100, p50 / p95 | {} / {} |", ms(percentile(blocked_news.clone(), 0.5)), ms(percentile(blocked_news, 0.95)));
}
