//! The PostgreSQL fleet event store against a real PostgreSQL 15 started per
//! test (`pg_support`): idempotent inserts, daily partitions, retention, query
//! values that stay values, and agreement with the embedded store on
//! generated events and queries.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rampart_events::event::{Bypass, BypassSite, DeviceActivity, Severity, TlsDecision, Verdict};
use rampart_events::store::Cursor;
use rampart_events::{
    device_event, parse_query, AlertSpec, Event, FlowEvent, FlowKind, FlowSummary, SearchRequest,
    StoreReader, StoreWriter,
};
use rampart_fleet::pg::{FleetStore, FleetStoreConfig, InsertMethod, TimelineSubject, DAY_MS};
use rampart_testkit::postgres::{Mode, Postgres};

/// 2026-01-10T00:00:00Z.
const BASE_MS: i64 = 1_768_003_200_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn store(pg: &Postgres, method: InsertMethod) -> FleetStore {
    let mut config = FleetStoreConfig::new(pg.url());
    config.insert_method = method;
    FleetStore::connect_with(config)
        .await
        .expect("connect to the test PostgreSQL")
}

/// A raw connection, to look at the tables themselves.
async fn raw(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
}

fn http_event(user: &str, device: &str, host: &str, time_ms: i64) -> Event {
    let mut s = FlowSummary::new(rampart_events::new_flow_id(), time_ms);
    s.user = Some(user.to_string());
    s.device_uid = Some(device.to_string());
    s.host = Some(host.to_string());
    s.url = Some(format!("https://{host}/"));
    s.status = Some(200);
    FlowEvent::new(FlowKind::Http, s).event()
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id().to_string()).collect()
}

#[test]
fn reinserting_the_same_events_adds_nothing_with_either_insert_method() {
    let pg = Postgres::start(Mode::Fast);
    runtime().block_on(async {
        for method in [InsertMethod::Copy, InsertMethod::Arrays] {
            let store = store(&pg, method).await;
            raw(&pg)
                .await
                .batch_execute("TRUNCATE rampart_events")
                .await
                .unwrap();
            let first: Vec<Event> = (0..50)
                .map(|i| http_event("alice", "laptop-1", "a.example", BASE_MS + i * 1000))
                .collect();
            assert_eq!(store.insert_batch(&first).await.unwrap(), 50, "{method:?}");
            // The same batch again (a redelivery), then old and new mixed
            // with a duplicate inside the batch.
            assert_eq!(store.insert_batch(&first).await.unwrap(), 0, "{method:?}");
            let fresh = http_event("bob", "laptop-2", "b.example", BASE_MS + 99_000);
            let mixed = vec![
                first[3].clone(),
                fresh.clone(),
                fresh.clone(),
                first[7].clone(),
            ];
            assert_eq!(store.insert_batch(&mixed).await.unwrap(), 1, "{method:?}");
            let all = parse_query("").unwrap();
            assert_eq!(store.count(&all, None, None).await.unwrap(), 51);
            // Stored documents come back equal to what was inserted.
            let got = store.get(&fresh.id().to_string()).await.unwrap();
            assert_eq!(got.as_ref(), Some(&fresh));
        }
    });
}

