//! The fleet store's searches read the index meant for them: plans checked
//! with `FleetStore::explain_search` on a small analysed store, so a schema or
//! SQL change that falls back to reading every row of the range fails here
//! rather than on a 10M-event store (bench: `tests/pg_search_scale.rs`).

use rampart_events::event::Verdict;
use rampart_events::{parse_query, Event, FlowEvent, FlowKind, FlowSummary, SearchRequest};
use rampart_fleet::pg::{FleetStore, DAY_MS};
use rampart_testkit::postgres::{Mode, Postgres};

/// 2026-01-10T00:00:00Z.
const BASE_MS: i64 = 1_768_003_200_000;

fn event(i: i64, gateway: &str) -> Event {
    let mut s = FlowSummary::new(rampart_events::new_flow_id(), BASE_MS + i * 4_000);
    s.user = Some(format!("user{}", i % 50));
    s.device_uid = Some(format!("device-{}", i % 70));
    s.host = Some(format!("host{}.example", i % 300));
    s.url = Some(format!("https://host{}.example/", i % 300));
    s.status = Some(200);
    // One event in twenty blocked, one in a hundred alerted (as on a real
    // fleet: most traffic is allowed), for every user alike.
    s.verdict = match (i / 50) % 100 {
        0..=4 => Verdict::Block,
        5 => Verdict::Alert,
        _ => Verdict::Allow,
    };
    let mut e = FlowEvent::new(FlowKind::Http, s).event();
    e.unmapped.gateway = Some(gateway.to_string());
    e
}

async fn analysed_store(pg: &Postgres) -> FleetStore {
    let store = FleetStore::connect(&pg.url())
        .await
        .expect("connect to the test PostgreSQL");
    // 20,000 events over one day from three busy gateways; one event in a
    // thousand from a fourth. Each of the 50 users has ~20 blocked events.
    let events: Vec<Event> = (0..20_000)
        .map(|i| {
            let gateway = if i % 1000 == 7 {
                "gw-canary".to_string()
            } else {
                format!("gw{}", 1 + i % 3)
            };
            event(i, &gateway)
        })
        .collect();
    for batch in events.chunks(2_000) {
        store.insert_batch(batch).await.expect("insert");
    }
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
        .batch_execute("ANALYZE rampart_events")
        .await
        .expect("analyze");
    store
}

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: parse_query(query).expect("query"),
        from_ms: Some(BASE_MS),
        to_ms: Some(BASE_MS + DAY_MS),
        limit: 100,
        cursor: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_for_a_rare_or_absent_gateway_reads_the_gateway_index_not_every_row() {
    let pg = Postgres::start(Mode::Fast);
    let store = analysed_store(&pg).await;
    for query in [
        "gateway = gw-canary",
        "gateway = gw-retired",
        "gateway = GW-Canary",
    ] {
        let plan = store
            .explain_search(&request(query))
            .await
            .expect("explain");
        assert!(
            plan.contains("_gateway_event_time_seq_idx"),
            "{query}: the plan does not use the gateway index:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan"),
            "{query}: the plan reads the whole partition:\n{plan}"
        );
    }
    // And it finds what it should, newest first.
    let page = store
        .search(&request("gateway = gw-canary"))
        .await
        .expect("search");
    assert_eq!(page.events.len(), 20);
    assert!(page.events.windows(2).all(|w| w[0].time >= w[1].time));
    assert!(page
        .events
        .iter()
        .all(|e| e.unmapped.gateway.as_deref() == Some("gw-canary")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_for_a_users_blocked_events_reads_the_index_of_events_not_allowed() {
    let pg = Postgres::start(Mode::Fast);
    let store = analysed_store(&pg).await;
    for query in [
        "user = user7 and action = block",
        "action = Block and user = USER7",
        "user = user7 and action = alert",
        "user = user7 and verdict = block",
    ] {
        let plan = store
            .explain_search(&request(query))
            .await
            .expect("explain");
        assert!(
            plan.contains("_user_name_action_event_time_seq_idx"),
            "{query}: the plan does not use the index of events not allowed:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan"),
            "{query}: the plan reads the whole partition:\n{plan}"
        );
    }
    // The index holds no allowed event: a search for them must not use it,
    // and must still find them.
    let allowed = request("user = user7 and action = allow");
    let plan = store.explain_search(&allowed).await.expect("explain");
    assert!(
        !plan.contains("_user_name_action_event_time_seq_idx"),
        "a search for allowed events reads the index that lacks them:\n{plan}"
    );
    assert_eq!(
        store.search(&allowed).await.expect("search").events.len(),
        100
    );

    // Every blocked event of the user, newest first, and nothing else.
    let req = request("user = user7 and action = block");
    let page = store.search(&req).await.expect("search");
    let expected = store
        .count(&req.query, req.from_ms, req.to_ms)
        .await
        .expect("count");
    assert_eq!(expected, 20, "user7's blocked events in the store");
    assert_eq!(page.events.len() as u64, expected);
    assert!(page.events.windows(2).all(|w| w[0].time >= w[1].time));
    assert!(page.events.iter().all(|e| req.query.matches(e)));
}
