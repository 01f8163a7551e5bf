//! Fleet search at scale (issue 20: "fleet search over 10M events"), ignored
//! by default:
//!
//! ```text
//! nice cargo test --release -p rampart-fleet --test pg_search_scale -- --ignored --nocapture
//! RAMPART_PG_SCALE_EVENTS=1000000 nice cargo test ...   # another size (a multiple of 10)
//! RAMPART_PG_SCALE_DOC=lean nice cargo test ...            # small documents (see `template`)
//! ```
//!
//! PostgreSQL 15 runs with the bench settings (`Mode::Durable`: fsync on,
//! 2 GB shared buffers) in a temporary directory (`TMPDIR` to move it; the
//! load stops if the disk holding it falls under 15 GiB free).
//!
//! The store's own insert path writes ~8,000 events/s on this host (over 20
//! minutes for 10M), so the rows are generated inside PostgreSQL: two template
//! events (one allowed, one blocked) are written through the store, so every
//! typed column holds exactly what an insert writes, and each day's rows are
//! `INSERT ... SELECT` copies of a template with the user, groups, device,
//! host, URL path, gateway, time and id substituted alike in the columns and
//! in the JSON document. The secondary indexes are dropped before the load
//! and built after it, each timed, but schema 4's. Then one measurement loop
//! (`measure_searches`: every search a few hundred times with random
//! parameters through `FleetStore`, each returned event checked against the
//! query in memory) runs warm and cold (PostgreSQL restarted, its files
//! dropped from the page cache) three times: with schema 3's indexes, with an
//! index of user and action over every event (the alternative, user + action
//! searches only, then dropped), and with schema 4's index of the events not
//! allowed.

use std::time::{Duration, Instant};

use rampart_events::event::{TlsDecision, Verdict};
use rampart_events::{parse_query, Event, FlowEvent, FlowKind, FlowSummary, Query, SearchRequest};
use rampart_fleet::pg::{FleetStore, FleetStoreConfig, InsertMethod, TimelineSubject, DAY_MS};
use rampart_testkit::postgres::{Mode, Postgres};

/// 2026-11-20T00:00:00Z: ten days of events from here (as `pg_bench.rs`).
const START_MS: i64 = 1_795_132_800_000;
/// Days of events: `RAMPART_PG_SCALE_DAYS`, 10 by default. Fewer days with
/// as many events per day keep each day's partition as large as in a
/// ten-day store, for a disk that cannot hold ten.
fn days() -> i64 {
    std::env::var("RAMPART_PG_SCALE_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|d| *d > 0)
        .unwrap_or(10)
}
const USERS: i64 = 2_000;
const DEVICES: i64 = 3_000;
const HOSTS: i64 = 20_000;
/// Three busy gateways share the traffic; this one logged one event in a
/// thousand (a gateway just added, or one mostly drained).
const RARE_GATEWAY: &str = "gw-canary";
/// The load stops before the disk holding the database falls below this
/// (other work shares the disk).
const MIN_FREE_BYTES: u64 = 15 << 30;
/// Schema 4's index, built after the first round of searches.
const USER_ACTION_INDEX: &str = "rampart_events_user_not_allowed";

/// Sentinels in the template events, replaced in every copy: lowercase
/// words that neither the document's fixed text nor a generated value holds.
const S_USER: &str = "zquserzq";
const S_TEAM: &str = "zqteamzq";
const S_DEVICE: &str = "zqdevicezq";
const S_HOST: &str = "zqhostzq";
const S_PATH: &str = "zqpathzq";
const S_GATEWAY: &str = "zqgatewayzq";
/// The template's flow end (its event time) and start: digit strings no
/// other field of the document holds.
const T_END: i64 = 2_000_000_000_123;
const T_START: i64 = T_END - 120;

/// A realistic HTTP event as the gateway makes it (the fields of
/// `pg_bench.rs`, ~1.5 kB of JSON), with sentinels where copies differ; or,
/// `lean`, only what the searches look at (user, groups, device, URL,
/// verdict, gateway, time), for a disk that cannot hold 10M full documents.
fn template(blocked: bool, lean: bool) -> Event {
    let mut s = FlowSummary::new(rampart_events::new_flow_id(), T_START);
    s.end_ms = T_END;
    s.user = Some(S_USER.into());
    s.groups = vec![S_TEAM.into(), "staff".into()];
    s.device_uid = Some(S_DEVICE.into());
    s.url = Some(format!("https://{S_HOST}/path/{S_PATH}"));
    s.host = Some(S_HOST.into());
    s.verdict = if blocked {
        Verdict::Block
    } else {
        Verdict::Allow
    };
    if !lean {
        s.url = Some(format!("https://{S_HOST}/path/{S_PATH}?q=184467"));
        s.process_name = Some("chrome".into());
        s.method = Some("GET".into());
        s.status = Some(if blocked { 403 } else { 200 });
        s.categories = vec!["business".into()];
        s.rule_name = Some("rule-17".into());
        s.rule_id = Some("r17".into());
        s.policy_revision = Some("42".into());
        s.tls_decision = Some(TlsDecision::Decrypt);
        s.src = "10.1.2.3:50000".parse().ok();
        s.dst = "192.0.2.10:443".parse().ok();
        s.bytes_in = 183_402;
        s.bytes_out = 4_211;
        s.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64)".into());
        s.content_type = Some("text/html".into());
    }
    let mut e = FlowEvent::new(FlowKind::Http, s).event();
    e.unmapped.gateway = Some(S_GATEWAY.into());
    e
}

