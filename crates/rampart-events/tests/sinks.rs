//! Sinks against real loopback receivers: a TCP syslog listener (plain and TLS),
//! a small HTTP collector that is down and then comes back, and files.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_events::config::{SinkConfig, SinkKind, SyslogFormat};
use rampart_events::{EventsConfig, Pipeline};

fn sink(kind: SinkKind, name: &str) -> SinkConfig {
    let text = format!(
        "type = \"{}\"\nname = \"{name}\"\n",
        format!("{kind:?}").to_lowercase()
    );
    let mut c: SinkConfig = toml::from_str(&text).unwrap();
    c.retry_initial = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(400);
    c
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn send_events(dir: &Path, config: &EventsConfig, n: u64) -> (Pipeline, HashSet<String>) {
    let (pipeline, sender) = Pipeline::start(dir, config).unwrap();
    let now = rampart_events::now_ms();
    let mut ids = HashSet::new();
    for i in 0..n {
        // Half in the flow form the gateway sends: sinks get the same OCSF JSON.
        if i % 2 == 0 {
            let f = common::http_flow(i, now + i as i64);
            ids.insert(f.id.to_string());
            sender.send_flow(f);
        } else {
            let e = common::http(i, now + i as i64);
            ids.insert(e.id().to_string());
            sender.send(e);
        }
    }
    assert!(pipeline.wait_stored(n, Duration::from_secs(20)));
    (pipeline, ids)
}

/// Read RFC 6587 octet-counted frames until the peer closes.
fn read_frames(stream: impl Read, out: Arc<Mutex<Vec<String>>>) {
    let mut r = BufReader::new(stream);
    loop {
        let mut len = Vec::new();
        if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
            return;
        }
        let Ok(n) = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap_or("x")
            .parse::<usize>()
        else {
            return;
        };
        let mut msg = vec![0u8; n];
        if r.read_exact(&mut msg).is_err() {
            return;
        }
        out.lock().unwrap().push(String::from_utf8(msg).unwrap());
    }
}

fn id_of_json_message(m: &str) -> String {
    let json = m.split_once(" - ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["metadata"]["uid"].as_str().unwrap().to_string()
}

#[test]
fn syslog_over_tcp_delivers_json_and_cef_frames() {
    for format in [SyslogFormat::Json, SyslogFormat::Cef] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let g = g.clone();
                std::thread::spawn(move || read_frames(s, g));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(SinkKind::Syslog, "siem");
        s.address = Some(addr.to_string());
        s.format = format;
        let config = EventsConfig {
            sinks: vec![s],
            ..Default::default()
        };
        let (pipeline, ids) = send_events(dir.path(), &config, 200);
        assert!(wait_until(Duration::from_secs(10), || got
            .lock()
            .unwrap()
            .len()
            >= 200));
        pipeline.close();
        let msgs = got.lock().unwrap().clone();
        assert!(
            msgs.iter()
                .all(|m| m.starts_with("<134>1 ") || m.starts_with("<132>1 ")),
            "{}",
            msgs[0]
        );
        match format {
            SyslogFormat::Json => {
                let seen: HashSet<String> = msgs.iter().map(|m| id_of_json_message(m)).collect();
                assert_eq!(seen, ids);
            }
            SyslogFormat::Cef => {
                assert!(msgs.iter().all(|m| m.contains(" - CEF:0|Rampart|Rampart|")));
                let seen: HashSet<String> = msgs
                    .iter()
                    .map(|m| {
                        m.split("externalId=")
                            .nth(1)
                            .unwrap()
                            .split(' ')
                            .next()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                assert_eq!(seen, ids);
            }
        }
    }
}

#[test]
fn syslog_over_tls_verifies_the_collector_and_delivers() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("collector.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let server_config = collector_tls(&cert);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
            let g = g.clone();
            std::thread::spawn(move || read_frames(rustls::StreamOwned::new(conn, tcp), g));
        }
    });
    let mut s = sink(SinkKind::Syslog, "siem-tls");
    s.address = Some(addr.to_string());
    s.tls = true;
    s.server_name = Some("localhost".into());
    s.ca_file = Some(ca);
    let config = EventsConfig {
        sinks: vec![s],
        ..Default::default()
    };
    let (pipeline, ids) = send_events(dir.path(), &config, 100);
    assert!(wait_until(Duration::from_secs(10), || got
        .lock()
        .unwrap()
        .len()
        >= 100));
    let seen: HashSet<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|m| id_of_json_message(m))
        .collect();
    assert_eq!(seen, ids);
    pipeline.close();
}

