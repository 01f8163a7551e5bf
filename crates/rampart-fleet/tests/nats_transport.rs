//! The NATS JetStream transport against a real `nats-server` (Debian 2.9.10
//! here): configuration revisions applied and reported by several watchers,
//! rejections, start from disk without NATS, events through outages and sink
//! failures exactly once, and the throughput and propagation figures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_events::{Event, FlowEvent, FlowKind, FlowSummary, Verdict};
use rampart_fleet::nats::{
    connect, fleet_status, CaMaterial, ConfigPublisher, ConfigRevision, ConfigWatcher,
    ConsumerSettings, EventConsumer, EventPublisher, EventSink, GatewayHealth, GatewayLoad,
    GatewayState, LastGoodRevision, NatsSettings, PolicyBundle, PublisherSettings, ReceivedEvent,
    WatcherSettings, EVENTS_STREAM,
};
use rampart_testkit::eventually_async;
use rampart_testkit::nats::NatsServer;
use tempfile::TempDir;
use uuid::Uuid;

// ---------------------------------------------------------------- fixtures

struct FleetCa {
    material: CaMaterial,
    key_pem: String,
}

fn fleet_ca() -> FleetCa {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    let key_pem = key.serialize_pem();
    FleetCa {
        material: CaMaterial::from_pem(&cert.pem(), &key_pem).expect("CA material"),
        key_pem,
    }
}

fn revision(ca: &FleetCa, policy: &str) -> ConfigRevision {
    ConfigRevision::new(
        "[gateway]\nproxy_listen = \"127.0.0.1:3128\"\n".into(),
        PolicyBundle {
            policy: policy.into(),
            files: [("lists/press.txt".to_string(), "news.example\n".to_string())].into(),
        },
        vec!["device-7".into()],
        "coaching-key-0123456789abcdef".into(),
        ca.material.clone(),
    )
}

/// A stand-in gateway's validate-and-apply step: the CA key it holds must be
/// the fleet's, and a policy containing `explode` is invalid.
fn gateway_apply(
    ca_key_pem: String,
    applied: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&ConfigRevision) -> Result<(), String> + Send + Sync + 'static {
    move |revision| {
        revision
            .ca
            .check_key(&ca_key_pem)
            .map_err(|e| e.to_string())?;
        if let Some(line) = revision
            .policy
            .policy
            .lines()
            .position(|l| l.contains("explode"))
        {
            return Err(format!(
                "policy.toml:{}:10: unknown action \"explode\" (expected allow, block or alert)",
                line + 1
            ));
        }
        applied.lock().unwrap().push(revision.id.clone());
        Ok(())
    }
}

fn watcher_settings(nats: &NatsServer, id: &str, dir: &Path) -> WatcherSettings {
    let mut settings = WatcherSettings::new(&nats.url(), id, dir.to_path_buf());
    settings.heartbeat_interval = Duration::from_millis(200);
    settings
}

/// Revision ids a watcher's apply function was called with, in order.
type Applied = Arc<Mutex<Vec<String>>>;

/// A config watcher for gateway `id` keeping its state in `dir`.
async fn watcher(
    nats: &NatsServer,
    ca: &FleetCa,
    id: &str,
    dir: &Path,
) -> (ConfigWatcher, Applied) {
    let applied = Applied::default();
    let watcher = ConfigWatcher::start(
        watcher_settings(nats, id, dir),
        gateway_apply(ca.key_pem.clone(), applied.clone()),
    )
    .await
    .expect("config watcher starts");
    (watcher, applied)
}

/// Watchers for gateways gw1, gw2 and gw3, each with its own state dir.
async fn three_watchers(
    nats: &NatsServer,
    ca: &FleetCa,
) -> (Vec<TempDir>, Vec<(ConfigWatcher, Applied)>) {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut watchers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        watchers.push(watcher(nats, ca, &format!("gw{}", i + 1), dir.path()).await);
    }
    (dirs, watchers)
}

async fn publisher(nats: &NatsServer) -> ConfigPublisher {
    let client = connect(&NatsSettings::new(nats.url(), "rampart-server-test"), true)
        .await
        .expect("server connects to NATS");
    ConfigPublisher::new(client).await.expect("config buckets")
}