/// The generated values of row `i`, as SQL over `generate_series` (a
/// deterministic hash, so every run builds the same store).
fn values_sql(lo: i64, hi: i64, total: i64) -> String {
    let span = days() * DAY_MS;
    // hashint8 is an int4 that may be negative: mask to 31 bits, then reduce.
    let h = |k: i64, n: i64| format!("((hashint8(i * 8 + {k})::bigint & 2147483647) % {n})");
    format!(
        "SELECT i, {START_MS} + i * {span} / {total} AS t, {} AS u, {} AS d, {} AS h, {} AS p, \
         {} AS g, {} = 0 AS blocked, md5(i::text) AS r FROM generate_series({lo}::bigint, {hi}::bigint) AS i",
        h(1, USERS),
        h(2, DEVICES),
        h(3, HOSTS),
        h(4, 1000),
        h(5, 1000),
        h(6, 20),
    )
}

/// `expr` with every text sentinel replaced by the row's value.
fn substituted(expr: &str) -> String {
    let mut out = expr.to_string();
    for (sentinel, value) in [
        (S_USER, "x.user_v"),
        (S_TEAM, "x.team_v"),
        (S_DEVICE, "x.device_v"),
        (S_HOST, "x.host_v"),
        (S_PATH, "x.path_v"),
        (S_GATEWAY, "x.gateway_v"),
    ] {
        out = format!("replace({out}, '{sentinel}', {value})");
    }
    out
}