#[test]
fn events_of_different_days_land_in_their_own_daily_partitions() {
    let pg = Postgres::start(Mode::Fast);
    runtime().block_on(async {
        let store = store(&pg, InsertMethod::Copy).await;
        let times = [
            BASE_MS + 5,                // 2026-01-10
            BASE_MS + DAY_MS - 1,       // 2026-01-10, its last millisecond
            BASE_MS + DAY_MS,           // 2026-01-11
            BASE_MS + 3 * DAY_MS + 500, // 2026-01-13
            BASE_MS - 1,                // 2026-01-09
        ];
        let events: Vec<Event> = times
            .iter()
            .map(|t| http_event("alice", "d1", "h.example", *t))
            .collect();
        assert_eq!(store.insert_batch(&events).await.unwrap(), 5);
        let tables: Vec<String> = store
            .partitions()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.table)
            .collect();
        for t in [
            "rampart_events_p20260109",
            "rampart_events_p20260110",
            "rampart_events_p20260111",
            "rampart_events_p20260113",
        ] {
            assert!(tables.contains(&t.to_string()), "{t} missing from {tables:?}");
        }
        // No partition for a day without events (2026-01-12).
        assert!(!tables.contains(&"rampart_events_p20260112".to_string()));
        let client = raw(&pg).await;
        let per_table = client
            .query(
                "SELECT tableoid::regclass::text, count(*) FROM rampart_events GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        let counts: Vec<(String, i64)> = per_table.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            counts,
            vec![
                ("rampart_events_p20260109".to_string(), 1),
                ("rampart_events_p20260110".to_string(), 2),
                ("rampart_events_p20260111".to_string(), 1),
                ("rampart_events_p20260113".to_string(), 1),
            ]
        );
        // Today's partition and the days ahead were made at connect.
        let today = rampart_events::now_ms().div_euclid(DAY_MS);
        let days: BTreeSet<i64> = store.partitions().await.unwrap().iter().map(|p| p.day).collect();
        assert!((today..=today + 3).all(|d| days.contains(&d)), "{days:?}");
        // A time no day partition can name goes to an edge partition.
        let far = http_event("alice", "d1", "h.example", 300_000_000_000_000);
        assert_eq!(store.insert_batch(std::slice::from_ref(&far)).await.unwrap(), 1);
        let row = client
            .query_one(
                "SELECT tableoid::regclass::text FROM rampart_events WHERE id = $1",
                &[&far.id()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "rampart_events_after_year_9999");
        // A second server connecting to the same database migrates nothing twice.
        let again = FleetStore::connect(&pg.url()).await.unwrap();
        assert_eq!(again.count(&parse_query("").unwrap(), None, None).await.unwrap(), 6);
    });
}

#[test]
fn retention_drops_whole_days_before_the_cutoff_and_later_inserts_recreate_them() {
    let pg = Postgres::start(Mode::Fast);
    runtime().block_on(async {
        let store = store(&pg, InsertMethod::Copy).await;
        let events: Vec<Event> = (0..5)
            .flat_map(|day| {
                (0..10).map(move |i| {
                    http_event(
                        "alice",
                        "d1",
                        "h.example",
                        BASE_MS + day * DAY_MS + i * 60_000,
                    )
                })
            })
            .collect();
        assert_eq!(store.insert_batch(&events).await.unwrap(), 50);
        // The cutoff falls inside the third day: days 1 and 2 go, day 3 stays whole.
        let cutoff = BASE_MS + 2 * DAY_MS + 3_600_000;
        let dropped = store.drop_partitions_before(cutoff).await.unwrap();
        assert_eq!(
            dropped,
            vec![
                "rampart_events_p20260110".to_string(),
                "rampart_events_p20260111".to_string()
            ]
        );
        let all = parse_query("").unwrap();
        assert_eq!(store.count(&all, None, None).await.unwrap(), 30);
        assert_eq!(
            store
                .count(&all, None, Some(BASE_MS + 2 * DAY_MS))
                .await
                .unwrap(),
            0
        );
        // Nothing else to drop at the same cutoff.
        assert!(store
            .drop_partitions_before(cutoff)
            .await
            .unwrap()
            .is_empty());
        // A late event of a dropped day recreates its partition.
        let late = http_event("alice", "d1", "h.example", BASE_MS + 1);
        assert_eq!(store.insert_batch(&[late]).await.unwrap(), 1);
        assert_eq!(store.count(&all, None, None).await.unwrap(), 31);
        // Another server's retention drops a partition this one still
        // believes in: the insert recreates it instead of failing.
        let other = FleetStore::connect(&pg.url()).await.unwrap();
        other
            .drop_partitions_before(BASE_MS + DAY_MS)
            .await
            .unwrap();
        let later = http_event("alice", "d1", "h.example", BASE_MS + 2);
        assert_eq!(store.insert_batch(&[later]).await.unwrap(), 1);
        // By age: everything older than 1 day before the last day's end.
        let dropped = store
            .drop_partitions_older_than(1, BASE_MS + 5 * DAY_MS)
            .await
            .unwrap();
        assert_eq!(
            dropped,
            vec![
                "rampart_events_p20260110".to_string(),
                "rampart_events_p20260112".to_string(),
                "rampart_events_p20260113".to_string()
            ]
        );
        assert_eq!(store.count(&all, None, None).await.unwrap(), 10);
    });
}

