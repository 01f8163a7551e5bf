//! Faults around the gateway: a broken origin, a stalled upstream proxy, no DNS,
//! a sink that never answers, a full data disk. Each case asserts that the
//! proxy keeps serving other clients and that the access log, the events or the
//! counters say what happened. Everything stays on loopback or in a network
//! namespace of the test's own; mounts and namespaces go away on drop, also
//! when a test fails. (`kill -9` during a burst: events_crash_safety.rs.)

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::Origin;
use support::{curl, curl_status, eventually, run, Rampart};

fn still_serves(gw: &Rampart, origin: &Origin) {
    let (code, body, err) = curl(
        &gw.proxy_url(),
        &["--max-time", "10", &origin.url("/hello")],
    );
    assert_eq!((code, body.as_str()), (0, "hello from origin"), "{err}");
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Root is needed for namespaces and mounts; CI runs as root. A test that
/// cannot run fails, it never passes silently.
fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (network namespace / tmpfs mount); run the suite as root as CI does"
    );
}

/// A TCP server on loopback that runs `serve` for every accepted connection on a
/// thread of its own, until dropped.
struct FaultyServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FaultyServer {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a faulty server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let serve = serve.clone();
                        std::thread::spawn(move || serve(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultyServer { addr, stop }
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads whatever comes and never answers, until the peer goes or 60 s pass.
fn read_and_never_answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 16384];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return;
        }
    }
}

#[test]
fn origin_reset_mid_body_truncates_that_response_logs_why_and_other_clients_are_served() {
    let origin = Origin::start();
    let broken = FaultyServer::start(|mut stream| {
        // Read only the start of the request: closing a socket with unread
        // bytes makes the kernel send RST instead of FIN (RFC 2525 §2.17).
        let mut start = [0u8; 16];
        let _ = stream.read_exact(&mut start);
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
        );
        let _ = stream.write_all(&[b'x'; 10_000]);
        std::thread::sleep(Duration::from_millis(100));
        drop(stream);
    });
    let gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let url = format!("http://{}/download", broken.addr);
    let (code, out, err) = curl(
        &gw.proxy_url(),
        &["--max-time", "10", "-w", "\n%{http_code}", &url],
    );
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", "000"));
    // Either the body is cut short (curl fails: RST or a short body), or the
    // reset came before the head and the client got an error status.
    assert!(
        code != 0 || status.starts_with('5'),
        "a reset mid-body looked like a complete answer ({status}, curl {code}): {err}"
    );
    assert!(
        body.len() < 1_000_000,
        "the client got {} bytes of a body the origin cut short",
        body.len()
    );
    still_serves(&gw, &origin);

    let record = gw.find_record(|r| {
        r["target"]
            .as_str()
            .is_some_and(|u| u.ends_with("/download"))
    });
    let error = record["error"].as_str().unwrap_or_default().to_string();
    assert!(
        !error.is_empty(),
        "the record of the cut-short response carries no reason: {record}"
    );
    let bytes = record["bytes_to_client"].as_u64().unwrap_or(0);
    assert!(
        bytes < 1_000_000,
        "the record claims the whole body was sent: {record}"
    );
}

