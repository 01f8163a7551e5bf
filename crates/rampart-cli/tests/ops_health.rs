//! Operating health through the real binary (issue 21, "sink and log health"):
//! per-sink metrics while a real rsyslog is down and after it comes up; the
//! access log rotated by size, reopened on SIGUSR1 after an external `mv` and
//! after a real `logrotate -f`; `--pid-file` written, refused and removed;
//! `access_log_dropped` moving while a (real, tiny tmpfs) disk is full.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::origin::Origin;
use support::{curl_status, eventually, free_port, KillOnDrop, Rampart};

const BASE: &str = "[proxy]\nallow_loopback_destinations = true\n";

/// The value of one sample (`name{labels}` exactly as rendered) on `/metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn sink_sample(gw: &Rampart, metric: &str) -> f64 {
    let series = format!("{metric}{{sink=\"siem\"}}");
    let text = gw.metrics();
    sample(&text, &series).unwrap_or_else(|| panic!("no {series} on /metrics:\n{text}"))
}

/// rsyslogd (Debian `rsyslog`) listening on `port`, writing each message to `out`.
fn start_rsyslog(dir: &Path, port: u16) -> (KillOnDrop, PathBuf) {
    let rsyslogd = "/usr/sbin/rsyslogd";
    assert!(
        Path::new(rsyslogd).exists(),
        "{rsyslogd} missing: apt-get install rsyslog"
    );
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\")\n\
             module(load=\"imtcp\")\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
            work = work.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let child = Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rsyslogd");
    let rsyslog = KillOnDrop(child);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "rsyslogd did not listen on {port}"
    );
    (rsyslog, out)
}

#[test]
fn sink_metrics_show_a_down_collector_and_its_recovery() {
    let syslog_port = free_port();
    let origin = Origin::start();
    let gw = Rampart::start(&format!(
        "{BASE}[[events.sinks]]\ntype = \"syslog\"\nname = \"siem\"\naddress = \"127.0.0.1:{syslog_port}\"\n\
         retry_initial = \"100ms\"\nretry_max = \"300ms\"\n"
    ));
    for i in 0..3 {
        let url = origin.url(&format!("/hello?sink-{i}"));
        assert_eq!(curl_status(&gw.proxy_url(), &url, &[]), 200);
    }

    // Nothing listens on the collector's port: attempts fail, events wait.
    assert!(
        eventually(Duration::from_secs(15), || {
            sink_sample(&gw, "rampart_sink_failed_total") >= 2.0
                && sink_sample(&gw, "rampart_sink_pending_bytes") > 0.0
                && sink_sample(&gw, "rampart_sink_oldest_pending_seconds") >= 1.0
        }),
        "the sink's metrics did not show the collector down:\n{}",
        gw.metrics()
    );
    assert_eq!(sink_sample(&gw, "rampart_sink_delivered_total"), 0.0);
    assert_eq!(sink_sample(&gw, "rampart_sink_dropped_total"), 0.0);
    assert_eq!(
        sample(&gw.metrics(), "rampart_event_store_errors_total"),
        Some(0.0)
    );

    // The collector comes up: the spool drains, the gauges fall to 0.
    let dir = tempfile::tempdir().unwrap();
    let (_rsyslog, received) = start_rsyslog(dir.path(), syslog_port);
    assert!(
        eventually(Duration::from_secs(15), || {
            sink_sample(&gw, "rampart_sink_delivered_total") >= 3.0
                && sink_sample(&gw, "rampart_sink_pending_bytes") == 0.0
                && sink_sample(&gw, "rampart_sink_oldest_pending_seconds") == 0.0
        }),
        "the sink did not recover:\n{}",
        gw.metrics()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let got = std::fs::read_to_string(&received).unwrap_or_default();
            (0..3).all(|i| got.contains(&format!("sink-{i}")))
        }),
        "rsyslog did not receive the spooled events: {:?}",
        std::fs::read_to_string(&received)
    );
    let failed = sink_sample(&gw, "rampart_sink_failed_total");
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?sink-live"), &[]),
        200
    );
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .contains("sink-live")
    }));
    assert_eq!(
        sink_sample(&gw, "rampart_sink_failed_total"),
        failed,
        "no failure while the collector is up"
    );
}

