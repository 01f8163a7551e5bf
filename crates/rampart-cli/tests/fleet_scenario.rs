//! The fleet with every part at once (issue 20): a real `nats-server -js`, a
//! real PostgreSQL, a `rampart server` and `rampart gateway` processes behind
//! a real HAProxy (PROXY protocol v2), with curl as the client.
//!
//! - Intercepted HTTPS through HAProxy reaches every gateway; a policy change
//!   on the server is enforced by each; every gateway's events are found in the
//!   fleet store, stamped with the gateway's id and the client's address; an
//!   agent enrolled on the server tunnels to any gateway until it is revoked;
//!   a coaching link shown by one gateway is honoured by another; a gateway
//!   killed with `kill -9` is routed around.
//! - PostgreSQL down: events wait and all arrive once it is back; a gateway
//!   restarted while NATS is down serves its last good revision, then follows
//!   the next one when NATS returns.
//! - A gateway killed between its local commit and the publish sends those
//!   events after its restart.

#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rampart_testkit::nats::NatsServer;
use rampart_testkit::postgres::{Mode, Postgres};
use support::origin::Origin;
use support::tls_origin::TlsOrigin;
use support::{curl, curl_status, eventually, rampart_bin, run, Rampart};

const COACH_VIDEO: &str = "[[access]]\nid = \"coach-video\"\nname = \"video needs a reason\"\n\
     when = { hosts = [\"video.test\"] }\naction = \"user-alert\"\n";
const BLOCK_NEWS: &str =
    "[[access]]\nid = \"no-news\"\nwhen = { hosts = [\"news.test\"] }\naction = \"block\"\n";

/// The file every gateway shares (`[fleet] gateway_config`): loopback origins
/// under test names, the TLS origin's CA trusted.
fn shared_config(tls_origin: Option<&TlsOrigin>) -> String {
    let mut text = String::from(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\n",
    );
    if let Some(o) = tls_origin {
        text.push_str(&format!(
            "tls_ports = [443, {}]\n[tls]\nsystem_roots = false\nextra_roots = [{:?}]\n",
            o.port,
            o.ca_pem.display().to_string()
        ));
    }
    text.push_str(
        "[resolve]\n\"origin.test\" = \"127.0.0.1\"\n\"news.test\" = \"127.0.0.1\"\n\"video.test\" = \"127.0.0.1\"\n",
    );
    text
}

/// A fleet server publishing `policy` and `shared` to `nats`, consuming events into `pg`.
fn server(nats: &NatsServer, pg: &Postgres, policy: &Path, shared: &Path) -> Rampart {
    Rampart::start(&format!(
        "policy = {:?}\n[fleet]\nnats = \"{}\"\ngateway_config = {:?}\npostgres = \"{}\"\n",
        policy.display().to_string(),
        nats.url(),
        shared.display().to_string(),
        pg.url()
    ))
}

fn admin_token(server: &Rampart) -> String {
    std::fs::read_to_string(server.data_dir().join("admin.token"))
        .expect("the server's admin token")
        .trim()
        .to_string()
}

/// The proceed link of a coaching page's text body.
fn proceed_link(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("Proceed: "))
        .unwrap_or_else(|| panic!("no proceed link in {body}"))
        .to_string()
}