/// The `INSERT ... SELECT` of rows `lo..=hi`, in that order (a nested loop
/// over `generate_series` keeps it: no sort of a day's rows): `columns` are the table's
/// (name, type) but `seq`, which its default numbers in insertion order;
/// `templated` the text columns whose template value holds a sentinel.
fn load_sql(
    columns: &[(String, String)],
    templated: &[String],
    lo: i64,
    hi: i64,
    total: i64,
) -> String {
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    for (name, ty) in columns {
        let expr = match (name.as_str(), ty.as_str()) {
            ("id", _) => "x.id_v".to_string(),
            ("event_time", _) => "v.t".to_string(),
            ("group_members", _) => {
                format!("array_replace(tpl.group_members, '{S_TEAM}', x.team_v)")
            }
            ("doc", _) => {
                let text = substituted("tpl.doc::text");
                format!(
                    "replace(replace(replace({text}, '{T_END}', v.t::text), '{T_START}', (v.t - 120)::text), tpl.id::text, x.id_v::text)::json"
                )
            }
            (n, _) if templated.iter().any(|t| t == n) => substituted(&format!("tpl.{n}")),
            (n, _) => format!("tpl.{n}"),
        };
        names.push(name.clone());
        exprs.push(expr);
    }
    format!(
        "INSERT INTO rampart_events ({}) SELECT {} FROM ({}) AS v \
         CROSS JOIN LATERAL (SELECT * FROM bench_template t WHERE t.blocked = v.blocked) AS tpl \
         CROSS JOIN LATERAL (SELECT \
           'user' || v.u || '@corp.example' AS user_v, \
           'team' || (v.u % 40) AS team_v, \
           'device-' || lpad(v.d::text, 5, '0') AS device_v, \
           'www.site' || v.h || '.example' AS host_v, \
           v.p::text AS path_v, \
           CASE WHEN v.g = 0 THEN '{RARE_GATEWAY}' ELSE 'gw' || (1 + v.g % 3) END AS gateway_v, \
           (lpad(to_hex(v.t), 12, '0') || '7' || substr(v.r, 1, 3) || '8' || substr(v.r, 4, 15))::uuid AS id_v \
         ) AS x",
        names.join(", "),
        exprs.join(", "),
        values_sql(lo, hi, total),
    )
}

/// Drop the files under `dir` from the page cache (these files only: the
/// cache of other processes stays), returning their total size.
fn evict_from_page_cache(dir: &std::path::Path) -> u64 {
    use std::os::fd::AsRawFd;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                if let Ok(f) = std::fs::File::open(&path) {
                    // SAFETY: an advisory call on a descriptor we own.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                    total += meta.len();
                }
            }
        }
    }
    total
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    s.f_bavail * s.f_frsize
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>, found: usize) {
    times.sort();
    let runs = times.len();
    println!(
        "{name}: {runs} runs, {:.0} events/run, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        found as f64 / runs as f64,
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[runs - 1].as_secs_f64() * 1e3,
    );
}

/// A small deterministic generator for the query parameters.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as i64
    }
}

/// Run a search `runs` times with `make`'s query and range; check every
/// event against the query and the range, and report the latencies.
async fn measure_search(
    store: &FleetStore,
    name: &str,
    runs: usize,
    mut make: impl FnMut() -> (String, i64, i64),
) {
    let mut times = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let (text, from, to) = make();
        let query: Query = parse_query(&text).expect("query");
        let req = SearchRequest {
            query: query.clone(),
            from_ms: Some(from),
            to_ms: Some(to),
            limit: 100,
            cursor: None,
        };
        let t = Instant::now();
        let page = store.search(&req).await.expect("search");
        times.push(t.elapsed());
        for e in &page.events {
            assert!(query.matches(e), "{text}: {e:?}");
            assert!((from..to).contains(&e.time), "{text}: time {}", e.time);
        }
        found += page.events.len();
    }
    assert!(found > 0, "{name}: no search found anything");
    report(name, times, found);
}

async fn measure_timeline(
    store: &FleetStore,
    name: &str,
    runs: usize,
    mut make: impl FnMut() -> (String, i64, i64),
) {
    let mut times = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let (device, from, to) = make();
        let t = Instant::now();
        let events = store
            .timeline(TimelineSubject::Device(&device), from, to, 100_000)
            .await
            .expect("timeline");
        times.push(t.elapsed());
        for e in &events {
            assert_eq!(e.device_name(), Some(device.as_str()));
            assert!((from..=to).contains(&e.time));
        }
        found += events.len();
    }
    assert!(found > 0, "{name}: no timeline found anything");
    report(name, times, found);
}

/// Whether a measurement finds the store's pages in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cache {
    /// PostgreSQL's buffers and the page cache hold what earlier runs read.
    Warm,
    /// Just after [`go_cold`]: the searches read the disk, as on a store much
    /// larger than memory (repeated runs warm it a little, so few runs).
    Cold,
}