#[test]
fn query_values_stay_values_whatever_they_contain() {
    let pg = Postgres::start(Mode::Fast);
    runtime().block_on(async {
        let store = store(&pg, InsertMethod::Copy).await;
        let hostile = [
            "x'; DROP TABLE rampart_events; --",
            "' OR '1'='1",
            "50%_off\\",
            "$1::text",
            "robert\"); DELETE FROM rampart_events; --",
            "nul\0byte",
        ];
        let events: Vec<Event> = hostile
            .iter()
            .enumerate()
            .map(|(i, u)| http_event(u, "d1", &format!("h{i}.example"), BASE_MS + i as i64))
            .collect();
        let plain = http_event("alice", "d1", "plain.example", BASE_MS + 100);
        store.insert_batch(&events).await.unwrap();
        store.insert_batch(&[plain]).await.unwrap();
        let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        for (i, u) in hostile.iter().enumerate() {
            let q = parse_query(&format!("user = {}", quote(u))).unwrap();
            let page = store
                .search(&SearchRequest {
                    query: q,
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(ids(&page.events), vec![events[i].id().to_string()], "{u:?}");
        }
        // `like` wildcards of SQL in a value are literal characters.
        let like = |v: &str| parse_query(&format!("user like {}", quote(v))).unwrap();
        let count = |q| {
            let store = &store;
            async move { store.count(&q, None, None).await.unwrap() }
        };
        assert_eq!(count(like("%")).await, 1);
        // "rampart_events" in two of the names has one too.
        assert_eq!(count(like("_")).await, 3);
        assert_eq!(count(like("\\")).await, 1);
        assert_eq!(count(like("'")).await, 2);
        assert_eq!(
            count(parse_query("user = \"' OR 1=1 --\"").unwrap()).await,
            0
        );
        assert_eq!(
            count(parse_query("user in (\"x'); DROP TABLE rampart_events; --\", alice)").unwrap())
                .await,
            1
        );
        // Everything is still there.
        assert_eq!(count(parse_query("").unwrap()).await, 7);
        // NUL cannot be stored in PostgreSQL text: it reads back as U+FFFD.
        let got = store
            .get(&events[5].id().to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.user_name(), Some("nul\u{fffd}byte"));
    });
}

// ---------------------------------------------------------------------------
// Differential: the embedded store and the fleet store answer alike.

const USERS: &[&str] = &[
    "alice",
    "Alice",
    "bob",
    "ÉLODIE",
    "o'brien",
    "50%_x",
    "a\\b",
    "İris",
    "ǅx",
    "\u{212A}elvin",
];
const GROUPS: &[&str] = &["eng", "Ops", "sales", "ÉQUIPE", "a,b", ""];
const DEVICES: &[&str] = &["laptop-1", "LAPTOP-2", "pc_3", "mac%4"];
const HOSTS: &[&str] = &[
    "news.example",
    "WWW.News.Example",
    "api.dropbox.com",
    "dropbox.com.evil",
    "x_y.test",
    "ünï.example",
];
const CATEGORIES: &[&str] = &["news", "gambling", "Social", "unknown"];
const PROCESSES: &[&str] = &["curl", "python3", "Chrome"];
const RULES: &[&str] = &["block news", "allow-all", "Rule*1"];
/// Fleet gateway ids (`unmapped.gateway`, set by the server); events without
/// one are what an all-in-one store holds.
const GATEWAYS: &[&str] = &["gw1", "GW2", "edge-3"];

#[derive(Clone, Debug)]
struct EventSpec {
    kind: u8,
    offset_s: i64,
    user: Option<usize>,
    groups: Vec<usize>,
    device: Option<usize>,
    host: Option<usize>,
    category: Option<usize>,
    process: Option<usize>,
    rule: Option<usize>,
    verdict: usize,
    status: Option<u16>,
    port: u16,
    bytes: u64,
    tls: Option<usize>,
    bypass: Option<bool>,
    gateway: Option<usize>,
}

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.8, 0..pool.len())
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (
        (
            0u8..10,
            0i64..(3 * 86_400 / 600),
            pick(USERS),
            prop::collection::vec(0..GROUPS.len(), 0..3),
            pick(DEVICES),
            pick(HOSTS),
        ),
        (
            pick(CATEGORIES),
            pick(PROCESSES),
            pick(RULES),
            0..4usize,
            prop::option::of(prop::sample::select(vec![200u16, 302, 403, 404, 500])),
        ),
        (
            prop::sample::select(vec![80u16, 443, 8443]),
            0u64..100_000,
            prop::option::of(0..5usize),
            prop::option::of(any::<bool>()),
            pick(GATEWAYS),
        ),
    )
        .prop_map(
            |(
                (kind, slot, user, groups, device, host),
                (category, process, rule, verdict, status),
                (port, bytes, tls, bypass, gateway),
            )| EventSpec {
                kind,
                // Ten-minute slots over three days: ties in time happen, and
                // their order comes from the insertion order in both stores.
                offset_s: slot * 600,
                user,
                groups,
                device,
                host,
                category,
                process,
                rule,
                verdict,
                status,
                port,
                bytes,
                tls,
                bypass,
                gateway,
            },
        )
}