fn event(n: usize) -> Event {
    let now = rampart_events::now_ms();
    let mut flow = FlowSummary::new(rampart_events::new_flow_id(), now - 40);
    flow.end_ms = now;
    flow.user = Some(format!("user{}", n % 50));
    flow.groups = vec!["engineering".into()];
    flow.device_uid = Some(format!("device-{}", n % 200));
    flow.process_name = Some("python3".into());
    flow.src = Some("10.1.2.3:51234".parse().unwrap());
    flow.dst = Some("203.0.113.9:443".parse().unwrap());
    flow.host = Some(format!("host{}.example.com", n % 1000));
    flow.method = Some("GET".into());
    flow.url = Some(format!("https://host{}.example.com/path/{n}?q=1", n % 1000));
    flow.status = Some(200);
    flow.categories = vec!["news".into()];
    flow.verdict = if n.is_multiple_of(10) {
        Verdict::Block
    } else {
        Verdict::Allow
    };
    flow.bytes_in = 5120;
    flow.bytes_out = 640;
    FlowEvent::new(FlowKind::Http, flow).event()
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(event).collect()
}

/// Records every committed id; fails its first `fail_first` batches.
#[derive(Default)]
struct TestSink {
    seen: Mutex<HashMap<Uuid, usize>>,
    fail_first: AtomicUsize,
    gateways: Mutex<HashMap<String, usize>>,
}

impl TestSink {
    fn failing(n: usize) -> TestSink {
        TestSink {
            fail_first: AtomicUsize::new(n),
            ..Default::default()
        }
    }

    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every id of `expected` exactly once, and nothing else.
    fn assert_exactly_once(&self, expected: &[Event]) {
        let seen = self.seen.lock().unwrap();
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "events stored more than once: {twice:?}");
        assert_eq!(seen.len(), expected.len(), "stored count");
        for e in expected {
            assert!(seen.contains_key(&e.id()), "event {} missing", e.id());
        }
    }
}

impl EventSink for TestSink {
    type Error = String;

    async fn insert_batch(&self, events: &[ReceivedEvent]) -> Result<usize, String> {
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("fleet store unavailable (test)".into());
        }
        let mut seen = self.seen.lock().unwrap();
        let mut gateways = self.gateways.lock().unwrap();
        for e in events {
            assert_eq!(e.event.id().to_string(), e.event.metadata.uid.to_string());
            *seen.entry(e.event.id()).or_default() += 1;
            *gateways.entry(e.gateway_id.clone()).or_default() += 1;
        }
        Ok(events.len())
    }
}

async fn consumer(nats: &NatsServer, sink: Arc<TestSink>) -> EventConsumer {
    let mut settings = ConsumerSettings::new(&nats.url());
    settings.retry_initial = Duration::from_millis(50);
    settings.retry_max = Duration::from_millis(400);
    EventConsumer::start(settings, sink)
        .await
        .expect("consumer starts")
}

async fn event_publisher(nats: &NatsServer, gateway: &str, data_dir: &Path) -> EventPublisher {
    EventPublisher::start(PublisherSettings::new(
        &nats.url(),
        gateway,
        data_dir.to_path_buf(),
    ))
    .await
    .expect("event publisher starts")
}

