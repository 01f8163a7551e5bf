//! Events of a fleet: a `rampart gateway` publishes what it logs to NATS
//! JetStream, the server consumes it into a real PostgreSQL, and
//! `rampart events search --fleet-store` finds it; with NATS stopped the
//! gateway keeps serving and spools, and after NATS returns every event
//! arrives exactly once (issue 20, items 3 and 5).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rampart_testkit::nats::NatsServer;
use support::origin::Origin;
use support::{curl_status, eventually, rampart_bin, run, Rampart};

const SHARED: &str = "[proxy]\nallow_loopback_destinations = true\n";

/// `rampart events search --fleet-store URL QUERY --format json`, one object per event.
fn fleet_search(store: &str, query: &str) -> Vec<serde_json::Value> {
    let out = run(std::process::Command::new(rampart_bin()).args([
        "events",
        "search",
        "--fleet-store",
        store,
        "--limit",
        "10000",
        "--format",
        "json",
        query,
    ]));
    assert!(
        out.status.success(),
        "events search --fleet-store failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn paths_with(events: &[serde_json::Value], marker: &str) -> Vec<String> {
    events
        .iter()
        .map(|e| e.to_string())
        .filter(|s| s.contains(marker))
        .collect()
}

#[test]
fn gateway_events_reach_postgres_once_even_across_a_nats_outage() {
    let mut nats = NatsServer::start();
    let pg = rampart_testkit::postgres::Postgres::start(rampart_testkit::postgres::Mode::Fast);
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("gateway.toml");
    std::fs::write(&shared, SHARED).unwrap();
    let server = Rampart::start(&format!(
        "[fleet]\nnats = \"{}\"\ngateway_config = {:?}\npostgres = \"{}\"\n",
        nats.url(),
        shared.display().to_string(),
        pg.url()
    ));
    let gw = Rampart::start_fleet_gateway(&nats.url(), "gw-a", &server.data_dir());
    let other = Rampart::start_fleet_gateway(&nats.url(), "gw-b", &server.data_dir());

    // Through each gateway: one search of the fleet store finds both.
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?via-a"), &[]),
        200
    );
    assert_eq!(
        curl_status(&other.proxy_url(), &origin.url("/hello?via-b"), &[]),
        200
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            let all = fleet_search(&pg.url(), "");
            !paths_with(&all, "via-a").is_empty() && !paths_with(&all, "via-b").is_empty()
        }),
        "the events never reached PostgreSQL\n--- gateway:\n{}\n--- server:\n{}",
        gw.stderr(),
        server.stderr()
    );

    // NATS down: the gateway serves on its last configuration and spools.
    nats.stop();
    for i in 0..20 {
        assert_eq!(
            curl_status(
                &gw.proxy_url(),
                &origin.url(&format!("/hello?outage-{i}")),
                &[]
            ),
            200,
            "the gateway stopped serving while NATS was down"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    nats.restart();
    let expected: HashSet<String> = (0..20).map(|i| format!("outage-{i}")).collect();
    let mut found = Vec::new();
    let arrived = eventually(Duration::from_secs(30), || {
        found = fleet_search(&pg.url(), "");
        expected
            .iter()
            .all(|m| !paths_with(&found, &format!("{m}\"")).is_empty())
    });
    assert!(
        arrived,
        "after NATS returned not every spooled event arrived\n--- gateway:\n{}\n--- server:\n{}",
        gw.stderr(),
        server.stderr()
    );
    // Exactly once: one document per event id.
    let ids: Vec<String> = found
        .iter()
        .filter(|e| e.to_string().contains("?outage-"))
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_eq!(unique.len(), 20);

    // `events tail --fleet-store` follows what arrives from then on.
    let tail = std::process::Command::new(rampart_bin())
        .args([
            "events",
            "tail",
            "--fleet-store",
            &pg.url(),
            "--last",
            "0",
            "--count",
            "1",
            "--format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        curl_status(&other.proxy_url(), &origin.url("/hello?tailed"), &[]),
        200
    );
    let out = tail.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("tailed"), "{text}");
}
