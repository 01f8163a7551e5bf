//! Measurements of the PostgreSQL fleet store (ignored by default):
//!
//! ```text
//! cargo test --release -p rampart-fleet --test pg_bench -- --ignored --nocapture
//! RAMPART_PG_BENCH_EVENTS=2000000 cargo test --release ...   # more events
//! ```
//!
//! A PostgreSQL 15 with its default durability (fsync on, synchronous commit)
//! is started in a temporary directory (`TMPDIR` to move it). It prints:
//! both insert methods on the same 200,000 events (batches of 2,000), then a
//! load of `RAMPART_PG_BENCH_EVENTS` (default 1,000,000) events over ten days
//! with the default method and the CPU it took in this process and in
//! PostgreSQL, then the p50/p95/p99 latency of a user + one-day search and of a
//! device's one-hour timeline.

use std::time::{Duration, Instant};

use rampart_events::event::{TlsDecision, Verdict};
use rampart_events::{parse_query, Event, FlowEvent, FlowKind, FlowSummary, SearchRequest};
use rampart_fleet::pg::{FleetStore, FleetStoreConfig, InsertMethod, TimelineSubject, DAY_MS};
use rampart_testkit::postgres::{Mode, Postgres};

/// 2026-11-20T00:00:00Z: ten days of events from here.
const START_MS: i64 = 1_795_132_800_000;
const DAYS: i64 = 10;
const USERS: u64 = 2_000;
const DEVICES: u64 = 3_000;
const BATCH: usize = 2_000;

/// A small deterministic generator (no dependency, same events every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Event `i` of `total`, spread evenly over the ten days; a realistic HTTP
/// event as the gateway makes it (user, groups, device, URL, category, rule).
fn event(rng: &mut Rng, i: u64, total: u64) -> Event {
    let time = START_MS + (i as i64) * (DAYS * DAY_MS) / total as i64;
    let user = rng.below(USERS);
    let mut s = FlowSummary::new(rampart_events::new_flow_id(), time - 120);
    s.end_ms = time;
    s.user = Some(format!("user{user}@corp.example"));
    s.groups = vec![format!("team{}", user % 40), "staff".into()];
    s.device_uid = Some(format!("device-{:05}", rng.below(DEVICES)));
    s.process_name = Some(["chrome", "firefox", "curl", "python3"][rng.below(4) as usize].into());
    let host = format!("www.site{}.example", rng.below(20_000));
    s.url = Some(format!(
        "https://{host}/path/{}?q={}",
        rng.below(1000),
        rng.below(1_000_000)
    ));
    s.host = Some(host);
    s.method = Some("GET".into());
    s.status = Some([200, 200, 200, 304, 403, 404][rng.below(6) as usize]);
    s.categories = vec![["news", "social", "business", "gambling", "technology"]
        [rng.below(5) as usize]
        .into()];
    s.verdict = if rng.below(20) == 0 {
        Verdict::Block
    } else {
        Verdict::Allow
    };
    s.rule_name = Some(format!("rule-{}", rng.below(50)));
    s.rule_id = Some(format!("r{}", rng.below(50)));
    s.policy_revision = Some("42".into());
    s.tls_decision = Some(TlsDecision::Decrypt);
    s.src = "10.1.2.3:50000".parse().ok();
    s.dst = "192.0.2.10:443".parse().ok();
    s.bytes_in = rng.below(2_000_000);
    s.bytes_out = rng.below(20_000);
    s.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64)".into());
    s.content_type = Some("text/html".into());
    FlowEvent::new(FlowKind::Http, s).event()
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of the postmaster and every backend it runs.
fn postgres_cpu(postmaster: u32) -> f64 {
    let mut total = cpu_seconds(postmaster);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            if rest.split_whitespace().nth(1) == Some(&postmaster.to_string()) {
                total += cpu_seconds(pid);
            }
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{name}: {} runs, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        times.len(),
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
    );
}

async fn connect(pg: &Postgres, method: InsertMethod) -> FleetStore {
    let mut config = FleetStoreConfig::new(pg.url());
    config.insert_method = method;
    FleetStore::connect_with(config).await.expect("connect")
}

