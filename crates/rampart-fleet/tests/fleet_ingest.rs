//! Events from gateways to the PostgreSQL fleet store through a real
//! `nats-server` with JetStream and a real PostgreSQL 15: batches that cross
//! a NATS outage (spooled, a publisher restarted meanwhile), a PostgreSQL
//! outage (events wait in JetStream), events re-sent in other batches and a
//! message of a gateway from before batching all end up in PostgreSQL exactly
//! once (count and ids checked), each stamped with its gateway and found by
//! the query language's `gateway` field.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_events::{parse_query, Event, FlowEvent, FlowKind, FlowSummary, SearchRequest};
use rampart_fleet::nats::{
    connect, ConsumerSettings, EventConsumer, EventPublisher, NatsSettings, PublisherSettings,
};
use rampart_fleet::pg::FleetStore;
use rampart_testkit::eventually_async;
use rampart_testkit::nats::NatsServer;
use rampart_testkit::postgres::{Mode, Postgres};
use uuid::Uuid;

fn event(n: usize) -> Event {
    let now = rampart_events::now_ms();
    let mut flow = FlowSummary::new(rampart_events::new_flow_id(), now - 40);
    flow.end_ms = now;
    flow.user = Some(format!("user{}", n % 50));
    flow.device_uid = Some(format!("device-{}", n % 20));
    flow.host = Some(format!("host{}.example.com", n % 100));
    flow.url = Some(format!("https://host{}.example.com/{n}", n % 100));
    flow.status = Some(200);
    FlowEvent::new(FlowKind::Http, flow).event()
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(event).collect()
}

async fn publisher(nats: &NatsServer, gateway: &str, data_dir: &Path) -> EventPublisher {
    let mut settings = PublisherSettings::new(&nats.url(), gateway, data_dir.to_path_buf());
    // Small messages, so every call here makes several batches.
    settings.batch.max_events = 150;
    EventPublisher::start(settings)
        .await
        .expect("event publisher starts")
}

/// Rows and distinct ids in the fleet store, read with a connection of our
/// own (the store's pool may be reconnecting after a PostgreSQL restart).
async fn counted(pg: &Postgres) -> Option<(i64, i64)> {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM rampart_events",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_across_nats_and_postgres_outages_and_resends_are_stored_once_with_their_gateway() {
    let mut nats = NatsServer::start();
    let mut pg = Postgres::start(Mode::Fast);
    let store = Arc::new(
        FleetStore::connect(&pg.url())
            .await
            .expect("connect to the test PostgreSQL"),
    );
    let mut settings = ConsumerSettings::new(&nats.url());
    settings.retry_initial = Duration::from_millis(50);
    settings.retry_max = Duration::from_millis(400);
    // A message whose negative acknowledgement is lost comes back only after
    // ack_wait: that is the design's recovery path. 5 s instead of the
    // default 60 s keeps it inside this test's 30 s windows. (CI once saw the
    // events not all stored 30 s after PostgreSQL returned; not reproduced in
    // 26 loaded runs here, and this is the one path that waits longer.)
    settings.ack_wait = Duration::from_secs(5);
    let consumer = EventConsumer::start(settings, store.clone())
        .await
        .expect("consumer starts");
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1_events = events(3000);
    let gw2_events = events(1500);

    let gw1 = publisher(&nats, "gw1", dir1.path()).await;
    let gw2 = publisher(&nats, "gw2", dir2.path()).await;
    eventually_async(Duration::from_secs(20), "publishers connected", || async {
        gw1.connected() && gw2.connected()
    })
    .await;
    let sent = gw1.publish(&gw1_events[..1000]).await.unwrap();
    assert_eq!((sent.acknowledged, sent.spooled), (1000, 0), "{sent:?}");

    // NATS down: both gateways spool; gw1 restarts meanwhile.
    nats.stop();
    let outage = Instant::now();
    assert_eq!(
        gw1.publish(&gw1_events[1000..2000]).await.unwrap().spooled,
        1000
    );
    assert_eq!(
        gw2.publish(&gw2_events[..1000]).await.unwrap().spooled,
        1000
    );
    drop(gw1);
    let gw1 = publisher(&nats, "gw1", dir1.path()).await;
    assert_eq!(
        gw1.publish(&gw1_events[2000..]).await.unwrap().spooled,
        1000
    );
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(outage.elapsed())).await;
    nats.restart();
    for (gw, name) in [(&gw1, "gw1"), (&gw2, "gw2")] {
        assert!(
            gw.drained(Duration::from_secs(20)).await,
            "{name}'s spool not replayed"
        );
    }
    eventually_async(
        Duration::from_secs(30),
        "the 4,000 events of the outage in PostgreSQL",
        || async { counted(&pg).await == Some((4000, 4000)) },
    )
    .await;

    // Events re-sent in batches of another composition: JetStream takes
    // them (other message ids), the fleet store skips the ids it holds.
    let resent = gw1.publish(&gw1_events[500..1700]).await.unwrap();
    assert_eq!(resent.acknowledged, 1200, "{resent:?}");
    // A gateway from before batching: one event's OCSF JSON per message,
    // its id as the message id.
    let legacy = event(7);
    let client = connect(&NatsSettings::new(nats.url(), "old-gateway"), true)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    js.send_publish(
        "rampart.events.gw3",
        async_nats::jetstream::message::PublishMessage::build()
            .message_id(legacy.id().to_string())
            .payload(rampart_events::render::ocsf_line(&legacy).into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // PostgreSQL down: events wait in JetStream and arrive after it returns.
    pg.stop();
    assert_eq!(
        gw2.publish(&gw2_events[1000..]).await.unwrap().acknowledged,
        500
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = counted(&pg).await;
        if now == Some((4501, 4501)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event in PostgreSQL 30 s after it returned: (rows, ids) = {now:?}, consumer {:?}",
            consumer.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for wrongly pending redeliveries to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counted(&pg).await, Some((4501, 4501)));

    let mut expected: BTreeSet<Uuid> = gw1_events
        .iter()
        .chain(&gw2_events)
        .map(Event::id)
        .collect();
    expected.insert(legacy.id());
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stored: BTreeSet<Uuid> = client
        .query("SELECT id FROM rampart_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, expected, "exactly the published ids");

    // The re-sent events add no row, so the count above cannot wait for
    // them: a batch of them that met PostgreSQL down is redelivered later
    // (after the retry back-off, or ack_wait if its nak was lost).
    eventually_async(
        Duration::from_secs(30),
        "the re-sent events reached the store and were skipped there",
        || async { consumer.stats().committed >= 4501 + 1200 },
    )
    .await;
    assert_eq!(counted(&pg).await, Some((4501, 4501)), "and added no row");
    let stats = consumer.stats();
    assert!(
        stats.messages < stats.committed / 10,
        "events travel several per message: {stats:?}"
    );
    assert!(stats.sink_failures > 0, "PostgreSQL was down: {stats:?}");

    // Each event carries the gateway that logged it, and the query language finds it.
    for (query, n) in [
        ("gateway = gw1", 3000),
        ("gateway = GW2", 1500),
        ("gateway = gw3", 1),
        ("gateway != gw1", 1501),
        ("gateway in (gw2, gw3) and user = user7", 30 + 1),
    ] {
        let q = parse_query(query).unwrap();
        assert_eq!(store.count(&q, None, None).await.unwrap(), n, "{query}");
    }
    let page = store
        .search(&SearchRequest {
            query: parse_query("gateway = gw3").unwrap(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stamped = legacy.clone();
    stamped.unmapped.gateway = Some("gw3".into());
    assert_eq!(page.events, vec![stamped]);
}
