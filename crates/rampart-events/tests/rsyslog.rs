//! A real rsyslog (Debian package `rsyslog`, plus `rsyslog-gnutls` for TLS)
//! receives Rampart's syslog sink: CEF and JSON payloads, over TCP and TLS.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_events::config::{SinkConfig, SyslogFormat};
use rampart_events::{EventsConfig, Pipeline};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

struct Rsyslog {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use rampart_testkit::free_port;

fn start_rsyslog(dir: &Path, tls: Option<(&Path, &Path)>) -> Rsyslog {
    assert!(
        Path::new(RSYSLOGD).exists(),
        "{RSYSLOGD} missing: apt-get install rsyslog rsyslog-gnutls"
    );
    let port = free_port();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = dir.join("received.log");
    let (global_tls, module) = match tls {
        Some((cert, key)) => (
            format!(
                "DefaultNetstreamDriverCAFile=\"{c}\" DefaultNetstreamDriverCertFile=\"{c}\" DefaultNetstreamDriverKeyFile=\"{k}\"",
                c = cert.display(),
                k = key.display()
            ),
            "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")".to_string(),
        ),
        None => (String::new(), "module(load=\"imtcp\")".to_string()),
    };
    let conf = format!(
        "global(workDirectory=\"{work}\" maxMessageSize=\"64k\" {global_tls})\n\
         {module}\n\
         input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
         template(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n\
         action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
        work = work.display(),
        out = out.display()
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Rsyslog { child, out, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rsyslogd did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    r
}

fn syslog_sink(port: u16, format: SyslogFormat, tls: Option<&Path>) -> SinkConfig {
    let mut s: SinkConfig =
        toml::from_str("type = \"syslog\"\nname = \"rsyslog\"\naddress = \"127.0.0.1:1\"\n")
            .unwrap();
    s.address = Some(format!("127.0.0.1:{port}"));
    s.format = format;
    s.retry_initial = Duration::from_millis(50);
    if let Some(ca) = tls {
        s.tls = true;
        s.ca_file = Some(ca.to_path_buf());
        s.server_name = Some("localhost".into());
    }
    s
}

fn run_case(format: SyslogFormat, use_tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let rs = start_rsyslog(
        dir.path(),
        use_tls.then_some((cert_path.as_path(), key_path.as_path())),
    );
    let config = EventsConfig {
        sinks: vec![syslog_sink(
            rs.port,
            format,
            use_tls.then_some(cert_path.as_path()),
        )],
        ..Default::default()
    };
    let data = dir.path().join("data");
    let (pipeline, sender) = Pipeline::start(&data, &config).unwrap();
    let now = rampart_events::now_ms();
    let mut ids = HashSet::new();
    for i in 0..50 {
        let e = common::http(i, now + i as i64);
        ids.insert(e.id().to_string());
        sender.send(e);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&rs.out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 50 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    pipeline.close();
    let seen: HashSet<String> = match format {
        SyslogFormat::Json => lines
            .iter()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}"));
                v["metadata"]["uid"].as_str().unwrap().to_string()
            })
            .collect(),
        SyslogFormat::Cef => lines
            .iter()
            .map(|l| {
                assert!(l.trim_start().starts_with("CEF:0|Rampart|Rampart|"), "{l}");
                l.split("externalId=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect(),
    };
    assert_eq!(
        seen, ids,
        "rsyslog received every event ({format:?}, tls {use_tls})"
    );
}

#[test]
fn rsyslog_receives_json_over_tcp() {
    run_case(SyslogFormat::Json, false);
}

#[test]
fn rsyslog_receives_cef_over_tcp() {
    run_case(SyslogFormat::Cef, false);
}

#[test]
fn rsyslog_receives_json_over_tls() {
    run_case(SyslogFormat::Json, true);
}

#[test]
fn rsyslog_receives_cef_over_tls() {
    run_case(SyslogFormat::Cef, true);
}
