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
//!
//! `index_insert_cost` (also ignored) measures what each secondary index
//! costs an insert:
//!
//! ```text
//! cargo test --release -p rampart-fleet --test pg_bench index_insert_cost -- --ignored --nocapture
//! RAMPART_PG_INDEX_COST_EVENTS=100000 RAMPART_PG_INDEX_COST_ROUNDS=3 cargo test ...   # per run, rounds
//! ```

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
    event_at(rng, START_MS + (i as i64) * (DAYS * DAY_MS) / total as i64)
}

/// A realistic HTTP event ending at `time`, one in twenty blocked.
fn event_at(rng: &mut Rng, time: i64) -> Event {
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

/// The index sets compared by `index_insert_cost`: a name and the indexes
/// beyond schema 2's (which every set has).
const INDEX_SETS: [(&str, &[&str]); 4] = [
    ("schema 2 (no gateway index)", &[]),
    ("schema 3 (+ gateway)", &[GATEWAY_INDEX]),
    (
        "schema 4 (+ gateway, + user/action of events not allowed)",
        &[GATEWAY_INDEX, USER_NOT_ALLOWED_INDEX],
    ),
    (
        "schema 3 + user/action of every event (the alternative)",
        &[GATEWAY_INDEX, USER_ACTION_ALL_INDEX],
    ),
];
const GATEWAY_INDEX: &str = "rampart_events_gateway";
const USER_NOT_ALLOWED_INDEX: &str = "rampart_events_user_not_allowed";
const USER_ACTION_ALL_INDEX: &str = "rampart_events_user_action_all";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Insert cost of the secondary indexes, the sets of [`INDEX_SETS`] taking
/// turns in one run (the order reversed every other round, so a drift of the
/// host's load or of the partition's size favours none). Every run appends
/// its events, a day's traffic from 2,000 users as the gateways send it, to
/// the same daily partition, as a day of ingest does: it grows to
/// rounds × sets × events rows. Between runs the indexes of the next set are
/// created or dropped (not timed). Per run: events/s inside `insert_batch`,
/// and CPU per event of this process (the store's insert path, which is
/// what the server's consumer runs per event after decoding) and of
/// PostgreSQL (postmaster and backends, WAL writer and checkpointer
/// included).
#[test]
#[ignore = "measurement: run with --ignored --nocapture (a few minutes)"]
fn index_insert_cost() {
    let per_run = env_u64("RAMPART_PG_INDEX_COST_EVENTS", 100_000);
    let rounds = env_u64("RAMPART_PG_INDEX_COST_ROUNDS", 3);
    let runs = rounds * INDEX_SETS.len() as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = Postgres::start(Mode::Durable);
    rt.block_on(async {
        let store = connect(&pg, InsertMethod::default()).await;
        let client = pg_client(&pg).await;
        // The definitions of the indexes compared, from the schema itself.
        let mut defs: Vec<(String, String)> = client
            .query(
                "SELECT c.relname::text, replace(pg_get_indexdef(i.indexrelid), ' ON ONLY ', ' ON ') FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE i.indrelid = 'rampart_events'::regclass AND c.relname = ANY($1)",
                &[&vec![GATEWAY_INDEX, USER_NOT_ALLOWED_INDEX]],
            )
            .await
            .expect("index definitions")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(defs.len(), 2, "schema 4 has the gateway and user/action indexes: {defs:?}");
        defs.push((
            USER_ACTION_ALL_INDEX.to_string(),
            format!("CREATE INDEX {USER_ACTION_ALL_INDEX} ON rampart_events (user_name, action, event_time, seq)"),
        ));
        let mut present: Vec<&str> = vec![GATEWAY_INDEX, USER_NOT_ALLOWED_INDEX];
        let mut rng = Rng(23);
        // The runs share one day: run k writes the k-th slice of it, in time order.
        let slice_ms = DAY_MS / runs as i64;
        let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); INDEX_SETS.len()];
        let mut run = 0i64;
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..INDEX_SETS.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for set in order {
                let (set_name, wanted) = INDEX_SETS[set];
                for name in present.clone() {
                    if !wanted.contains(&name) {
                        client.batch_execute(&format!("DROP INDEX {name}")).await.expect("drop index");
                        present.retain(|p| *p != name);
                    }
                }
                for name in wanted {
                    if !present.contains(name) {
                        let (_, def) = defs.iter().find(|(n, _)| n == name).expect("a known index");
                        client.batch_execute(def).await.expect("create index");
                        present.push(name);
                    }
                }
                client.batch_execute("CHECKPOINT").await.expect("checkpoint");
                let from = START_MS + run * slice_ms;
                let events: Vec<Event> = (0..per_run)
                    .map(|k| event_at(&mut rng, from + k as i64 * slice_ms / per_run as i64))
                    .collect();
                let (c0, s0) = (cpu_seconds(std::process::id()), postgres_cpu(pg.pid()));
                let t = Instant::now();
                for batch in events.chunks(BATCH) {
                    let new = store.insert_batch(batch).await.expect("insert");
                    assert_eq!(new, batch.len() as u64);
                }
                let secs = t.elapsed().as_secs_f64();
                let client_us = (cpu_seconds(std::process::id()) - c0) / per_run as f64 * 1e6;
                let server_us = (postgres_cpu(pg.pid()) - s0) / per_run as f64 * 1e6;
                let rate = per_run as f64 / secs;
                println!(
                    "round {round} {set_name}: {per_run} events in {secs:.1} s, {rate:.0} events/s; CPU per event: store client {client_us:.1} µs, PostgreSQL {server_us:.1} µs"
                );
                results[set].push((rate, client_us, server_us));
                run += 1;
            }
        }
        let rows: i64 = client
            .query_one("SELECT count(*) FROM rampart_events", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows as u64, runs * per_run);
        println!("medians over {rounds} rounds of {per_run} events (partition grew to {rows} rows):");
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (set, r) in results.iter().enumerate() {
            println!(
                "  {}: {:.0} events/s; CPU per event: store client {:.1} µs, PostgreSQL {:.1} µs",
                INDEX_SETS[set].0,
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
            );
        }
        // The indexes' sizes at the end (the last set's).
        for name in &present {
            let bytes: i64 = client
                .query_one(
                    "SELECT coalesce(sum(pg_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = $1::text::regclass",
                    &[name],
                )
                .await
                .expect("index size")
                .get(0);
            println!("  index {name}: {:.1} MB for {rows} rows", bytes as f64 / 1e6);
        }
    });
}

async fn pg_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}