/// A set of measurements: which indexes the store has, warm or cold.
struct Phase<'a> {
    indexes: &'a str,
    cache: Cache,
}

impl Phase<'_> {
    fn name(&self, search: &str) -> String {
        let cache = match self.cache {
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        };
        format!("[{}, {cache}] {search}", self.indexes)
    }

    /// Runs of a search measured `warm_runs` times when warm.
    fn runs(&self, warm_runs: usize) -> usize {
        match self.cache {
            Cache::Warm => warm_runs,
            Cache::Cold => (warm_runs / 3).max(5),
        }
    }
}

/// Which searches a phase measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Searches {
    /// Every search the console and the CLI run (the issue's targets).
    All,
    /// Only those an index of (user, action) changes.
    UserAction,
}

/// The one measurement loop, warm or cold: every search as the console and
/// the CLI run them (newest 100 first), each event checked against its query.
async fn measure_searches(
    store: &FleetStore,
    rng: &mut Rng,
    end: i64,
    phase: &Phase<'_>,
    searches: Searches,
) {
    let user = |rng: &mut Rng| format!("user{}@corp.example", rng.below(USERS));
    if searches == Searches::All {
        measure_search(
            store,
            &phase.name("user + one day, limit 100"),
            phase.runs(300),
            || {
                let day = rng.below(days());
                (
                    format!("user = \"{}\"", user(rng)),
                    START_MS + day * DAY_MS,
                    START_MS + (day + 1) * DAY_MS,
                )
            },
        )
        .await;
    }
    measure_search(
        store,
        &phase.name("user + action = block, whole range, limit 100"),
        phase.runs(150),
        || {
            (
                format!("user = \"{}\" and action = block", user(rng)),
                START_MS,
                end,
            )
        },
    )
    .await;
    measure_search(
        store,
        &phase.name("user + action = block, last 24 h, limit 100"),
        phase.runs(150),
        || {
            (
                format!("user = \"{}\" and action = block", user(rng)),
                end - DAY_MS,
                end,
            )
        },
    )
    .await;
    measure_search(
        store,
        &phase.name("user + action = allow, whole range, limit 100"),
        phase.runs(60),
        || {
            (
                format!("user = \"{}\" and action = allow", user(rng)),
                START_MS,
                end,
            )
        },
    )
    .await;
    if searches == Searches::UserAction {
        return;
    }
    let gateway = |rng: &mut Rng| format!("gateway = gw{}", 1 + rng.below(3));
    measure_search(
        store,
        &phase.name("gateway = gwN (a third of the events) + last 24 h, limit 100"),
        phase.runs(100),
        || (gateway(rng), end - DAY_MS, end),
    )
    .await;
    measure_search(
        store,
        &phase.name("gateway = gwN + last 7 days, limit 100"),
        phase.runs(100),
        || (gateway(rng), end - 7 * DAY_MS, end),
    )
    .await;
    measure_search(
        store,
        &phase.name("gateway = gw-canary (0.1 %) + last 24 h, limit 100"),
        phase.runs(20),
        || (format!("gateway = {RARE_GATEWAY}"), end - DAY_MS, end),
    )
    .await;
    measure_search(
        store,
        &phase.name("gateway = gw-canary + last 7 days, limit 100"),
        phase.runs(10),
        || (format!("gateway = {RARE_GATEWAY}"), end - 7 * DAY_MS, end),
    )
    .await;
    measure_empty(
        store,
        &phase.name("gateway = gw-retired (none) + last 24 h, limit 100"),
        5,
        "gateway = gw-retired",
        end - DAY_MS,
        end,
    )
    .await;
    let device = |rng: &mut Rng| format!("device-{:05}", rng.below(DEVICES));
    measure_timeline(
        store,
        &phase.name("device timeline ±1 h"),
        phase.runs(300),
        || {
            let around = START_MS + rng.below(days() * DAY_MS);
            (device(rng), around - 3_600_000, around + 3_600_000)
        },
    )
    .await;
    measure_timeline(
        store,
        &phase.name("device timeline, one whole day"),
        phase.runs(100),
        || {
            let day = rng.below(days());
            (
                device(rng),
                START_MS + day * DAY_MS,
                START_MS + (day + 1) * DAY_MS - 1,
            )
        },
    )
    .await;
}

