//! Event store performance: ingest throughput (store alone and through the
//! pipeline) and query latency over a large store.
//!
//! `cargo bench -p rampart-events --bench store` (RAMPART_BENCH_EVENTS sets the
//! store size, default 1,000,000; RAMPART_BENCH_RATE and RAMPART_BENCH_SECS the
//! steady ingest rate and its duration, default 15,000/s for 6 s). Prints a Markdown table for bench/RESULTS.md.

use std::time::{Duration, Instant};

use rampart_events::query::parse;
use rampart_events::store::{PreparedEvent, SearchRequest};
use rampart_events::{
    db_path, EventsConfig, FlowEvent, FlowKind, FlowSummary, Pipeline, Record, StoreReader,
    StoreWriter, TlsDecision, Verdict,
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

/// Event number `i` of `n`, as the gateway hands it over: an HTTP flow event,
/// or (one in 1,000) an alert.
fn event(i: u64, n: u64, base: i64) -> Record {
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
    // One alert per 1,000 events: rare, as they are in practice.
    if i % 1000 == 999 {
        let alert = rampart_events::AlertSpec {
            title: format!("Policy alert: rule {}", i % 7),
            desc: Some("GET matched category gambling".into()),
            severity: rampart_events::Severity::Medium,
            types: vec!["policy".into()],
        };
        return Record::Event(Box::new(f.alert_event(&alert, None)));
    }
    Record::Flow(FlowEvent::new(FlowKind::Http, f))
}

/// The event prepared for the store, as the data path (flows) or the pipeline's drainer does.
fn prepare(r: &Record) -> PreparedEvent {
    match r {
        Record::Flow(f) => PreparedEvent::from_flow(f),
        Record::Event(e) => PreparedEvent::new(
            &**e,
            &rampart_events::store::encode_doc(&serde_json::to_string(e).unwrap()),
        ),
    }
}

fn send(sender: &rampart_events::EventSender, r: Record) {
    match r {
        Record::Flow(f) => sender.send_flow(f),
        Record::Event(e) => sender.send(*e),
    }
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

/// CPU time used by the whole process (every thread: drainer, writer, checkpointer).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU seconds so far of each thread of this process, by thread name.
fn threads_cpu() -> Vec<(String, f64)> {
    let tick = 100.0; // USER_HZ
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd; utime 14th, stime 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        out.push((name.trim().to_string(), cpu / tick));
    }
    out
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
    // The writer's page cache (`[events] page_cache`), to compare sizes.
    let page_cache = std::env::var("RAMPART_BENCH_PAGE_CACHE_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(rampart_events::store::DEFAULT_PAGE_CACHE_BYTES, |m| m << 20);

    // 1. The store alone: batched transactions from one writer.
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    w.set_page_cache(page_cache).unwrap();
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
        let batch: Vec<Record> = (i..(i + chunk).min(n)).map(|k| event(k, n, base)).collect();
        let t = Instant::now();
        let c = thread_cpu();
        let prepared: Vec<PreparedEvent> = batch.iter().map(prepare).collect();
        w.insert_prepared(&prepared).unwrap();
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
    let mut alerts = Vec::new();
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

        // `GET /api/v1/alerts`: the newest alerts, optionally within a range.
        let req = SearchRequest {
            query: parse("type = alert").unwrap(),
            from_ms: (q % 2 == 0).then_some(from),
            to_ms: (q % 2 == 0).then_some(from + 3_600_000),
            limit: 100,
            cursor: None,
        };
        let t = Instant::now();
        let page = r.search(&req).unwrap();
        alerts.push(t.elapsed());
        assert!(!page.events.is_empty() || n < 100_000);
    }
    drop(r);

    // 3. Through the pipeline (what the gateway sees): send, then wait until committed.
    let pdir = tempfile::tempdir().unwrap();
    let pn = n.min(500_000);
    // What the data path pays to build one event (the gateway fills a flow summary).
    let c = thread_cpu();
    let events: Vec<Record> = (0..pn).map(|k| event(k, pn, base)).collect();
    let build_cpu = (thread_cpu() - c).as_secs_f64() * 1e6 / pn as f64;
    // What the data path pays per event to prepare it for the store (stored
    // form and indexed values), and what the OCSF JSON costs where it is
    // still rendered (sinks).
    let sample: Vec<&Record> = events.iter().take(50_000).collect();
    let c = thread_cpu();
    let stored_bytes: usize = sample.iter().map(|r| prepare(r).stored().len()).sum();
    let encode_cpu = (thread_cpu() - c).as_secs_f64() * 1e6 / sample.len() as f64;
    let c = thread_cpu();
    let docs: Vec<String> = sample
        .iter()
        .map(|r| serde_json::to_string(&r.to_event()).unwrap())
        .collect();
    let render_cpu = (thread_cpu() - c).as_secs_f64() * 1e6 / sample.len() as f64;
    let json_bytes: usize = docs.iter().map(|d| d.len()).sum();
    drop(docs);
    let (pipeline, sender) = Pipeline::start(
        pdir.path(),
        &EventsConfig {
            max_age: None,
            page_cache: rampart_events::config::ByteSize(page_cache),
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let cpu_before = process_cpu();
    let main_before = thread_cpu();
    let mut sends = Vec::with_capacity(pn as usize);
    for e in events {
        // Pace to the queue like a gateway would never need to: measure send cost, not overflow.
        while sender.stats().queued() > 60_000 {
            std::thread::yield_now();
        }
        let s = Instant::now();
        send(&sender, e);
        sends.push(s.elapsed());
    }
    assert!(pipeline.wait_stored(pn, Duration::from_secs(600)));
    let pipe_rate = pn as f64 / t.elapsed().as_secs_f64();
    // The pipeline's own threads: the process minus this (sending, pacing) thread.
    let pipe_cpu = ((process_cpu() - cpu_before) - (thread_cpu() - main_before)).as_secs_f64()
        * 1e6
        / pn as f64;
    let snap = pipeline.stats().snapshot();
    pipeline.close();

    // 4. A gateway-like steady rate (not a burst): what logging costs per
    //    request when the writer keeps up, all pipeline threads included.
    let rate: u64 = std::env::var("RAMPART_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15_000);
    let secs: u64 = std::env::var("RAMPART_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let rdir = tempfile::tempdir().unwrap();
    let rn = rate * secs;
    let mut events: Vec<Record> = (0..rn).map(|k| event(k, rn, base)).collect();
    let (pipeline, sender) = Pipeline::start(
        rdir.path(),
        &EventsConfig {
            max_age: None,
            page_cache: rampart_events::config::ByteSize(page_cache),
            ..Default::default()
        },
    )
    .unwrap();
    let cpu_before = process_cpu();
    let main_before = thread_cpu();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < rn {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(rn);
        while sent < due {
            if let Some(e) = events.pop() {
                send(&sender, e);
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent_in = start.elapsed();
    // Sustained means stored as fast as sent: everything is committed
    // within the commit window (plus a drain tick) of the last send.
    let stats = pipeline.stats();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.stored.load(std::sync::atomic::Ordering::Relaxed)
        + stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
        < rn
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let all_stored_in = start.elapsed();
    let steady_cpu = ((process_cpu() - cpu_before) - (thread_cpu() - main_before)).as_secs_f64()
        * 1e6
        / rn as f64;
    let steady = pipeline.stats().snapshot();
    let per_thread: Vec<String> = threads_cpu()
        .into_iter()
        .filter(|(n, _)| n.starts_with("rampart-events"))
        .map(|(n, c)| format!("{n} {:.1} µs", c * 1e6 / rn as f64))
        .collect();
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
    println!("| pipeline threads' CPU per event (drain, insert, checkpoint; flows arrive prepared by `send_flow`) | {pipe_cpu:.1} µs ({:.0} events/s per core) |", 1e6 / pipe_cpu);
    println!("| steady {rate} events/s for {secs} s: pipeline threads' CPU per event | {steady_cpu:.1} µs (spilled {}, dropped {}) |", steady.spilled, steady.dropped);
    println!(
        "| steady {rate} events/s: sent in / all stored after | {:.2} s / {:.2} s ({:.0} events/s stored, {} of {rn}) |",
        sent_in.as_secs_f64(),
        all_stored_in.as_secs_f64(),
        steady.stored as f64 / all_stored_in.as_secs_f64(),
        steady.stored
    );
    println!(
        "| … by thread (whole run of that pipeline) | {} |",
        per_thread.join(", ")
    );
    println!("| building one HTTP flow event (data path) | {build_cpu:.2} µs |");
    println!(
        "| preparing it for the store (data path: stored form + indexed values) / its OCSF JSON, built and rendered (sinks only) | {encode_cpu:.2} µs / {render_cpu:.2} µs ({} / {} bytes) |",
        stored_bytes / 50_000,
        json_bytes / 50_000
    );
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
    println!(
        "| `type = alert` (alerts list), newest 100, all time or 1 h, p50 / p95 | {} / {} |",
        ms(percentile(alerts.clone(), 0.5)),
        ms(percentile(alerts, 0.95))
    );
}