// ---------------------------------------------------------------- configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_published_is_applied_by_three_watchers_and_each_reports_it() {
    let nats = NatsServer::start();
    let server = publisher(&nats).await;
    let ca = fleet_ca();
    let (dirs, watchers) = three_watchers(&nats, &ca).await;
    for (i, (watcher, _)) in watchers.iter().enumerate() {
        watcher.set_load(GatewayLoad {
            active_connections: 10 * (i as u64 + 1),
            ..Default::default()
        });
    }

    let rev = revision(&ca, "[[access]]\naction = \"allow\"\n");
    let published = server.publish(&rev).await.unwrap();
    assert_eq!(published.id, rev.id);
    for (watcher, applied) in &watchers {
        assert!(
            watcher.wait_applied(&rev.id, Duration::from_secs(20)).await,
            "watcher did not apply {}",
            rev.id
        );
        assert_eq!(*applied.lock().unwrap(), vec![rev.id.clone()]);
    }
    eventually_async(
        Duration::from_secs(20),
        "three gateways report the revision",
        || async {
            let fleet = server.fleet_status().await.unwrap();
            fleet.len() == 3
                && fleet.iter().all(|g| {
                    g.revision.as_deref() == Some(rev.id.as_str())
                        && g.state == GatewayState::Applied
                })
        },
    )
    .await;
    let fleet = server.fleet_status().await.unwrap();
    let ids: Vec<_> = fleet.iter().map(|g| g.gateway_id.as_str()).collect();
    assert_eq!(ids, ["gw1", "gw2", "gw3"]);
    for (i, g) in fleet.iter().enumerate() {
        assert_eq!(g.health, GatewayHealth::Up);
        assert_eq!(g.load.active_connections, 10 * (i as u64 + 1));
        assert!(rampart_events::now_ms() - g.last_seen_ms < 10_000);
    }
    // Each gateway kept it on disk, owner-only (it holds the coaching key).
    for dir in &dirs {
        let good = LastGoodRevision::load(dir.path())
            .unwrap()
            .expect("kept on disk");
        assert_eq!(good.revision, rev);
        assert_eq!(good.kv_revision, published.kv_revision);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(LastGoodRevision::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "last good revision readable by others: {mode:o}"
        );
    }
    // The library function behind `rampart fleet status` agrees.
    let client = connect(&NatsSettings::new(nats.url(), "cli"), true)
        .await
        .unwrap();
    let listed = fleet_status(&async_nats::jetstream::new(client))
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_revision_is_rejected_by_all_with_its_error_and_the_old_one_stays_applied() {
    let nats = NatsServer::start();
    let server = publisher(&nats).await;
    let ca = fleet_ca();
    let (dirs, watchers) = three_watchers(&nats, &ca).await;
    let good = revision(&ca, "[[access]]\naction = \"allow\"\n");
    server.publish(&good).await.unwrap();
    for (watcher, _) in &watchers {
        assert!(
            watcher
                .wait_applied(&good.id, Duration::from_secs(20))
                .await
        );
    }

    let broken = revision(&ca, "[[access]]\naction = \"explode\"\n");
    let published = server.publish(&broken).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = server.gateway_statuses().await.unwrap();
        if statuses.len() == 3
            && statuses.iter().all(|s| {
                s.state == GatewayState::Rejected
                    && s.rejected.as_ref().is_some_and(|r| r.id == broken.id)
            })
        {
            break;
        }
        if Instant::now() > deadline {
            let local: Vec<_> = watchers.iter().map(|(w, _)| w.status()).collect();
            panic!("three gateways did not report the rejection of {} (kv {}):\nin NATS: {statuses:#?}\nlocal: {local:#?}", broken.id, published.kv_revision);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for status in server.gateway_statuses().await.unwrap() {
        let rejected = status.rejected.unwrap();
        assert_eq!(rejected.kv_revision, published.kv_revision);
        assert!(
            rejected
                .error
                .contains("policy.toml:2:10: unknown action \"explode\""),
            "{}",
            rejected.error
        );
        assert_eq!(
            status.applied.unwrap().id,
            good.id,
            "the good revision stays applied"
        );
    }
    for ((watcher, applied), dir) in watchers.iter().zip(&dirs) {
        assert_eq!(watcher.applied().unwrap().id, good.id);
        assert_eq!(*applied.lock().unwrap(), vec![good.id.clone()]);
        let on_disk = LastGoodRevision::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            on_disk.revision.id, good.id,
            "a rejected revision never replaces the good one on disk"
        );
    }
    let fleet = server.fleet_status().await.unwrap();
    assert!(fleet
        .iter()
        .all(|g| g.revision.as_deref() == Some(good.id.as_str())
            && g.error.as_deref().is_some_and(|e| e.contains("explode"))));

    // A CA rotated to a key the gateways do not hold is refused the same way.
    let rotated = fleet_ca();
    let mut foreign = revision(&ca, "[[access]]\naction = \"block\"\n");
    foreign.ca = rotated.material.clone();
    let foreign = ConfigRevision::new(
        foreign.gateway_config,
        foreign.policy,
        foreign.revoked_devices,
        foreign.coaching_key,
        foreign.ca,
    );
    server.publish(&foreign).await.unwrap();
    eventually_async(
        Duration::from_secs(20),
        "three gateways refuse the unknown CA key",
        || async {
            let statuses = server.gateway_statuses().await.unwrap();
            statuses.iter().all(|s| {
                s.rejected.as_ref().is_some_and(|r| {
                    r.id == foreign.id && r.error.contains("copy the fleet's CA key file")
                })
            })
        },
    )
    .await;

    // A fixed revision is applied again.
    let fixed = revision(&ca, "[[access]]\naction = \"block\"\n");
    server.publish(&fixed).await.unwrap();
    for (watcher, _) in &watchers {
        assert!(
            watcher
                .wait_applied(&fixed.id, Duration::from_secs(20))
                .await
        );
        assert_eq!(watcher.status().state, GatewayState::Applied);
        assert!(watcher.status().rejected.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_restarted_while_nats_is_down_starts_from_its_last_good_revision() {
    let mut nats = NatsServer::start();
    let server = publisher(&nats).await;
    let ca = fleet_ca();
    let dir = tempfile::tempdir().unwrap();
    let rev = revision(&ca, "[[access]]\naction = \"allow\"\n");
    {
        let (watcher, _) = watcher(&nats, &ca, "gw1", dir.path()).await;
        server.publish(&rev).await.unwrap();
        assert!(watcher.wait_applied(&rev.id, Duration::from_secs(20)).await);
    }
    drop(server);
    nats.stop();

    let applied = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let watcher = ConfigWatcher::start(
        watcher_settings(&nats, "gw1", dir.path()),
        gateway_apply(ca.key_pem.clone(), applied.clone()),
    )
    .await
    .expect("starts without NATS");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start waited for NATS: {:?}",
        started.elapsed()
    );
    let current = watcher.applied().expect("serving the revision from disk");
    assert_eq!(current.id, rev.id);
    assert!(current.from_disk);
    assert_eq!(*applied.lock().unwrap(), vec![rev.id.clone()]);
    assert_eq!(watcher.status().state, GatewayState::Applied);

    // NATS comes back: the watcher reconnects by itself and reports in.
    nats.restart();
    let server = publisher(&nats).await;
    eventually_async(
        Duration::from_secs(20),
        "the restarted gateway reports after NATS returns",
        || async {
            server.fleet_status().await.is_ok_and(|fleet| {
                fleet.iter().any(|g| {
                    g.gateway_id == "gw1"
                        && g.revision.as_deref() == Some(rev.id.as_str())
                        && rampart_events::now_ms() - g.last_seen_ms < 1_000
                })
            })
        },
    )
    .await;
    // It was not applied a second time: the content is the same.
    assert_eq!(applied.lock().unwrap().len(), 1);
    let next = revision(&ca, "[[access]]\naction = \"block\"\n");
    server.publish(&next).await.unwrap();
    assert!(
        watcher
            .wait_applied(&next.id, Duration::from_secs(20))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_propagation_to_three_watchers_p95_within_one_second() {
    let nats = NatsServer::start();
    let server = publisher(&nats).await;
    let ca = fleet_ca();
    let (_dirs, watchers) = three_watchers(&nats, &ca).await;
    let watchers: Vec<ConfigWatcher> = watchers.into_iter().map(|(w, _)| w).collect();
    let rounds = 40;
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let rev = revision(
            &ca,
            &format!("# round {round}\n[[access]]\naction = \"allow\"\n"),
        );
        let start = Instant::now();
        server.publish(&rev).await.unwrap();
        for w in &watchers {
            assert!(
                w.wait_applied(&rev.id, Duration::from_secs(20)).await,
                "round {round}"
            );
        }
        times.push(start.elapsed());
    }
    times.sort();
    let p50 = times[rounds / 2];
    let p95 = times[rounds * 95 / 100];
    println!("config propagation to 3 watchers over {rounds} revisions: p50 {p50:?}, p95 {p95:?}, max {:?}", times[rounds - 1]);
    assert!(
        p95 <= Duration::from_secs(1),
        "p95 {p95:?} over the 1 s target"
    );
}

// ---------------------------------------------------------------- events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_nats_is_stopped_are_spooled_and_arrive_exactly_once() {
    let mut nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let sink = Arc::new(TestSink::default());
    let _consumer = consumer(&nats, sink.clone()).await;
    let all = events(3000);

    let publisher = event_publisher(&nats, "gw1", data.path()).await;
    eventually_async(Duration::from_secs(20), "publisher connected", || async {
        publisher.connected()
    })
    .await;
    let outcome = publisher.publish(&all[..1000]).await.unwrap();
    assert_eq!(outcome.acknowledged, 1000, "{outcome:?}");

    nats.stop();
    let outage = Instant::now();
    let outcome = publisher.publish(&all[1000..2000]).await.unwrap();
    assert_eq!(outcome.spooled, 1000, "{outcome:?}");
    assert!(publisher.spooled_bytes() > 0);
    // The gateway restarts during the outage: the spool survives it.
    drop(publisher);
    let publisher = event_publisher(&nats, "gw1", data.path()).await;
    let outcome = publisher.publish(&all[2000..]).await.unwrap();
    assert_eq!(outcome.spooled, 1000, "{outcome:?}");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(outage.elapsed())).await;

    nats.restart();
    assert!(
        publisher.drained(Duration::from_secs(15)).await,
        "spool not replayed"
    );
    eventually_async(
        Duration::from_secs(15),
        "all 3000 events reach the sink",
        || async { sink.distinct() == 3000 },
    )
    .await;
    // Give redeliveries, if any were wrongly pending, time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.assert_exactly_once(&all);
    assert_eq!(sink.gateways.lock().unwrap().get("gw1"), Some(&3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_gets_events_redelivered_and_finally_stores_every_id_once() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let publisher = event_publisher(&nats, "gw2", data.path()).await;
    let all = events(1500);
    for chunk in all.chunks(500) {
        publisher.publish(chunk).await.unwrap();
    }
    assert!(publisher.drained(Duration::from_secs(20)).await);
    let sink = Arc::new(TestSink::failing(6));
    let consumer = consumer(&nats, sink.clone()).await;
    eventually_async(
        Duration::from_secs(20),
        "all 1500 events stored after the sink recovers",
        || async { sink.distinct() == 1500 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.assert_exactly_once(&all);
    let stats = consumer.stats();
    assert_eq!(stats.sink_failures, 6, "{stats:?}");
    assert!(
        stats.redelivered > 0,
        "failed batches come back as redeliveries: {stats:?}"
    );
    assert_eq!(stats.committed, 1500, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_published_twice_is_kept_once_by_jetstream_and_stored_once() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let publisher = event_publisher(&nats, "gw3", data.path()).await;
    let batch = events(200);
    // Connected first, so that both publishes go straight to NATS.
    eventually_async(Duration::from_secs(20), "publisher connected", || async {
        publisher.connected()
    })
    .await;
    let client = connect(&NatsSettings::new(nats.url(), "probe"), true)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let first = publisher.publish(&batch).await.unwrap();
    let second = publisher.publish(&batch).await.unwrap();
    assert!(publisher.drained(Duration::from_secs(20)).await);
    assert_eq!(
        (first.acknowledged, first.duplicates),
        (200, 0),
        "{first:?}"
    );
    assert_eq!(
        (second.acknowledged, second.duplicates),
        (200, 200),
        "{second:?}"
    );
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "the 200 events travel as one message, and JetStream kept one copy of it"
    );

    let sink = Arc::new(TestSink::default());
    let _consumer = consumer(&nats, sink.clone()).await;
    eventually_async(Duration::from_secs(20), "200 events stored", || async {
        sink.distinct() == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.assert_exactly_once(&batch);
}

// ---------------------------------------------------------------- figures

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the name.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_throughput_from_three_publishers_to_the_consumer() {
    let total: usize = std::env::var("RAMPART_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let batch = 2000;
    let nats = NatsServer::start();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut publishers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let p = event_publisher(&nats, &format!("gw{}", i + 1), dir.path()).await;
        // Connected and stream ready before the clock starts.
        eventually_async(Duration::from_secs(20), "publisher connected", || async {
            p.connected()
        })
        .await;
        assert_eq!(p.publish(&[event(0)]).await.unwrap().acknowledged, 1);
        publishers.push(Arc::new(p));
    }
    let warmup = 3;
    let per_publisher: Vec<Vec<Event>> = (0..3).map(|_| events(total / 3)).collect();
    let sink = Arc::new(TestSink::default());
    let nats_pid = nats.pid().unwrap();
    let (cpu_test_0, cpu_nats_0) = (cpu_seconds(std::process::id()), cpu_seconds(nats_pid));
    let start = Instant::now();
    let consumer = consumer(&nats, sink.clone()).await;
    let mut tasks = Vec::new();
    for (p, evs) in publishers.iter().zip(per_publisher) {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in evs.chunks(batch) {
                let o = p.publish(chunk).await.unwrap();
                assert_eq!(o.spooled, 0, "NATS up: nothing spooled");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = start.elapsed();
    let expected = total / 3 * 3 + warmup;
    eventually_async(Duration::from_secs(120), "every event consumed", || async {
        sink.distinct() >= expected
    })
    .await;
    let elapsed = start.elapsed();
    let (cpu_test, cpu_nats) = (
        cpu_seconds(std::process::id()) - cpu_test_0,
        cpu_seconds(nats_pid) - cpu_nats_0,
    );
    let total = expected;
    let rate = (total as f64) / elapsed.as_secs_f64();
    println!(
        "events: {total} from 3 publishers (batches of {batch}) in {elapsed:?} end to end ({:.0} events/s; publishing took {published:?}, {:.0} events/s); \
         CPU: publishers+consumer {cpu_test:.2} s ({:.1} µs/event), nats-server {cpu_nats:.2} s ({:.1} µs/event); consumer {:?}",
        rate,
        total as f64 / published.as_secs_f64(),
        cpu_test * 1e6 / total as f64,
        cpu_nats * 1e6 / total as f64,
        consumer.stats(),
    );
    // A floor that catches a collapse even in a debug build on a busy machine;
    // the figures come from `--release` runs (see the report in bench/).
    assert!(rate > 1_000.0, "throughput collapsed: {rate:.0} events/s");
}