/// A search that finds nothing, timed `runs` times.
async fn measure_empty(
    store: &FleetStore,
    name: &str,
    runs: usize,
    text: &str,
    from: i64,
    to: i64,
) {
    let req = SearchRequest {
        query: parse_query(text).expect("query"),
        from_ms: Some(from),
        to_ms: Some(to),
        limit: 100,
        cursor: None,
    };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let page = store.search(&req).await.expect("search");
        times.push(t.elapsed());
        assert!(page.events.is_empty(), "{text} found events");
    }
    report(name, times, 0);
}

/// The plans of the user + action searches, as the store runs them.
async fn explain_user_action_searches(client: &tokio_postgres::Client, end: i64) {
    for (title, action, from) in [
        ("user + block, whole range", "block", START_MS),
        ("user + block, 24 h", "block", end - DAY_MS),
        ("user + allow, whole range", "allow", START_MS),
    ] {
        explain(
            client,
            title,
            &format!(
                "SELECT doc, event_time, seq FROM rampart_events WHERE event_time >= {from} AND event_time < {end} \
                 AND ((user_name = 'user17@corp.example' AND action = '{action}')) ORDER BY event_time DESC, seq DESC LIMIT 101"
            ),
        )
        .await;
    }
}

/// Build an index (its `CREATE INDEX` statement) and analyse, timed; print
/// its size.
async fn build_index(
    client: &tokio_postgres::Client,
    data_dir: &std::path::Path,
    name: &str,
    def: &str,
) {
    assert!(
        free_bytes(data_dir) > MIN_FREE_BYTES,
        "stopping before building {name}: under 15 GiB free"
    );
    let t = Instant::now();
    client.batch_execute(def).await.expect("create index");
    let built = t.elapsed().as_secs_f64();
    let bytes: i64 = client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = $1::text::regclass",
            &[&name],
        )
        .await
        .expect("index size")
        .get(0);
    println!(
        "index {name}: built in {built:.1} s, {:.0} MB",
        bytes as f64 / 1e6
    );
}

/// PostgreSQL restarted (its buffers empty) and the database's files
/// dropped from the page cache, so the next searches read the disk.
async fn go_cold(
    pg: &mut Postgres,
    store: FleetStore,
    client: tokio_postgres::Client,
) -> (FleetStore, tokio_postgres::Client) {
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
    drop(store);
    drop(client);
    pg.stop();
    let evicted = evict_from_page_cache(pg.dir());
    pg.restart();
    println!(
        "cold: PostgreSQL restarted, {:.1} GB of its files dropped from the page cache",
        evicted as f64 / 1e9
    );
    let store = FleetStore::connect(&pg.url()).await.expect("reconnect");
    let client = pg_client(pg).await;
    (store, client)
}