fn build(spec: &EventSpec) -> Event {
    let mut event = build_unstamped(spec);
    event.unmapped.gateway = spec.gateway.map(|i| GATEWAYS[i].to_string());
    event
}

fn build_unstamped(spec: &EventSpec) -> Event {
    let time = BASE_MS + spec.offset_s * 1000;
    let mut s = FlowSummary::new(rampart_events::new_flow_id(), time - 250);
    s.end_ms = time;
    s.user = spec.user.map(|i| USERS[i].to_string());
    s.groups = spec.groups.iter().map(|i| GROUPS[*i].to_string()).collect();
    s.device_uid = spec.device.map(|i| DEVICES[i].to_string());
    s.host = spec.host.map(|i| HOSTS[i].to_string());
    s.url = spec
        .host
        .map(|i| format!("https://{}:{}/p?q=1", HOSTS[i], spec.port));
    s.categories = spec
        .category
        .map(|i| CATEGORIES[i].to_string())
        .into_iter()
        .collect();
    s.process_name = spec.process.map(|i| PROCESSES[i].to_string());
    s.rule_name = spec.rule.map(|i| RULES[i].to_string());
    s.rule_id = spec.rule.map(|i| format!("r{i}"));
    s.verdict = Verdict::ALL[spec.verdict];
    s.status = spec.status;
    s.src = Some(
        format!("10.0.0.{}:5000", spec.port % 7)
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    s.dst = Some(
        format!("192.0.2.1:{}", spec.port)
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    s.bytes_in = spec.bytes;
    s.bytes_out = spec.bytes / 3;
    s.tls_decision = spec.tls.map(|i| TlsDecision::ALL[i]);
    s.bypass = spec.bypass.map(|client| Bypass {
        at: if client {
            BypassSite::Client
        } else {
            BypassSite::Gateway
        },
        reason: "pinned".into(),
    });
    match spec.kind {
        0..=5 => FlowEvent::new(FlowKind::Http, s).event(),
        6..=7 => FlowEvent::new(FlowKind::Network, s).event(),
        8 => s.alert_event(
            &AlertSpec {
                title: "Malware".into(),
                desc: None,
                severity: Severity::ALL[spec.verdict],
                types: vec!["malware".into()],
            },
            None,
        ),
        _ => device_event(
            DeviceActivity::Isolated,
            DEVICES[spec.device.unwrap_or(0)],
            Some("host-9"),
            spec.user.map(|i| USERS[i]),
            Some("isolated"),
            time,
        ),
    }
}

/// A query literal: any value in double quotes.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A comparison of one field with a value drawn from what events hold (in
/// other cases too), in any operator the field accepts.
fn leaf() -> impl Strategy<Value = String> {
    let text_field = prop::sample::select(vec![
        ("user", USERS),
        ("group", GROUPS),
        ("device", DEVICES),
        ("host", HOSTS),
        ("category", CATEGORIES),
        ("process", PROCESSES),
        ("rule", RULES),
        ("gateway", GATEWAYS),
    ]);
    let text_value = (
        text_field,
        any::<prop::sample::Index>(),
        0u8..6,
        prop::sample::select(vec!["=", "!=", "like", "<", ">=", "in", "not in"]),
    )
        .prop_map(|((field, pool), idx, variant, op)| {
            let raw = pool[idx.index(pool.len())];
            let value = match variant {
                0 => raw.to_uppercase(),
                1 if raw.len() > 2 => raw.chars().skip(1).take(3).collect(),
                2 => format!("*{}", raw.chars().skip(2).collect::<String>()),
                3 => format!(
                    "{}?",
                    raw.chars()
                        .take(raw.chars().count().saturating_sub(1))
                        .collect::<String>()
                ),
                _ => raw.to_string(),
            };
            match op {
                "in" | "not in" => format!(
                    "{field} {op} ({}, {})",
                    quoted(&value),
                    quoted(pool[(idx.index(pool.len()) + 1) % pool.len()])
                ),
                _ => format!("{field} {op} {}", quoted(&value)),
            }
        });
    let enum_value = prop_oneof![
        prop::sample::select(vec!["allow", "block", "alert", "challenge", "bl*"])
            .prop_map(|v| format!("action = {v}")),
        prop::sample::select(vec!["http", "network", "alert", "device"])
            .prop_map(|v| format!("type != {v}")),
        prop::sample::select(vec!["decrypt", "do-not-decrypt", "bypass", "failed"])
            .prop_map(|v| format!("tls = {v}")),
        prop::sample::select(vec!["client", "gateway"]).prop_map(|v| format!("bypass = {v}")),
        prop::sample::select(vec!["informational", "high", "critical"])
            .prop_map(|v| format!("severity >= {v}")),
    ];
    let number = (
        prop::sample::select(vec!["status", "dst_port", "bytes_in", "bytes_out"]),
        prop::sample::select(vec!["=", "!=", "<", ">", "<=", ">="]),
        prop::sample::select(vec![0i64, 200, 403, 443, 8443, 50_000]),
    )
        .prop_map(|(f, op, n)| format!("{f} {op} {n}"));
    let misc = prop::sample::select(vec![
        "url like \"*:8443/*\"",
        "method = get",
        "src_ip like 10.0.0",
        "dst_ip = 192.0.2.1",
        "reporter = gateway",
        "gateway = gw2",
        "gateway != edge-3",
        "gateway in (gw1, edge-3)",
        "alert like \"-\"",
        "flow like \"-7\"",
        "id > \"0\"",
        "status in (200, 404)",
        "status not in (200)",
        "revision = x",
    ])
    .prop_map(str::to_string);
    prop_oneof![4 => text_value, 2 => enum_value, 2 => number, 1 => misc]
}

fn query_text() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

#[derive(Clone, Debug)]
struct Search {
    query: String,
    from_slot: Option<i64>,
    to_slot: Option<i64>,
    limit: usize,
}

fn search() -> impl Strategy<Value = Search> {
    (
        prop_oneof![1 => Just(String::new()), 6 => query_text()],
        prop::option::of(0i64..432),
        prop::option::of(0i64..432),
        prop::sample::select(vec![1usize, 7, 40, 1000]),
    )
        .prop_map(|(query, from_slot, to_slot, limit)| Search {
            query,
            from_slot,
            to_slot,
            limit,
        })
}

/// Every page of a search, following cursors, from both stores.
async fn compare_search(
    reader: &StoreReader,
    fleet: &FleetStore,
    stored: &[Event],
    s: &Search,
) -> usize {
    let query = parse_query(&s.query).unwrap_or_else(|e| panic!("{}: {e}", s.query));
    let slot = |n: i64| BASE_MS + n * 600_000;
    let mut req = SearchRequest {
        query: query.clone(),
        from_ms: s.from_slot.map(slot),
        to_ms: s.to_slot.map(slot),
        limit: s.limit,
        cursor: None,
    };
    // The oracle: the query evaluated in memory on the stored events
    // (insertion order), newest first.
    let mut expected: Vec<(i64, usize, &Event)> = stored
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            req.from_ms.is_none_or(|f| e.time >= f) && req.to_ms.is_none_or(|t| e.time < t)
        })
        .filter(|(_, e)| query.matches(*e))
        .map(|(i, e)| (e.time, i, e))
        .collect();
    expected.sort_by_key(|(t, i, _)| std::cmp::Reverse((*t, *i)));
    let expected: Vec<String> = expected
        .iter()
        .take(s.limit)
        .map(|(_, _, e)| e.id().to_string())
        .collect();
    let first = reader.search(&req).expect("embedded search");
    assert_eq!(
        ids(&first.events),
        expected,
        "embedded store vs in-memory evaluation of {:?}",
        s.query
    );
    // Cursors are each store's own (`seq` differs): each follows its own.
    let mut pg_req = req.clone();
    let mut total = 0;
    for _page in 0..4 {
        let embedded = reader.search(&req).expect("embedded search");
        let pg = fleet.search(&pg_req).await.expect("fleet search");
        assert_eq!(
            ids(&pg.events),
            ids(&embedded.events),
            "query {:?} {req:?}",
            s.query
        );
        assert_eq!(pg.events, embedded.events, "documents of {:?}", s.query);
        assert_eq!(
            pg.next_cursor.is_some(),
            embedded.next_cursor.is_some(),
            "{:?}",
            s.query
        );
        total += pg.events.len();
        match (pg.next_cursor, embedded.next_cursor) {
            (Some(p), Some(e)) => {
                pg_req.cursor = Some(Cursor::parse(&p).expect("cursor"));
                req.cursor = Some(Cursor::parse(&e).expect("cursor"));
            }
            _ => {
                let counted = fleet
                    .count(&query, req.from_ms, req.to_ms)
                    .await
                    .expect("count");
                if req.limit == 1000 && req.cursor.is_none() {
                    assert_eq!(counted as usize, total, "count of {:?}", s.query);
                }
                break;
            }
        }
    }
    total
}