#[test]
fn stalled_upstream_proxy_times_out_with_the_reason_and_is_marked_down() {
    let origin = Origin::start();
    let stalled = FaultyServer::start(read_and_never_answer);
    let edge = Rampart::start(&format!(
        "[proxy]\nconnect_ports = [443, \"1025-65535\"]\n\
         [limits]\nconnect_timeout = \"1s\"\nhandshake_timeout = \"1s\"\nresponse_timeout = \"2s\"\n\
         [egress]\ndefault = \"egress\"\n\
         [upstreams.egress]\nproxies = [\"http://{}\"]\nfailure_threshold = 1\n\
         health_check_interval = \"1s\"\nhealth_check_target = \"127.0.0.1:{}\"\n",
        stalled.addr,
        origin.port()
    ));
    // A direct-egress gateway for the "other clients" of this case.
    let other = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let started = Instant::now();
    let status = curl_status(
        &edge.proxy_url(),
        &origin.url("/hello"),
        &["--max-time", "20"],
    );
    let took = started.elapsed();
    assert!(
        status == 502 || status == 504,
        "a stalled upstream gave {status}"
    );
    assert!(took < Duration::from_secs(15), "the timeout took {took:?}");
    let target = format!("127.0.0.1:{}", origin.port());
    let (code, _, err) = curl(
        &edge.proxy_url(),
        &["--max-time", "20", "-p", &format!("http://{target}/")],
    );
    assert_ne!(
        code, 0,
        "a CONNECT through a stalled upstream succeeded: {err}"
    );
    still_serves(&other, &origin);

    let records = edge.access_log();
    assert!(
        records.iter().any(|r| {
            let error = r["error"].as_str().unwrap_or_default().to_ascii_lowercase();
            error.contains("timed out") || error.contains("timeout")
        }),
        "no record names the timeout: {records:?}"
    );
    // The health state: the stalled proxy is reported down, by the failed
    // CONNECT and by the health check that CONNECTs through it (a TCP connect
    // alone would find a proxy that accepts and stalls healthy).
    let series = format!(
        "rampart_upstream_up{{group=\"egress\",proxy=\"{}\"}} 0",
        stalled.addr
    );
    assert!(
        eventually(Duration::from_secs(15), || {
            let metrics = edge.metrics();
            metrics.contains(&series)
                || metrics
                    .lines()
                    .any(|l| l.starts_with("rampart_upstream_up") && l.ends_with(" 0"))
        }),
        "the stalled upstream is not marked down:\n{}",
        edge.metrics()
    );
}

#[test]
fn a_stalled_upstream_proxy_is_marked_down_by_health_checks_without_a_target() {
    // No request goes through it: only the active check can find it stalled.
    let stalled = FaultyServer::start(read_and_never_answer);
    let edge = Rampart::start(&format!(
        "[limits]\nconnect_timeout = \"500ms\"\n\
         [egress]\ndefault = \"egress\"\n\
         [upstreams.egress]\nproxies = [\"http://{}\"]\nfailure_threshold = 1\n\
         health_check_interval = \"300ms\"\n",
        stalled.addr,
    ));
    let series = format!(
        "rampart_upstream_up{{group=\"egress\",proxy=\"{}\"}} 0",
        stalled.addr
    );
    assert!(
        eventually(Duration::from_secs(10), || edge.metrics().contains(&series)),
        "a proxy that accepts and never answers passes its health check:\n{}",
        edge.metrics()
    );
}