#[test]
fn syslog_over_tls_refuses_an_untrusted_collector() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let server_config = collector_tls(&cert);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(SinkKind::Syslog, "untrusted");
    s.address = Some(addr.to_string());
    s.tls = true;
    s.server_name = Some("localhost".into());
    let config = EventsConfig {
        sinks: vec![s],
        ..Default::default()
    };
    let (pipeline, _) = send_events(dir.path(), &config, 5);
    let stats = pipeline.sink_stats()[0].1.clone();
    assert!(wait_until(Duration::from_secs(10), || stats
        .failures
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0));
    assert_eq!(
        stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let err = stats.last_error.lock().unwrap().clone().unwrap();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    pipeline.close();
}

/// A minimal HEC collector: records event ids from each POST, answers 200.
fn hec_collector(listener: TcpListener, token: &'static str, got: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = line.split_once(':').unwrap().1.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            if auth != format!("Splunk {token}") {
                let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
            for item in serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>()
            {
                let item = item.unwrap();
                assert_eq!(item["sourcetype"], "ocsf");
                got.lock().unwrap().push(
                    item["event"]["metadata"]["uid"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"text\":\"Success\",\"code\":0}");
        }
    });
}

#[test]
fn hec_events_spool_while_the_collector_is_down_and_arrive_after_it_returns() {
    // Reserve a port, then free it: the collector is "down" until we bind it again.
    let port = rampart_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(SinkKind::Hec, "splunk");
    s.url = Some(format!("http://127.0.0.1:{port}/services/collector/event"));
    s.token = Some("hec-token".into());
    s.batch_size = 100;
    let config = EventsConfig {
        sinks: vec![s],
        ..Default::default()
    };
    let (pipeline, ids) = send_events(dir.path(), &config, 1000);
    let stats = pipeline.sink_stats()[0].1.clone();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(wait_until(Duration::from_secs(5), || stats
        .failures
        .load(Relaxed)
        >= 2));
    assert_eq!(stats.delivered.load(Relaxed), 0);
    assert!(
        stats.pending_bytes.load(Relaxed) > 0,
        "events wait in the spool"
    );

    let got = Arc::new(Mutex::new(Vec::new()));
    hec_collector(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        "hec-token",
        got.clone(),
    );
    assert!(wait_until(Duration::from_secs(20), || stats
        .delivered
        .load(Relaxed)
        >= 1000));
    let received = got.lock().unwrap().clone();
    let unique: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(unique, ids, "none missing");
    assert_eq!(
        received.len(),
        1000,
        "no duplicates when every delivery was acknowledged"
    );
    pipeline.close();
}

#[test]
fn undelivered_sink_events_survive_a_restart() {
    let port = rampart_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(SinkKind::Hec, "later");
    s.url = Some(format!("http://127.0.0.1:{port}/services/collector/event"));
    s.token = Some("t0k3n".into());
    let config = EventsConfig {
        sinks: vec![s],
        ..Default::default()
    };
    let (pipeline, ids) = send_events(dir.path(), &config, 300);
    pipeline.close(); // collector never came up in this run

    let got = Arc::new(Mutex::new(Vec::new()));
    hec_collector(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        "t0k3n",
        got.clone(),
    );
    let (pipeline, _) = Pipeline::start(dir.path(), &config).unwrap();
    assert!(wait_until(Duration::from_secs(20), || got
        .lock()
        .unwrap()
        .len()
        >= 300));
    let unique: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
    assert_eq!(unique, ids);
    pipeline.close();
}