#[test]
fn embedded_and_fleet_stores_return_the_same_events_for_generated_queries() {
    let pg = Postgres::start(Mode::Fast);
    let rt = runtime();
    let fleet = rt.block_on(store(&pg, InsertMethod::default()));
    let client = rt.block_on(raw(&pg));
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let matched = std::cell::Cell::new(0usize);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Reproducible by default (the same cases in every CI run); set
    // PROPTEST_RANDOM=1 to explore new ones (such a run found "İris", whose
    // lowercase is two code points, posted unfolded by the embedded store).
    let mut runner = if std::env::var_os("PROPTEST_RANDOM").is_some() {
        proptest::test_runner::TestRunner::new(config)
    } else {
        proptest::test_runner::TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        )
    };
    let result = runner.run(
        &(
            prop::collection::vec(event_spec(), 20..160),
            prop::collection::vec(search(), 12),
        ),
        |(specs, searches)| {
            let events: Vec<Event> = specs.iter().map(build).collect();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = rampart_events::db_path(dir.path());
            let mut writer = StoreWriter::open(&path, false).expect("embedded store");
            rt.block_on(client.batch_execute("TRUNCATE rampart_events"))
                .expect("truncate");
            // Two batches, the second repeating part of the first: both stores
            // skip the repeats and keep the same order.
            let half = events.len() / 2;
            let (a, b) = (&events[..half], &events[half / 2..]);
            let embedded_new = writer.insert(a).expect("embedded insert")
                + writer.insert(b).expect("embedded insert");
            let fleet_new = rt.block_on(async {
                fleet.insert_batch(a).await.expect("fleet insert")
                    + fleet.insert_batch(b).await.expect("fleet insert")
            });
            prop_assert_eq!(embedded_new as u64, fleet_new);
            let reader = StoreReader::open(&path).expect("embedded reader");
            let mut seen = std::collections::HashSet::new();
            let stored: Vec<Event> = a
                .iter()
                .chain(b)
                .filter(|e| seen.insert(e.id()))
                .cloned()
                .collect();
            rt.block_on(async {
                for s in &searches {
                    matched.set(matched.get() + compare_search(&reader, &fleet, &stored, s).await);
                }
                for device in DEVICES.iter().chain(["nobody"].iter()) {
                    let from = BASE_MS + 3_600_000;
                    let to = BASE_MS + 2 * DAY_MS;
                    let embedded = reader
                        .timeline(device, from, to, 50)
                        .expect("embedded timeline");
                    let pg = fleet
                        .timeline(TimelineSubject::Device(device), from, to, 50)
                        .await
                        .expect("fleet timeline");
                    assert_eq!(ids(&pg), ids(&embedded), "timeline of {device}");
                }
            });
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generated queries did select events, not only empty sets.
    let matched = matched.get();
    assert!(
        matched > 100,
        "only {matched} events matched over all queries"
    );
}
