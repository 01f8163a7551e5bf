//! The API listener under a flood of half-open connections (issue 16's probe:
//! thousands of connections that each send half a request line). The API has a
//! connection budget of its own, per source and in total; over it connections get
//! a 503 and are closed at once, counted in
//! `rampart_connections_rejected_total{listener="api",reason}`; the ones it holds
//! are closed after `[api] header_timeout`. Meanwhile the proxy keeps serving
//! and `/healthz` keeps answering. Loopback only; the flood comes from
//! 127.0.0.2 and 127.0.0.3 so that 127.0.0.1 stands for everyone else.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use support::origin::Origin;
use support::{eventually, http_get_status, raw_exchange, Rampart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Raises this test process's own open-files limit (the flood's client sockets
/// live here) and returns how many descriptors the flood may use.
fn raise_nofile_limit(want: u64) -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = want.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).expect("setrlimit");
    }
    // Keep room for the test harness, the origin and the clients.
    target.max(soft).saturating_sub(200)
}

/// Descriptors the server process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens `count` connections to `api` from `source`, each sending half a request
/// line and then nothing. Refused ones are kept too (they are closed by the server).
async fn half_open_flood(
    api: SocketAddr,
    sources: &[&str],
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let source: SocketAddr = format!("{}:0", sources[i % sources.len()]).parse().unwrap();
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            continue;
        };
        if socket.bind(source).is_err() {
            continue;
        }
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), socket.connect(api)).await
        else {
            continue;
        };
        // Refused connections may already be closed: a failed write is expected.
        let _ = stream.write_all(b"GET /heal").await;
        streams.push(stream);
    }
    streams
}

/// Whether every stream has been closed by the server (EOF or reset, possibly
/// after the 503), each checked for up to `wait`.
async fn all_closed(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    let mut still_open = 0;
    for stream in streams.iter_mut() {
        let mut sink = Vec::new();
        match tokio::time::timeout(wait, stream.read_to_end(&mut sink)).await {
            Ok(_) => {}
            Err(_) => still_open += 1,
        }
    }
    still_open
}