/// Every access-log line of `dir` whose file name starts with `access.log`, by file.
fn access_logs(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with("access.log")
                .then(|| (name, std::fs::read_to_string(e.path()).unwrap_or_default()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn access_log_rotates_by_size_and_keeps_every_line() {
    let origin = Origin::start();
    let gw = Rampart::start(&format!(
        "{BASE}[access_log]\nmax_size = \"2 KiB\"\nkeep = 50\n"
    ));
    let n = 24;
    for i in 0..n {
        let url = origin.url(&format!("/hello?rotate-{i:02}"));
        assert_eq!(curl_status(&gw.proxy_url(), &url, &[]), 200);
    }
    let data = gw.data_dir();
    let all_logged = || {
        let text: String = access_logs(&data).into_iter().map(|(_, t)| t).collect();
        (0..n).all(|i| text.contains(&format!("rotate-{i:02}")))
    };
    assert!(
        eventually(Duration::from_secs(15), all_logged),
        "not every request was logged: {:#?}",
        access_logs(&data)
    );
    let files = access_logs(&data);
    let rotated: Vec<&(String, String)> = files.iter().filter(|(n, _)| n != "access.log").collect();
    assert!(
        rotated.len() >= 3,
        "{} requests of ~300 bytes in 2 KiB files: {files:#?}",
        n
    );
    for (name, text) in &files {
        assert!(text.len() <= 2048, "{name} is {} bytes", text.len());
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} ends mid-line"
        );
        // NAME.YYYYMMDDTHHMMSS.mmmZ: sorts in time order.
        if name != "access.log" {
            let stamp = name.trim_start_matches("access.log.");
            assert!(
                stamp.len() >= 20 && stamp.as_bytes()[8] == b'T',
                "rotated name {name}"
            );
        }
    }
    // Each request exactly once, and in order across the files.
    let mut targets = Vec::new();
    let mut in_order: Vec<&(String, String)> = rotated.clone();
    in_order.extend(files.iter().filter(|(n, _)| n == "access.log"));
    for (_, text) in in_order {
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            targets.push(record["target"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..n)
        .map(|i| origin.url(&format!("/hello?rotate-{i:02}")))
        .collect();
    assert_eq!(targets, expected);
}

fn logged_in(path: &Path, marker: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(marker)
}

/// `kill -SIG "$(cat FILE)"`, as the docs tell operators to do.
fn kill_from_pid_file(signal: &str, pid_file: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -{signal} \"$(cat '{}')\"",
            pid_file.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

#[test]
fn access_log_reopens_on_sigusr1_after_mv_and_after_logrotate() {
    assert!(
        support::have("logrotate"),
        "logrotate missing: apt-get install logrotate"
    );
    let origin = Origin::start();
    let run_dir = tempfile::tempdir().unwrap();
    let pid_file = run_dir.path().join("rampart.pid");
    // Rotation left to logrotate, as the docs advise when it manages the file.
    let gw = Rampart::start_with_args(
        &format!("{BASE}[access_log]\nmax_size = 0\nmax_age = \"0s\"\n"),
        &["--pid-file", pid_file.to_str().unwrap()],
    );
    let log = gw.data_dir().join("access.log");
    let moved = gw.data_dir().join("access.log.moved");
    let request = |marker: &str| {
        let url = origin.url(&format!("/hello?{marker}"));
        assert_eq!(curl_status(&gw.proxy_url(), &url, &[]), 200);
    };
    assert!(eventually(Duration::from_secs(10), || pid_file.exists()));

    request("first");
    assert!(eventually(Duration::from_secs(10), || logged_in(
        &log, "first"
    )));
    std::fs::rename(&log, &moved).unwrap();
    // Until told, the writer keeps the file it has open (now named .moved).
    request("second");
    assert!(
        eventually(Duration::from_secs(10), || logged_in(&moved, "second")),
        "{:#?}",
        access_logs(&gw.data_dir())
    );
    kill_from_pid_file("USR1", &pid_file);
    assert!(
        eventually(Duration::from_secs(10), || log.exists()),
        "SIGUSR1 did not reopen the access log:\n{}",
        gw.stderr()
    );
    request("third");
    assert!(eventually(Duration::from_secs(10), || logged_in(
        &log, "third"
    )));
    assert!(!logged_in(&log, "second") && !logged_in(&moved, "third"));

    // A real logrotate run with the postrotate line of the docs.
    let conf = run_dir.path().join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{log} {{\n  rotate 3\n  missingok\n  nocompress\n  postrotate\n    kill -USR1 \"$(cat {pid})\"\n  endscript\n}}\n",
            log = log.display(),
            pid = pid_file.display()
        ),
    )
    .unwrap();
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(run_dir.path().join("logrotate.state"))
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = gw.data_dir().join("access.log.1");
    assert!(logged_in(&rotated, "third"));
    assert!(eventually(Duration::from_secs(10), || log.exists()));
    request("fourth");
    assert!(
        eventually(Duration::from_secs(10), || logged_in(&log, "fourth")),
        "after logrotate: {:#?}",
        access_logs(&gw.data_dir())
    );
    assert!(!logged_in(&rotated, "fourth"));
}

#[test]
fn pid_file_is_written_refuses_a_second_server_and_is_removed_at_exit() {
    let run_dir = tempfile::tempdir().unwrap();
    let pid_file = run_dir.path().join("rampart.pid");
    let pid_arg = pid_file.to_str().unwrap().to_string();

    // A stale file (its pid is another program's) does not stop a start.
    let mut sleeper = KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
    std::fs::write(&pid_file, format!("{}\n", sleeper.0.id())).unwrap();

    let mut gw = Rampart::start_with_args(BASE, &["--pid-file", &pid_arg]);
    let own_pid = format!("{}\n", gw.pid());
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|t| t == own_pid)),
        "pid file: {:?}",
        std::fs::read_to_string(&pid_file)
    );
    let mode = std::fs::metadata(&pid_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let _ = sleeper.0.kill();

    // A second server on the same file is refused, and says why.
    let refused = Rampart::try_start(BASE, &["--pid-file", &pid_arg])
        .err()
        .expect("a second server on the same pid file must not start");
    assert!(
        refused.contains(&format!("names process {}", gw.pid()))
            && refused.contains("running rampart"),
        "{refused}"
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), own_pid);

    // SIGHUP through the file reloads the right process.
    kill_from_pid_file("HUP", &pid_file);
    assert!(
        eventually(Duration::from_secs(10), || sample(
            &gw.metrics(),
            "rampart_config_reloads_total{kind=\"ok\"}"
        ) == Some(1.0)),
        "{}",
        gw.metrics()
    );

    // A clean exit removes it.
    kill_from_pid_file("TERM", &pid_file);
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the server");
}

#[test]
fn agent_pid_file_is_written_after_its_listener_refuses_a_second_agent_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("agent.toml");
    // Not enrolled: local-proxy mode towards a gateway named in the file.
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[gateway]\nproxy = \"127.0.0.1:1\"\n[steering]\nmode = \"local-proxy\"\n[local_proxy]\nlisten = \"{listen}\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let pid_file = dir.path().join("agent.pid");
    let agent = |stderr: Stdio| {
        Command::new(support::rampart_bin())
            .args(["agent", "run", "--config"])
            .arg(&config)
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let mut first = KillOnDrop(agent(Stdio::null()));
    let own_pid = format!("{}\n", first.0.id());
    assert!(
        eventually(Duration::from_secs(15), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|t| t == own_pid)),
        "the agent wrote no pid file"
    );
    assert!(
        std::net::TcpStream::connect(&listen).is_ok(),
        "the pid file came before the listener"
    );

    let second = agent(Stdio::piped()).wait_with_output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("running rampart"), "{err}");

    kill_from_pid_file("TERM", &pid_file);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "the pid file outlived the agent");
}