async fn pg_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of a statement the store runs, printed.
async fn explain(client: &tokio_postgres::Client, title: &str, statement: &str) {
    let rows = client
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {statement}"), &[])
        .await
        .expect("explain");
    println!("-- {title}\n{statement}");
    for r in rows {
        println!("   {}", r.get::<_, String>(0));
    }
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture (10M rows: ~15 GB of disk, tens of minutes)"]
fn fleet_search_latency_at_scale() {
    let total: i64 = std::env::var("RAMPART_PG_SCALE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    assert!(
        total >= days() && total % days() == 0,
        "RAMPART_PG_SCALE_EVENTS must be a multiple of {}",
        days()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut pg = Postgres::start(Mode::Durable);
    let data_dir = pg.dir().to_path_buf();
    rt.block_on(async {
        let mut config = FleetStoreConfig::new(pg.url());
        config.insert_method = InsertMethod::Copy;
        let mut store = FleetStore::connect_with(config).await.expect("connect");
        store
            .ensure_partitions(START_MS, START_MS + days() * DAY_MS)
            .await
            .expect("partitions");
        let mut client = pg_client(&pg).await;

        // 1. The templates, written by the store, kept aside, removed from the events.
        let lean = std::env::var("RAMPART_PG_SCALE_DOC").is_ok_and(|v| v == "lean");
        let templates = [template(false, lean), template(true, lean)];
        for t in &templates {
            let json = serde_json::to_string(t).expect("json");
            for s in [S_USER, S_TEAM, S_DEVICE, S_HOST, S_PATH, S_GATEWAY] {
                assert!(json.contains(s), "template document lacks {s}: {json}");
            }
            assert!(json.contains(&T_END.to_string()), "{json}");
            assert!(json.contains(&T_START.to_string()), "{json}");
            println!("template document ({} bytes): {json}", json.len());
        }
        store.insert_batch(&templates).await.expect("insert templates");
        client
            .batch_execute(&format!(
                "CREATE TABLE bench_template AS SELECT *, action = 'block' AS blocked \
                 FROM rampart_events WHERE event_time = {T_END};
                 DELETE FROM rampart_events WHERE event_time = {T_END};"
            ))
            .await
            .expect("templates aside");
        let blocked: Vec<bool> = client
            .query("SELECT blocked FROM bench_template ORDER BY blocked", &[])
            .await
            .expect("templates")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(blocked, [false, true], "one allowed and one blocked template");
        let columns: Vec<(String, String)> = client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_name = 'rampart_events' AND column_name <> 'seq' ORDER BY ordinal_position",
                &[],
            )
            .await
            .expect("columns")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut templated = Vec::new();
        for (name, ty) in &columns {
            if ty != "text" {
                continue;
            }
            let holds: Option<bool> = client
                .query_one(
                    &format!("SELECT bool_or({name} LIKE '%zq%') FROM bench_template"),
                    &[],
                )
                .await
                .expect("template column")
                .get(0);
            if holds == Some(true) {
                templated.push(name.clone());
            }
        }
        println!("columns holding a sentinel: {templated:?}");

        // 2. The load: indexes off, one INSERT ... SELECT per day, indexes on.
        let indexes: Vec<(String, String)> = client
            .query(
                "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE i.indrelid = 'rampart_events'::regclass AND NOT i.indisprimary ORDER BY c.relname",
                &[],
            )
            .await
            .expect("indexes")
            .iter()
            .map(|r| (r.get(0), r.get::<_, String>(1).replace(" ON ONLY ", " ON ")))
            .collect();
        for (name, _) in &indexes {
            client
                .batch_execute(&format!("DROP INDEX {name}"))
                .await
                .expect("drop index");
        }
        let per_day = total / days();
        let load_start = Instant::now();
        for day in 0..days() {
            let free = free_bytes(&data_dir);
            assert!(
                free > MIN_FREE_BYTES,
                "stopping the load before day {day}: {:.1} GiB free under {}",
                free as f64 / (1u64 << 30) as f64,
                data_dir.display()
            );
            let t = Instant::now();
            let n = client
                .execute(
                    &load_sql(&columns, &templated, day * per_day, (day + 1) * per_day - 1, total),
                    &[],
                )
                .await
                .expect("load a day");
            assert_eq!(n, per_day as u64);
            println!(
                "day {day}: {n} rows in {:.1} s ({:.1} GiB free)",
                t.elapsed().as_secs_f64(),
                free_bytes(&data_dir) as f64 / (1u64 << 30) as f64
            );
        }
        let load_secs = load_start.elapsed().as_secs_f64();
        println!(
            "load: {total} rows in {load_secs:.0} s ({:.0} rows/s, SQL generation, primary key maintained)",
            total as f64 / load_secs
        );
        // Schema 4's index is built after the searches ran without it:
        // the figures before and after.
        let (user_action_index, indexes): (Vec<_>, Vec<_>) = indexes
            .into_iter()
            .partition(|(name, _)| name == USER_ACTION_INDEX);
        for (name, def) in &indexes {
            build_index(&client, &data_dir, name, def).await;
        }
        let t = Instant::now();
        // ANALYZE, not VACUUM: a vacuum would rewrite every page of the
        // fresh heap (hint bits) and take longer than the whole load.
        client
            .batch_execute("ANALYZE rampart_events")
            .await
            .expect("analyze");
        println!("ANALYZE: {:.0} s", t.elapsed().as_secs_f64());
        let sizes = client
            .query_one(
                "SELECT pg_database_size(current_database()), \
                 (SELECT sum(pg_table_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'rampart_events'::regclass)::bigint, \
                 (SELECT sum(pg_indexes_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'rampart_events'::regclass)::bigint, \
                 (SELECT count(*) FROM rampart_events)",
                &[],
            )
            .await
            .expect("sizes");
        let (db, table, idx, rows): (i64, i64, i64, i64) =
            (sizes.get(0), sizes.get(1), sizes.get(2), sizes.get(3));
        assert_eq!(rows, total);
        println!(
            "database {:.2} GB ({:.0} bytes/event): table {:.2} GB, indexes {:.2} GB",
            db as f64 / 1e9,
            db as f64 / total as f64,
            table as f64 / 1e9,
            idx as f64 / 1e9
        );
        // No sentinel survived (checked on the first day).
        let leftover: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM rampart_events WHERE event_time < {} AND doc::text LIKE '%zq%'",
                    START_MS + DAY_MS
                ),
                &[],
            )
            .await
            .expect("sentinel check")
            .get(0);
        assert_eq!(leftover, 0, "generated documents still hold a sentinel");

        // 3. Every search with the indexes of schema 3, warm then cold.
        let end = START_MS + days() * DAY_MS;
        let mut rng = Rng(99);
        explain_user_action_searches(&client, end).await;
        let schema_3 = "schema 3";
        for cache in [Cache::Warm, Cache::Cold] {
            if cache == Cache::Cold {
                (store, client) = go_cold(&mut pg, store, client).await;
            }
            let phase = Phase { indexes: schema_3, cache };
            measure_searches(&store, &mut rng, end, &phase, Searches::All).await;
        }

        // 4. The alternative to schema 4's partial index: one over every
        // event, allowed ones too (serves `action = allow` as well, at the
        // price of a B-tree entry per event). Measured, then dropped.
        let alternative = "rampart_events_user_action_all";
        build_index(
            &client,
            &data_dir,
            alternative,
            &format!("CREATE INDEX {alternative} ON rampart_events (user_name, action, event_time, seq); ANALYZE rampart_events"),
        )
        .await;
        explain_user_action_searches(&client, end).await;
        for cache in [Cache::Warm, Cache::Cold] {
            if cache == Cache::Cold {
                (store, client) = go_cold(&mut pg, store, client).await;
            }
            let phase = Phase { indexes: "schema 3 + (user, action) of every event", cache };
            measure_searches(&store, &mut rng, end, &phase, Searches::UserAction).await;
        }
        client
            .batch_execute(&format!("DROP INDEX {alternative}"))
            .await
            .expect("drop the alternative index");

        // 5. Schema 4: its index of the events not allowed, then every search again.
        let (name, def) = user_action_index
            .first()
            .expect("schema 4 has an index of the events not allowed");
        build_index(&client, &data_dir, name, &format!("{def}; ANALYZE rampart_events")).await;
        explain_user_action_searches(&client, end).await;
        for cache in [Cache::Warm, Cache::Cold] {
            if cache == Cache::Cold {
                (store, client) = go_cold(&mut pg, store, client).await;
            }
            let phase = Phase { indexes: "schema 4", cache };
            measure_searches(&store, &mut rng, end, &phase, Searches::All).await;
        }
    });
    drop(pg);
}