fn metric(gw: &Rampart, series: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn api_flood_of_half_open_connections_never_stops_the_proxy_or_healthz() {
    let budget = raise_nofile_limit(8192);
    let flood = (budget as usize).min(3000);
    assert!(flood >= 500, "too few descriptors for a flood: {budget}");
    let origin = Origin::start();
    let gw = Rampart::start(
        "[proxy]\nallow_loopback_destinations = true\n\
         [api]\nmax_connections = 300\nmax_connections_per_source = 100\nheader_timeout = \"2s\"\n",
    );
    let fds_before = open_fds(gw.pid());

    // A proxy client that keeps going through the whole flood.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (proxy, port) = (gw.proxy, origin.port());
        std::thread::spawn(move || {
            let request = format!(
                "GET http://127.0.0.1:{port}/hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            while !stop.load(Ordering::Relaxed) {
                let answer = raw_exchange(proxy, request.as_bytes(), Duration::from_secs(5));
                if answer.starts_with("HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let rt = runtime();
    let mut streams = rt.block_on(half_open_flood(gw.api, &["127.0.0.2", "127.0.0.3"], flood));
    assert!(
        streams.len() >= flood / 2,
        "only {} connections opened",
        streams.len()
    );
    // While the flood holds every connection it may: health, metrics and the
    // server's descriptors stay within the API budget.
    assert_eq!(http_get_status(gw.api, "/healthz"), Some(200));
    let fds_during = open_fds(gw.pid());
    assert!(
        fds_during <= fds_before + 300 + 50,
        "{fds_during} descriptors open during the flood (before: {fds_before})"
    );
    // Two sources of at most 100 connections each (and more as the header timeout
    // frees places during a long flood): most were refused, and counted.
    let series = "rampart_connections_rejected_total{listener=\"api\",reason=\"max_connections_per_source\"}";
    let opened = streams.len();
    assert!(
        eventually(Duration::from_secs(5), || metric(&gw, series) as usize
            >= opened / 2),
        "{} refusals counted for {opened} connections",
        metric(&gw, series)
    );

    // The half-open connections the API held are closed by the header timeout (2 s).
    std::thread::sleep(Duration::from_millis(3500));
    let still_open = rt.block_on(all_closed(&mut streams, Duration::from_millis(200)));
    assert_eq!(
        still_open, 0,
        "connections still open after the header timeout"
    );
    drop(streams);
    assert!(
        eventually(Duration::from_secs(5), || open_fds(gw.pid())
            <= fds_before + 20),
        "the server kept {} descriptors (before: {fds_before})",
        open_fds(gw.pid())
    );

    stop.store(true, Ordering::Relaxed);
    client.join().expect("proxy client");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} proxy requests failed during the flood ({ok} ok)"
    );
    assert!(ok >= 10, "only {ok} proxy requests during the flood");
    assert!(
        gw.stderr()
            .matches("API listener: connection refused")
            .count()
            <= 3,
        "refusal warnings are rate-limited:\n{}",
        gw.stderr()
    );
}

#[test]
fn over_budget_api_connections_get_503_and_the_api_recovers_after_the_header_timeout() {
    raise_nofile_limit(1024);
    let gw = Rampart::start("[api]\nmax_connections = 20\nheader_timeout = \"1s\"\n");
    let rt = runtime();
    let mut held = rt.block_on(half_open_flood(gw.api, &["127.0.0.2"], 20));
    assert_eq!(held.len(), 20);
    // The budget is full: a newcomer is told so and closed, without sending anything.
    let mut newcomer = TcpStream::connect(gw.api).expect("connect");
    newcomer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = newcomer.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("too many connections"), "{answer:?}");

    // After the header timeout the held connections are gone and the API answers.
    assert!(eventually(Duration::from_secs(5), || http_get_status(
        gw.api, "/healthz"
    ) == Some(200)));
    assert_eq!(
        // Each held connection gets up to 2 s to show its close: on a loaded
        // CI machine the server's timer and the close can lag the health check.
        rt.block_on(all_closed(&mut held, Duration::from_secs(2))),
        0
    );
    assert!(
        metric(
            &gw,
            "rampart_connections_rejected_total{listener=\"api\",reason=\"max_connections\"}"
        ) >= 1,
        "{}",
        gw.metrics()
    );
}

#[test]
fn oversized_api_request_heads_and_bodies_are_refused() {
    let gw = Rampart::start("[api]\nmax_header_bytes = 8192\nmax_body_bytes = 1024\n");
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw_exchange(gw.api, big_head.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let big_body = format!(
        "POST /api/v1/policy/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}",
        "a".repeat(5000)
    );
    let answer = raw_exchange(gw.api, big_body.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(http_get_status(gw.api, "/healthz"), Some(200));
}

#[test]
fn a_stalled_api_request_body_is_closed_after_the_idle_timeout() {
    let gw = Rampart::start("[api]\nidle_timeout = \"1s\"\nheader_timeout = \"30s\"\n");
    // With the admin token: the API's token gate answers 401 to a request without
    // one before reading its body, and this test is about a body that stalls.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let request = format!(
        "POST /api/v1/policy/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n0123456789",
        token.trim()
    );
    let started = std::time::Instant::now();
    // A complete head promising 100 bytes, then 10 of them and silence.
    let answer =
        support::raw_exchange_until_close(gw.api, request.as_bytes(), Duration::from_secs(10));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}: {answer:?}"
    );
    assert_eq!(http_get_status(gw.api, "/healthz"), Some(200));
}

/// Sends one `GET /healthz` on `stream` and reads its answer (the API answers
/// with a Content-Length): the status line, or what the read saw instead.
fn healthz_on(stream: &mut TcpStream) -> String {
    use std::io::Write;
    if let Err(e) = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") {
        return format!("write failed: {e}");
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return format!("closed after {:?}", String::from_utf8_lossy(&answer)),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return format!("read failed: {e}"),
        }
        let text = String::from_utf8_lossy(&answer);
        if text.contains("\r\n\r\n") && text.ends_with("ok\n") {
            return text.lines().next().unwrap_or_default().to_string();
        }
    }
}

/// Reads once: what the read gave (`Ok(0)`: the server closed) and how long it took.
fn until_closed(stream: &mut TcpStream) -> (std::io::Result<usize>, Duration) {
    let started = std::time::Instant::now();
    let read = stream.read(&mut [0u8; 256]);
    (read, started.elapsed())
}

/// The soak's finding: `header_timeout` was also the keep-alive wait, so a
/// client polling every `header_timeout` lost a request whenever it sent just
/// as the server closed. Now a kept-alive connection waits `keepalive_timeout`
/// for its next request, while a head that has started must still be
/// complete within `header_timeout`, on a new and on a kept-alive connection.
#[test]
fn a_kept_alive_api_connection_waits_for_the_next_request_longer_than_a_head_may_take() {
    use std::io::Write;
    let gw = Rampart::start("[api]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"3s\"\n");
    let mut stream = TcpStream::connect(gw.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(healthz_on(&mut stream), "HTTP/1.1 200 OK");
    // Idle for longer than the header timeout, then the next request: answered.
    std::thread::sleep(Duration::from_millis(1_600));
    assert_eq!(healthz_on(&mut stream), "HTTP/1.1 200 OK");
    // Half a head on the kept-alive connection: cut after the header timeout.
    // (After a pause: the server counts the wait from when it is done with the
    // answer, a moment after the client has read it.)
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let (read, waited) = until_closed(&mut stream);
    assert!(
        matches!(read, Ok(0))
            && waited >= Duration::from_millis(900)
            && waited < Duration::from_secs(3),
        "half a head: {read:?} after {waited:?}"
    );
    // A connection left idle after its answer is closed after keepalive_timeout.
    let mut idle = TcpStream::connect(gw.api).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(healthz_on(&mut idle), "HTTP/1.1 200 OK");
    let (read, waited) = until_closed(&mut idle);
    assert!(
        matches!(read, Ok(0))
            && waited >= Duration::from_millis(2_800)
            && waited < Duration::from_secs(6),
        "idle kept-alive connection: {read:?} after {waited:?}"
    );
}