/// A tmpfs of 64 KiB mounted on a temporary directory, unmounted on drop
/// (also when the test fails).
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a 64k tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&block[..1]);
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn access_log_dropped_counts_writes_that_fail_on_a_full_disk() {
    let disk = TinyDisk::mount();
    let origin = Origin::start();
    let log = disk.path().join("access.log");
    let gw = Rampart::start(&format!(
        "{BASE}[access_log]\npath = {:?}\nmax_size = 0\n",
        log.display().to_string()
    ));
    let dropped =
        |gw: &Rampart| sample(&gw.metrics(), "rampart_access_log_dropped").unwrap_or(-1.0);
    assert_eq!(dropped(&gw), 0.0);

    let filler = disk.fill();
    for i in 0..5 {
        let url = origin.url(&format!("/hello?full-{i}"));
        assert_eq!(
            curl_status(&gw.proxy_url(), &url, &[]),
            200,
            "proxying goes on"
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || dropped(&gw) >= 5.0),
        "access_log_dropped did not count the failed writes: {}\n{}",
        dropped(&gw),
        gw.stderr()
    );
    assert!(!logged_in(&log, "full-"));
    assert!(gw.stderr().contains("writing the access log failed"));

    // Space again: lines are written whole and the counter stays.
    std::fs::remove_file(filler).unwrap();
    let before = dropped(&gw);
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello?space-again"), &[]),
        200
    );
    assert!(eventually(Duration::from_secs(10), || logged_in(
        &log,
        "space-again"
    )));
    assert_eq!(dropped(&gw), before);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a torn line {line:?}: {e}"));
    }
    drop(gw);
}