/// Insert `total` events in batches, generating each chunk before timing it.
/// Returns (seconds spent in `insert_batch`, client CPU s, PostgreSQL CPU s).
async fn load(store: &FleetStore, pg: &Postgres, total: u64, seed: u64) -> (f64, f64, f64) {
    let mut rng = Rng(seed);
    let mut insert_time = 0.0;
    let (mut client_cpu, mut server_cpu) = (0.0, 0.0);
    let chunk = 100_000u64;
    let mut i = 0;
    while i < total {
        let n = chunk.min(total - i);
        let events: Vec<Event> = (i..i + n).map(|k| event(&mut rng, k, total)).collect();
        let (c0, s0) = (cpu_seconds(std::process::id()), postgres_cpu(pg.pid()));
        let t = Instant::now();
        for batch in events.chunks(BATCH) {
            let new = store.insert_batch(batch).await.expect("insert");
            assert_eq!(new, batch.len() as u64);
        }
        insert_time += t.elapsed().as_secs_f64();
        client_cpu += cpu_seconds(std::process::id()) - c0;
        server_cpu += postgres_cpu(pg.pid()) - s0;
        i += n;
    }
    (insert_time, client_cpu, server_cpu)
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture (a few minutes)"]
fn fleet_store_ingest_and_search_figures() {
    let total: u64 = std::env::var("RAMPART_PG_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = Postgres::start(Mode::Durable);
    rt.block_on(async {
        // 1. The two insert methods on the same events, each into an empty table.
        for method in [InsertMethod::Copy, InsertMethod::Arrays] {
            let store = connect(&pg, method).await;
            let (secs, client, server) = load(&store, &pg, 200_000, 7).await;
            println!(
                "insert {method:?}: 200000 events in batches of {BATCH}: {:.0} events/s; CPU per event: client {:.1} µs, PostgreSQL {:.1} µs",
                200_000.0 / secs,
                client / 200_000.0 * 1e6,
                server / 200_000.0 * 1e6
            );
            let client = pg_client(&pg).await;
            client.batch_execute("TRUNCATE rampart_events").await.expect("truncate");
        }

        // 2. The full load with the default method.
        let store = connect(&pg, InsertMethod::default()).await;
        let (secs, client_cpu, server_cpu) = load(&store, &pg, total, 11).await;
        let pg_client = pg_client(&pg).await;
        let size: i64 = pg_client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .expect("size")
            .get(0);
        println!(
            "load {:?}: {total} events over {DAYS} days: {:.0} events/s; CPU per event: client {:.1} µs, PostgreSQL {:.1} µs; database {:.0} MB ({:.0} bytes/event)",
            InsertMethod::default(),
            total as f64 / secs,
            client_cpu / total as f64 * 1e6,
            server_cpu / total as f64 * 1e6,
            size as f64 / 1e6,
            size as f64 / total as f64,
        );
        pg_client.batch_execute("VACUUM ANALYZE rampart_events").await.expect("analyze");

        // 3. Searches: a user over one day, newest 100 first.
        let mut rng = Rng(99);
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..300 {
            let user = rng.below(USERS);
            let day = rng.below(DAYS as u64) as i64;
            let query = parse_query(&format!("user = \"user{user}@corp.example\"")).expect("query");
            let req = SearchRequest {
                query,
                from_ms: Some(START_MS + day * DAY_MS),
                to_ms: Some(START_MS + (day + 1) * DAY_MS),
                limit: 100,
                cursor: None,
            };
            let t = Instant::now();
            let page = store.search(&req).await.expect("search");
            times.push(t.elapsed());
            found += page.events.len();
        }
        report(
            &format!("search user + one day, limit 100 ({} events/search on average)", found / 300),
            times,
        );
        // A user and an action over the whole range.
        let mut times = Vec::new();
        for _ in 0..300 {
            let user = rng.below(USERS);
            let query = parse_query(&format!("user = \"user{user}@corp.example\" and action = block")).expect("query");
            let req = SearchRequest {
                query,
                from_ms: Some(START_MS),
                to_ms: Some(START_MS + DAYS * DAY_MS),
                limit: 100,
                cursor: None,
            };
            let t = Instant::now();
            store.search(&req).await.expect("search");
            times.push(t.elapsed());
        }
        report("search user + action = block over ten days, limit 100", times);

        // 4. Device timelines: one hour either side of a random moment.
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..300 {
            let device = format!("device-{:05}", rng.below(DEVICES));
            let around = START_MS + rng.below((DAYS * DAY_MS) as u64) as i64;
            let t = Instant::now();
            let events = store
                .timeline(TimelineSubject::Device(&device), around - 3_600_000, around + 3_600_000, 100_000)
                .await
                .expect("timeline");
            times.push(t.elapsed());
            found += events.len();
        }
        report(
            &format!("device timeline ±1 h ({} events/timeline on average)", found / 300),
            times,
        );
        // And a whole day of one device.
        let mut times = Vec::new();
        for _ in 0..100 {
            let device = format!("device-{:05}", rng.below(DEVICES));
            let day = rng.below(DAYS as u64) as i64;
            let t = Instant::now();
            store
                .timeline(TimelineSubject::Device(&device), START_MS + day * DAY_MS, START_MS + (day + 1) * DAY_MS - 1, 100_000)
                .await
                .expect("timeline");
            times.push(t.elapsed());
        }
        report("device timeline, one whole day", times);
    });
}

async fn pg_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}