#[test]
fn file_sinks_write_ndjson_and_squid_lines_with_a_query_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut nd = sink(SinkKind::File, "ndjson");
    nd.path = Some(dir.path().join("out/events.ndjson"));
    nd.query = "action = block".into();
    let mut sq = sink(SinkKind::Squid, "squid");
    sq.path = Some(dir.path().join("out/access.log"));
    let config = EventsConfig {
        sinks: vec![nd, sq],
        ..Default::default()
    };
    let (pipeline, _) = send_events(dir.path(), &config, 100);
    let squid_path = dir.path().join("out/access.log");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&squid_path)
            .map(|s| s.lines().count() == 100)
            .unwrap_or(false)
    }));
    pipeline.close();
    let nd = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    let blocked: Vec<serde_json::Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(blocked.len(), 10, "only blocks (every 10th event)");
    assert!(blocked.iter().all(|e| e["disposition_id"] == 2));
    let squid = std::fs::read_to_string(&squid_path).unwrap();
    let denied = squid
        .lines()
        .filter(|l| l.contains(" TCP_DENIED/403 "))
        .count();
    assert_eq!(denied, 10);
    let first = squid.lines().next().unwrap();
    let cols: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(cols.len(), 10, "{first}");
    assert_eq!(cols[2], "10.0.0.9");
    assert_eq!(cols[5], "GET");
}

/// Events sent now, in the flow form the gateway uses; returns their ids.
fn send_flows(sender: &rampart_events::EventSender, from: u64, n: u64) -> HashSet<String> {
    let now = rampart_events::now_ms();
    (from..from + n)
        .map(|i| {
            let f = common::http_flow(i, now + i as i64);
            let id = f.id.to_string();
            sender.send_flow(f);
            id
        })
        .collect()
}

fn ndjson_ids(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["metadata"]["uid"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn sinks_added_changed_and_removed_while_running_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, sender) = Pipeline::start(dir.path(), &EventsConfig::default()).unwrap();
    send_flows(&sender, 0, 50);
    assert!(pipeline.wait_stored(50, Duration::from_secs(20)));

    // Added: every event from then on reaches it.
    let first = dir.path().join("out/first.ndjson");
    let mut a = sink(SinkKind::File, "audit");
    a.path = Some(first.clone());
    let changes = pipeline.sinks().reconfigure(&[a.clone()]).unwrap();
    assert_eq!(changes.added, vec!["audit".to_string()]);
    let batch1 = send_flows(&sender, 100, 200);
    assert!(wait_until(Duration::from_secs(10), || ndjson_ids(&first) == batch1));

    // A broken sink refuses the whole change; the running one keeps delivering.
    let mut broken = sink(SinkKind::Syslog, "broken");
    broken.address = None;
    assert!(pipeline.sinks().reconfigure(&[a.clone(), broken]).is_err());
    assert_eq!(pipeline.sink_stats().len(), 1);

    // Changed (new file): what it has not delivered yet, and everything after,
    // goes to the new destination; unchanged configuration is a no-op.
    let second = dir.path().join("out/second.ndjson");
    let mut b = a.clone();
    b.path = Some(second.clone());
    assert!(pipeline
        .sinks()
        .reconfigure(&[a.clone()])
        .unwrap()
        .is_empty());
    let batch2 = send_flows(&sender, 1000, 300);
    let changes = pipeline.sinks().reconfigure(&[b]).unwrap();
    assert_eq!(changes.changed, vec!["audit".to_string()]);
    let batch3 = send_flows(&sender, 2000, 100);
    let mut after_first: HashSet<String> = batch2.union(&batch3).cloned().collect();
    assert!(wait_until(Duration::from_secs(10), || {
        let delivered: HashSet<String> = ndjson_ids(&first)
            .union(&ndjson_ids(&second))
            .cloned()
            .collect();
        after_first.iter().all(|id| delivered.contains(id))
    }));
    assert!(ndjson_ids(&second).is_superset(&batch3));

    // Removed: nothing more is written to it.
    let changes = pipeline.sinks().reconfigure(&[]).unwrap();
    assert_eq!(changes.removed, vec!["audit".to_string()]);
    let written = ndjson_ids(&second).len();
    after_first = send_flows(&sender, 5000, 50);
    assert!(pipeline.wait_stored(50 + 200 + 300 + 100 + 50, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ndjson_ids(&second).len(), written);
    assert!(ndjson_ids(&second).is_disjoint(&after_first));
    pipeline.close();
}

/// A TLS collector's server configuration with `cert` (self-signed).
fn collector_tls(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                    .unwrap(),
            )
            .unwrap(),
    )
}
