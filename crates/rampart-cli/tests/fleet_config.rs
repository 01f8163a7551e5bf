//! A fleet through a real `nats-server -js`: a server publishes its
//! configuration revision, two `rampart gateway` processes apply it and
//! enforce its policy, a policy change on the server reaches both, and a
//! revision a gateway cannot apply is rejected while the previous one keeps
//! enforcing (issue 20, items 1, 2 and 5).

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use rampart_testkit::nats::NatsServer;
use support::origin::Origin;
use support::{curl_status, eventually, Rampart};

const SHARED: &str = "[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"news.test\" = \"127.0.0.1\"\n\"video.test\" = \"127.0.0.1\"\n";

fn block(hosts: &[&str]) -> String {
    hosts
        .iter()
        .map(|h| {
            format!(
                "[[access]]\nid = \"no-{h}\"\nwhen = {{ hosts = [\"{h}\"] }}\naction = \"block\"\n"
            )
        })
        .collect()
}

fn gateway(nats: &NatsServer, id: &str, server: &Rampart) -> Rampart {
    Rampart::start_fleet_gateway(&nats.url(), id, &server.data_dir())
}

fn status_of(gw: &Rampart, url: &str) -> u16 {
    curl_status(&gw.proxy_url(), url, &["--max-time", "10"])
}

/// `rampart fleet status --format json`: (exit code, one object per gateway).
fn fleet_status(nats: &NatsServer) -> (i32, Vec<serde_json::Value>) {
    let out = support::run(std::process::Command::new(support::rampart_bin()).args([
        "fleet",
        "status",
        "--nats",
        &nats.url(),
        "--format",
        "json",
    ]));
    let entries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap_or(-1), entries)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn gateways_apply_the_servers_revisions_and_keep_the_last_good_one() {
    let nats = NatsServer::start();
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let shared = dir.path().join("gateway.toml");
    write(&policy, &block(&["news.test"]));
    write(&shared, SHARED);
    let server = Rampart::start(&format!(
        "policy = {:?}\n[fleet]\nnats = \"{}\"\ngateway_config = {:?}\n",
        policy.display().to_string(),
        nats.url(),
        shared.display().to_string()
    ));
    let gateways = [
        gateway(&nats, "gw-1", &server),
        gateway(&nats, "gw-2", &server),
    ];
    let news = format!("http://news.test:{}/hello", origin.addr.port());
    let video = format!("http://video.test:{}/hello", origin.addr.port());

    // The first revision: the server's policy and the shared file, enforced by each.
    for gw in &gateways {
        assert_eq!(status_of(gw, &news), 403, "{}", gw.stderr());
        assert_eq!(status_of(gw, &video), 200, "{}", gw.stderr());
    }

    // `rampart fleet status` lists both, serving the same revision.
    let (code, entries) = fleet_status(&nats);
    assert_eq!(code, 0, "{entries:?}");
    let ids: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["gateway_id"].as_str())
        .collect();
    assert_eq!(ids, ["gw-1", "gw-2"]);
    assert!(entries
        .iter()
        .all(|e| e["state"] == "applied" && e["health"] == "up"));
    assert_eq!(entries[0]["revision"], entries[1]["revision"]);
    assert!(entries[0]["revision"].is_string());

    // A policy change on the server reaches every gateway.
    write(&policy, &block(&["news.test", "video.test"]));
    for gw in &gateways {
        assert!(
            eventually(Duration::from_secs(30), || status_of(gw, &video) == 403),
            "the new revision was not applied:\n{}\n--- server:\n{}",
            gw.stderr(),
            server.stderr()
        );
    }

    // A shared file the gateways cannot apply (an unknown key): each rejects
    // it, says why, and keeps enforcing the revision it has.
    write(&shared, &format!("{SHARED}[limits]\nno_such_key = true\n"));
    server.signal(Signal::SIGHUP);
    for gw in &gateways {
        assert!(
            eventually(Duration::from_secs(30), || gw
                .stderr()
                .contains("no_such_key")),
            "the gateway did not report the rejected revision:\n{}\n--- server:\n{}",
            gw.stderr(),
            server.stderr()
        );
        assert_eq!(status_of(gw, &video), 403);
        assert_eq!(status_of(gw, &news), 403);
    }

    // The fleet status names the rejection and fails for scripts.
    assert!(
        eventually(Duration::from_secs(20), || {
            let (code, entries) = fleet_status(&nats);
            code == 2
                && entries.len() == 2
                && entries.iter().all(|e| {
                    e["state"] == "rejected"
                        && e["error"]
                            .as_str()
                            .is_some_and(|m| m.contains("no_such_key"))
                })
        }),
        "{:?}",
        fleet_status(&nats)
    );

    // A good revision after the bad one applies again.
    write(&shared, SHARED);
    write(&policy, &block(&["news.test"]));
    server.signal(Signal::SIGHUP);
    for gw in &gateways {
        assert!(
            eventually(Duration::from_secs(30), || status_of(gw, &video) == 200),
            "{}",
            gw.stderr()
        );
        assert_eq!(status_of(gw, &news), 403);
    }
}

#[test]
fn a_gateway_waits_for_the_fleets_configuration_before_it_serves() {
    // NATS up but no server has published: the gateway must not serve on its
    // own file (its policy would be the built-in default) and is not ready.
    let nats = NatsServer::start();
    let ca = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::rampart_bin())
        .args(["ca", "init", "--data-dir"])
        .arg(ca.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca_dir = ca.path().to_path_buf();
    let err = match Rampart::try_start_gateway_role(
        &format!(
            "[fleet]\nnats = \"{}\"\ngateway_id = \"lonely\"\n",
            nats.url()
        ),
        move |command| {
            let data = support::data_dir_of(command);
            std::fs::create_dir_all(&data).unwrap();
            for f in ["ca.pem", "ca.key"] {
                std::fs::copy(ca_dir.join(f), data.join(f)).unwrap();
            }
        },
    ) {
        Ok(gw) => panic!(
            "the gateway became ready without a revision:\n{}",
            gw.stderr()
        ),
        Err(log) => log,
    };
    assert!(
        err.contains("waiting for the fleet's first configuration revision"),
        "{err}"
    );
}