/// A network namespace with only loopback, entered by a thread of the test:
/// processes that thread starts (the server, curl) live in it, so no DNS query
/// or packet can leave the machine. The namespace goes away with its last
/// process and the thread.
fn in_loopback_only_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only the calling thread.
        let unshared = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) };
        assert_eq!(
            unshared,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let out = run(Command::new("ip").args(["link", "set", "lo", "up"]));
        assert!(
            out.status.success(),
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn dns_failure_is_a_502_naming_dns_and_other_clients_are_served() {
    require_root("dns_failure_is_a_502_naming_dns_and_other_clients_are_served");
    in_loopback_only_namespace(|| {
        let origin = Origin::start();
        let gw = Rampart::start(
            "[proxy]\nallow_loopback_destinations = true\n\
             [resolve]\n\"known.test\" = \"127.0.0.1\"\n",
        );
        let (code, body, err) = curl(
            &gw.proxy_url(),
            &[
                "--max-time",
                "30",
                "-w",
                "\n%{http_code}",
                "http://unknown-name.rampart-fault.test/",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let (text, status) = body.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(status, "502", "{body}");
        assert!(text.contains("DNS"), "the 502 does not name DNS: {text}");
        still_serves(&gw, &origin);
        // A name from [resolve] still works without any resolver.
        let status = curl_status(
            &gw.proxy_url(),
            &format!("http://known.test:{}/hello", origin.port()),
            &["--max-time", "10"],
        );
        assert_eq!(status, 200);
        let record = gw.find_record(|r| {
            r["target"]
                .as_str()
                .is_some_and(|u| u.contains("unknown-name.rampart-fault.test"))
        });
        assert_eq!(record["status"], 502, "{record}");
        assert!(
            record["error"].as_str().unwrap_or_default().contains("DNS"),
            "{record}"
        );
    });
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn sink_that_never_answers_holds_its_spool_while_the_proxy_serves_and_the_store_keeps_every_event()
{
    let origin = Origin::start();
    let sink = FaultyServer::start(read_and_never_answer);
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\n\
         [[events.sinks]]\ntype = \"hec\"\nname = \"stalled\"\n\
         url = \"http://{}/services/collector/event\"\ntoken = \"00000000-0000-0000-0000-000000000000\"\n",
        sink.addr
    ));
    const REQUESTS: usize = 40;
    for _ in 0..REQUESTS {
        still_serves(&gw, &origin);
    }
    let spool = gw.data_dir().join("spool").join("sink-stalled");
    assert!(
        eventually(Duration::from_secs(15), || dir_size(&spool) > 0),
        "the stalled sink's spool holds nothing: {}",
        spool.display()
    );
    let stored = || {
        support::events_search(
            &gw.data_dir(),
            &["url like \"/hello\"", "--format", "json", "--limit", "1000"],
        )
        .len()
    };
    assert!(
        eventually(Duration::from_secs(15), || stored() >= REQUESTS),
        "the store has {} of {REQUESTS} events",
        stored()
    );
    // Still serving, still pending: nothing was delivered.
    still_serves(&gw, &origin);
    assert!(dir_size(&spool) > 0);
}

/// A tmpfs mounted over a directory; unmounted (lazily, so a process still
/// holding a file cannot keep it) on drop.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(path).expect("create the mount point");
        let out = run(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            &path.display().to_string(),
        ]));
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Fills the filesystem under `dir` until the kernel refuses a write.
fn fill(dir: &Path) {
    let mut filler = std::fs::File::create(dir.join("filler")).expect("filler file");
    let block = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        if filler.write_all(&block).is_err() {
            return;
        }
    }
    panic!("{} never filled up", dir.display());
}

#[test]
fn full_data_disk_keeps_the_proxy_serving_counts_the_errors_and_does_not_crash() {
    require_root("full_data_disk_keeps_the_proxy_serving_counts_the_errors_and_does_not_crash");
    let origin = Origin::start();
    // A cell: the harness may call `prepare` again if it has to retry on fresh ports.
    let mount = std::cell::RefCell::new(None);
    let mut gw = Rampart::try_start_with(
        "[proxy]\nallow_loopback_destinations = true\n",
        &[],
        |command| {
            let data_dir = support::data_dir_of(command);
            *mount.borrow_mut() = Some(TmpfsMount::mount(&data_dir, "16m"));
        },
    )
    .unwrap_or_else(|log| panic!("rampart did not start on a tmpfs data dir:\n{log}"));
    still_serves(&gw, &origin);
    fill(&gw.data_dir());

    for _ in 0..200 {
        let status = curl_status(
            &gw.proxy_url(),
            &origin.url("/hello"),
            &["--max-time", "10"],
        );
        assert_eq!(status, 200, "a full data disk broke the proxy");
    }
    assert!(
        gw.child.try_wait().ok().flatten().is_none(),
        "the server exited on a full disk:\n{}",
        gw.stderr()
    );
    let metrics = gw.metrics();
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // What the full disk cost is counted, not silently lost: the access-log
    // records and the events that could not be written.
    assert!(
        gauge("rampart_access_log_dropped ") > 0,
        "no access-log record counted as dropped on a full disk:\n{metrics}"
    );
    assert!(
        gauge("rampart_events_dropped ") > 0,
        "no event counted as dropped on a full disk:\n{metrics}"
    );
    let enospc = gw.stderr().matches("No space left on device").count();
    assert!(
        enospc < 100,
        "200 requests on a full disk logged ENOSPC {enospc} times (a log flood)"
    );
    // The server must go before the mount under it.
    drop(gw);
    drop(mount);
}