/// Event ids (`metadata.uid`) by URL marker; panics on an id seen twice.
fn ids_by_marker(events: &[serde_json::Value], prefix: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_marker: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let url = e["http_request"]["url"]["url_string"]
            .as_str()
            .unwrap_or_default();
        let Some(at) = url.find(prefix) else { continue };
        let marker = url[at..].to_string();
        by_marker.entry(marker).or_default().push(
            e["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    by_marker
}

/// Waits until every marker `prefix0..prefixN` is in the fleet store, then
/// checks that each is there exactly once (one event, one id).
fn assert_arrived_once(
    pg: &Postgres,
    prefix: &str,
    markers: &[String],
    context: &dyn Fn() -> String,
) {
    let mut found = BTreeMap::new();
    let arrived = eventually(Duration::from_secs(40), || {
        found = ids_by_marker(&fleet::fleet_events_with(&pg.url(), prefix), prefix);
        markers.iter().all(|m| found.contains_key(m))
    });
    let missing: Vec<&String> = markers.iter().filter(|m| !found.contains_key(*m)).collect();
    assert!(
        arrived,
        "events never reached PostgreSQL: {missing:?}\n{}",
        context()
    );
    let ids: Vec<&String> = found.values().flatten().collect();
    let unique: HashSet<&&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an event was stored twice: {found:?}"
    );
    for m in markers {
        assert_eq!(found[m].len(), 1, "{m} stored {} times", found[m].len());
    }
}

#[test]
fn three_gateways_behind_haproxy_follow_the_server_share_revocations_and_coaching_and_survive_a_kill(
) {
    let t0 = Instant::now();
    let nats = NatsServer::start();
    let pg = Postgres::start(Mode::Fast);
    let origin = Origin::start();
    let tls_origin = TlsOrigin::start("origin.test");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let shared = dir.path().join("gateway.toml");
    std::fs::write(&policy, COACH_VIDEO).unwrap();
    std::fs::write(&shared, shared_config(Some(&tls_origin))).unwrap();
    let server = server(&nats, &pg, &policy, &shared);
    let mut gws = vec![
        fleet::gateway(&nats.url(), "gw-1", &server.data_dir()),
        fleet::gateway(&nats.url(), "gw-2", &server.data_dir()),
        fleet::gateway(&nats.url(), "gw-3", &server.data_dir()),
    ];
    let haproxy = fleet::Haproxy::start(&[&gws[0], &gws[1], &gws[2]]);
    let logs = |gws: &[Rampart]| {
        gws.iter()
            .map(|g| g.stderr())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    println!("fleet up after {:?}", t0.elapsed());

    // Intercepted HTTPS through HAProxy, signed by the fleet's CA (curl trusts
    // only that one), spread over the three gateways.
    let fleet_ca = server.data_dir().join("ca.pem");
    for i in 0..9 {
        let url = format!("https://origin.test:{}/?https-{i}", tls_origin.port);
        let (code, status, stderr) = curl(
            &haproxy.proxy_url(),
            &[
                "--cacert",
                fleet_ca.to_str().unwrap(),
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        );
        assert_eq!(
            (code, status.as_str()),
            (0, "200"),
            "{url}: {stderr}\n{}",
            logs(&gws)
        );
    }
    for gw in &gws {
        let served = gw
            .access_log()
            .iter()
            .filter(|r| r.to_string().contains("?https-"))
            .count();
        assert!(
            served > 0,
            "a gateway served none of the requests:\n{}",
            gw.stderr()
        );
    }

    // Every gateway's events reach the fleet store, stamped with its id and
    // with the client's address (from the PROXY header), not HAProxy's.
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let all_three = eventually(Duration::from_secs(30), || {
        seen = fleet::fleet_events_with(&pg.url(), "?https-");
        let gateways: HashSet<&str> = seen
            .iter()
            .filter_map(|e| e["unmapped"]["gateway"].as_str())
            .collect();
        gateways.len() == 3 && ids_by_marker(&seen, "?https-").len() == 9
    });
    assert!(
        all_three,
        "events of every gateway in PostgreSQL: {seen:?}\n{}",
        server.stderr()
    );
    for e in &seen {
        assert_eq!(e["src_endpoint"]["ip"], "127.0.0.1", "{e}");
    }
    assert_eq!(ids_by_marker(&seen, "?https-").len(), 9, "{seen:?}");

    // A policy change on the server: applied and enforced by each gateway.
    let news = format!("http://news.test:{}/hello", origin.port());
    for gw in &gws {
        assert_eq!(
            curl_status(&gw.proxy_url(), &news, &["--max-time", "10"]),
            200
        );
    }
    let changed = Instant::now();
    std::fs::write(&policy, format!("{COACH_VIDEO}{BLOCK_NEWS}")).unwrap();
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(20), || curl_status(
                &gw.proxy_url(),
                &news,
                &["--max-time", "10"]
            ) == 403),
            "the new revision was not enforced:\n{}\n--- server:\n{}",
            gw.stderr(),
            server.stderr()
        );
    }
    println!(
        "policy change enforced by 3 gateways after {:?}",
        changed.elapsed()
    );
    let (code, entries) = fleet::fleet_status(&nats.url());
    assert_eq!(code, 0, "{entries:?}");
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["state"] == "applied" && e["revision"] == entries[0]["revision"]),
        "{entries:?}"
    );

    // An agent enrolled on the server tunnels to any gateway...
    let device = fleet::Device::enroll(&server, "alice");
    for gw in &gws {
        assert_eq!(
            device.probe_tunnel(fleet::tunnel_addr(gw)),
            Ok(405),
            "the gateway refused a device the server enrolled:\n{}",
            gw.stderr()
        );
    }
    // ...until the server revokes it: every gateway then refuses it in the
    // handshake (`certificate_revoked`).
    let revoked_at = Instant::now();
    let out = run(Command::new(rampart_bin()).args([
        "device",
        "revoke",
        &device.id,
        "--server",
        &format!("http://{}", server.api),
        "--token",
        &admin_token(&server),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for gw in &gws {
        let tunnel = fleet::tunnel_addr(gw);
        let mut last = Ok(0);
        let refused = eventually(Duration::from_secs(15), || {
            last = device.probe_tunnel(tunnel);
            last.as_ref().is_err_and(|e| e.contains("revoked"))
        });
        assert!(
            refused,
            "still admitted after the revocation: {last:?}\n{}",
            gw.stderr()
        );
    }
    println!(
        "revocation enforced by 3 gateways after {:?}",
        revoked_at.elapsed()
    );

    // A coaching page shown by gw-1; its proceed link followed through gw-2.
    let video = format!("http://video.test:{}/hello", origin.port());
    let (_, body, _) = curl(&gws[0].proxy_url(), &["-w", "\n%{http_code}", &video]);
    assert!(
        body.ends_with("403") && body.contains("video needs a reason"),
        "{body}"
    );
    let link = proceed_link(&body);
    let (_, body, _) = curl(&gws[1].proxy_url(), &["-L", "--max-time", "10", &link]);
    assert_eq!(
        body, "hello from origin",
        "gw-2 refused gw-1's proceed link"
    );

    // gw-3 killed: HAProxy takes it out, and every request after the health
    // check interval succeeds on the others.
    let killed = Instant::now();
    fleet::kill9(&mut gws[2]);
    assert!(
        eventually(Duration::from_secs(5), || haproxy.server_status("gw2")
            == "DOWN"),
        "HAProxy did not mark the killed gateway down:\n{}",
        haproxy.log()
    );
    println!("killed gateway marked down after {:?}", killed.elapsed());
    for i in 0..12 {
        let url = origin.url(&format!("/hello?after-kill-{i}"));
        assert_eq!(
            curl_status(&haproxy.proxy_url(), &url, &["--max-time", "10"]),
            200,
            "{url} failed after the killed gateway was taken out"
        );
    }
    println!("scenario took {:?}", t0.elapsed());
}

#[test]
fn events_survive_a_postgres_outage_and_a_gateway_restarts_without_nats_on_its_last_revision() {
    let mut nats = NatsServer::start();
    let mut pg = Postgres::start(Mode::Fast);
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let shared = dir.path().join("gateway.toml");
    std::fs::write(&policy, BLOCK_NEWS).unwrap();
    std::fs::write(&shared, shared_config(None)).unwrap();
    let server = server(&nats, &pg, &policy, &shared);
    let mut gws = [
        fleet::gateway(&nats.url(), "gw-a", &server.data_dir()),
        fleet::gateway(&nats.url(), "gw-b", &server.data_dir()),
    ];
    let context = || format!("--- server:\n{}", server.stderr());

    // PostgreSQL down while both gateways serve: the events wait in JetStream.
    pg.stop();
    let mut markers = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for i in 0..10 {
            let marker = format!("pg-down-{g}-{i}");
            let url = origin.url(&format!("/hello?{marker}"));
            assert_eq!(
                curl_status(&gw.proxy_url(), &url, &["--max-time", "10"]),
                200
            );
            markers.push(format!("?{marker}"));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    assert_arrived_once(&pg, "?pg-down-", &markers, &context);

    // NATS down, gw-a restarted: it starts from its last good revision on
    // disk and enforces it.
    let news = format!("http://news.test:{}/hello", origin.port());
    let video = format!("http://video.test:{}/hello", origin.port());
    nats.stop();
    fleet::restart(&mut gws[0]);
    assert_eq!(
        curl_status(&gws[0].proxy_url(), &news, &["--max-time", "10"]),
        403
    );
    assert_eq!(
        curl_status(&gws[0].proxy_url(), &video, &["--max-time", "10"]),
        200
    );
    let mut markers = Vec::new();
    for i in 0..5 {
        let marker = format!("nats-down-{i}");
        let url = origin.url(&format!("/hello?{marker}"));
        assert_eq!(
            curl_status(&gws[0].proxy_url(), &url, &["--max-time", "10"]),
            200
        );
        markers.push(format!("?{marker}"));
    }
    // A new revision made while NATS is down reaches it once NATS is back.
    std::fs::write(
        &policy,
        format!("{BLOCK_NEWS}[[access]]\nid = \"no-video\"\nwhen = {{ hosts = [\"video.test\"] }}\naction = \"block\"\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    nats.restart();
    assert!(
        eventually(Duration::from_secs(30), || curl_status(
            &gws[0].proxy_url(),
            &video,
            &["--max-time", "10"]
        ) == 403),
        "the restarted gateway did not follow the next revision:\n{}\n{}",
        gws[0].stderr(),
        context()
    );
    // What it logged while NATS was down arrives, once each.
    assert_arrived_once(&pg, "?nats-down-", &markers, &context);
}

#[test]
fn events_committed_locally_but_not_published_when_a_gateway_is_killed_are_sent_after_its_restart()
{
    let nats = NatsServer::start();
    let pg = Postgres::start(Mode::Fast);
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let shared = dir.path().join("gateway.toml");
    std::fs::write(&policy, BLOCK_NEWS).unwrap();
    std::fs::write(&shared, shared_config(None)).unwrap();
    let server = server(&nats, &pg, &policy, &shared);
    let mut gw = fleet::gateway(&nats.url(), "gw-crash", &server.data_dir());
    let context = || format!("--- server:\n{}", server.stderr());

    // One event through first: the stream exists and the gateway's spool is
    // empty, so its next publish goes straight to NATS.
    let warm = origin.url("/hello?crash-warm");
    assert_eq!(
        curl_status(&gw.proxy_url(), &warm, &["--max-time", "10"]),
        200
    );
    assert_arrived_once(&pg, "?crash-warm", &["?crash-warm".to_string()], &context);

    // NATS frozen (SIGSTOP): the gateway's next publish waits for its
    // acknowledgement (up to 5 s before it would spool), so the events
    // committed meanwhile are in its local store and nowhere else.
    let nats_pid = Pid::from_raw(nats.pid().expect("nats-server runs") as i32);
    kill(nats_pid, Signal::SIGSTOP).unwrap();
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let resume = Resume(nats_pid);
    let mut markers = Vec::new();
    for i in 0..5 {
        let marker = format!("crash-{i}");
        let url = origin.url(&format!("/hello?{marker}"));
        assert_eq!(
            curl_status(&gw.proxy_url(), &url, &["--max-time", "10"]),
            200
        );
        markers.push(format!("?{marker}"));
    }
    // Committed by the local store...
    let local = || {
        let text = support::events_search(&gw.data_dir(), &["--limit", "1000", "--format", "json"])
            .iter()
            .map(|e| e.to_string())
            .collect::<String>();
        markers
            .iter()
            .filter(|m| text.contains(&format!("{m}\"")))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(2), || local() == 5),
        "the local store did not commit the events:\n{}",
        gw.stderr()
    );
    // ...and the gateway killed before any could be acknowledged or spooled.
    fleet::kill9(&mut gw);
    // The window is real: not every one of them was spooled (nor acknowledged:
    // NATS is frozen) when the gateway died.
    let spool = gw.data_dir().join("spool").join("nats-events");
    let spooled_text: String = std::fs::read_dir(&spool)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|f| {
                    String::from_utf8_lossy(&std::fs::read(f.path()).unwrap_or_default())
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    let spooled = markers
        .iter()
        .filter(|m| spooled_text.contains(m.as_str()))
        .count();
    assert!(
        spooled < markers.len(),
        "every event reached the spool: the crash window was missed"
    );
    drop(resume);

    // Restarted: it resumes from its publish cursor and sends them, once each.
    fleet::restart(&mut gw);
    assert_arrived_once(&pg, "?crash-", &markers, &|| {
        format!("{}\n--- gateway:\n{}", context(), gw.stderr())
    });
}
