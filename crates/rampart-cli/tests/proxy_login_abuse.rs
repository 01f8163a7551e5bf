//! Proxy logins under abuse, against the real binary on loopback: failed
//! logins cannot slow a logged-in client down, cannot tell which user names
//! exist, and are throttled with 407 + `Retry-After` until the backoff ends.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::Origin;
use support::{eventually, hash_password, Rampart};

/// A config with `alice` (password `s3cret`) and the given extra `[proxy]` keys.
fn config_with_alice(extra_proxy_keys: &str) -> String {
    let hash = hash_password("s3cret");
    format!(
        "[proxy]\nallow_loopback_destinations = true\n{extra_proxy_keys}\n\
         users = [{{ name = \"alice\", password_hash = \"{hash}\" }}]\n\
         [tunnel]\nlisten = \"127.0.0.1:{}\"\n",
        support::free_port()
    )
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One response read off a keep-alive connection.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection that sends GETs through the proxy, keep-alive.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(proxy: SocketAddr) -> Client {
        let stream = TcpStream::connect(proxy).expect("connect to the proxy");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, url: &str, authorization: &str) -> std::io::Result<Reply> {
        write!(
            self.reader.get_mut(),
            "GET {url} HTTP/1.1\r\nHost: origin\r\nProxy-Authorization: {authorization}\r\n\r\n"
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        })
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn metric(metrics: &str, line_prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn logged_in_keepalive_client_p99_stays_under_50ms_during_64_concurrent_bad_logins() {
    let origin = Origin::start();
    // No backoff here: every bad login pays a full Argon2 verification, so
    // what keeps the logged-in client fast is the concurrency bound and the cache.
    let gw = Rampart::start(&config_with_alice("auth_max_failures = 0"));
    let url = origin.url("/hello");
    let good = basic("alice", "s3cret");
    let mut client = Client::connect(gw.proxy);
    let first = client.get(&url, &good).unwrap();
    assert_eq!(first.status, 200, "{}", first.body);

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..64)
        .map(|i| {
            let (stop, refused, url, proxy) =
                (stop.clone(), refused.clone(), url.clone(), gw.proxy);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Half guess alice's password, half try names that do not exist.
                    let bad = if i % 2 == 0 {
                        basic("alice", &format!("guess-{i}-{n}"))
                    } else {
                        basic(&format!("user{i}"), "guess")
                    };
                    n += 1;
                    let mut attacker = Client::connect(proxy);
                    if let Ok(reply) = attacker.get(&url, &bad) {
                        assert_eq!(reply.status, 407);
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Let the attack fill the verification queue before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        let reply = client.get(&url, &good).unwrap();
        samples.push(started.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "hello from origin");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.join().unwrap();
    }

    samples.sort();
    let p99 = samples[samples.len() * 99 / 100 - 1];
    let bad_logins = refused.load(Ordering::Relaxed);
    let peak_mib = gw.peak_rss_kib() / 1024;
    eprintln!(
        "logged-in client during {bad_logins} bad logins: median {:?}, p99 {p99:?}, max {:?}; peak RSS {peak_mib} MiB",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    assert!(bad_logins >= 64, "the attack ran: {bad_logins} bad logins");
    assert!(
        p99 < Duration::from_millis(50),
        "p99 {p99:?} during {bad_logins} bad logins (median {:?})",
        samples[samples.len() / 2]
    );
    // Argon2's memory (19 MiB per verification) is bounded by the concurrency limit.
    assert!(peak_mib < 100, "peak RSS {peak_mib} MiB");
    let metrics = gw.metrics();
    assert!(
        metric(
            &metrics,
            "rampart_auth_failures_total{reason=\"wrong_password\"}"
        ) > 0
            && metric(
                &metrics,
                "rampart_auth_failures_total{reason=\"unknown_user\"}"
            ) > 0,
        "{metrics}"
    );
}

#[test]
fn unknown_user_and_wrong_password_take_the_same_time() {
    let origin = Origin::start();
    // A limit high enough that no sample is throttled (a throttled answer is instant).
    let gw = Rampart::start(&config_with_alice("auth_max_failures = 1000"));
    let url = origin.url("/hello");
    let (wrong, unknown) = (basic("alice", "nope"), basic("mallory", "nope"));
    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    // Interleaved, one fresh connection each, so both kinds see the same load.
    for i in 0..21 {
        for (header, times) in [(&wrong, &mut wrong_times), (&unknown, &mut unknown_times)] {
            let mut client = Client::connect(gw.proxy);
            let started = Instant::now();
            let reply = client.get(&url, header).unwrap();
            let elapsed = started.elapsed();
            assert_eq!(reply.status, 407, "sample {i}: {}", reply.body);
            assert_eq!(
                reply.header("Retry-After"),
                None,
                "sample {i} was throttled"
            );
            times.push(elapsed);
        }
    }
    let (wrong, unknown) = (median(&mut wrong_times), median(&mut unknown_times));
    eprintln!("medians: wrong password {wrong:?}, unknown user {unknown:?}");
    let (fast, slow) = (wrong.min(unknown), wrong.max(unknown));
    assert!(
        fast.as_secs_f64() >= slow.as_secs_f64() * 0.7,
        "medians differ by more than 30%: wrong password {wrong:?}, unknown user {unknown:?}"
    );
}

#[test]
fn repeated_failures_get_407_with_retry_after_and_count_and_a_correct_login_works_after_the_backoff(
) {
    let origin = Origin::start();
    let gw = Rampart::start(&config_with_alice(
        "auth_max_failures = 3\nauth_backoff = \"1s\"",
    ));
    let url = origin.url("/hello");
    let mut client = Client::connect(gw.proxy);
    let wrong = basic("alice", "nope");
    for attempt in 1..=2 {
        let reply = client.get(&url, &wrong).unwrap();
        assert_eq!(reply.status, 407, "attempt {attempt}");
        assert_eq!(reply.header("Retry-After"), None, "attempt {attempt}");
    }
    let third = client.get(&url, &wrong).unwrap();
    assert_eq!(third.status, 407);
    assert_eq!(third.header("Retry-After"), Some("1"));
    assert!(third.header("Proxy-Authenticate").is_some());

    // During the backoff even the right password is refused, unverified.
    let throttled = client.get(&url, &basic("alice", "s3cret")).unwrap();
    assert_eq!(throttled.status, 407);
    assert_eq!(throttled.header("Retry-After"), Some("1"));
    assert!(
        throttled.body.contains("too many failed logins"),
        "{}",
        throttled.body
    );
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "rampart_auth_failures_total{reason=\"wrong_password\"}"
        ),
        3,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "rampart_auth_throttled_total{scope=\"source\"}") >= 1,
        "{metrics}"
    );

    std::thread::sleep(Duration::from_millis(1200));
    let ok = client.get(&url, &basic("alice", "s3cret")).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, "hello from origin");
}

#[test]
fn cached_login_is_dropped_when_a_reload_changes_the_password() {
    let origin = Origin::start();
    let tunnel = support::free_port();
    let config = |password: &str| {
        format!(
            "[proxy]\nallow_loopback_destinations = true\nauth_cache_ttl = \"10m\"\n\
             users = [{{ name = \"alice\", password_hash = \"{}\" }}]\n\
             [tunnel]\nlisten = \"127.0.0.1:{tunnel}\"\n",
            hash_password(password)
        )
    };
    let gw = Rampart::start(&config("s3cret"));
    let url = origin.url("/hello");
    let old = basic("alice", "s3cret");
    assert_eq!(
        Client::connect(gw.proxy).get(&url, &old).unwrap().status,
        200
    );

    gw.rewrite_config(&config("n3w-secret"));
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(15), || {
            Client::connect(gw.proxy).get(&url, &old).unwrap().status == 407
        }),
        "the old password still works after the reload"
    );
    let new = Client::connect(gw.proxy)
        .get(&url, &basic("alice", "n3w-secret"))
        .unwrap();
    assert_eq!(new.status, 200, "{}", new.body);
}

#[test]
fn a_burst_of_64_concurrent_guesses_from_one_source_gets_only_a_few_verified() {
    let origin = Origin::start();
    let gw = Rampart::start(&config_with_alice("auth_max_failures = 5"));
    let url = origin.url("/hello");
    let guesses: Vec<_> = (0..64)
        .map(|i| {
            let (url, proxy) = (url.clone(), gw.proxy);
            std::thread::spawn(move || {
                let reply = Client::connect(proxy)
                    .get(&url, &basic("alice", &format!("guess{i}")))
                    .unwrap();
                assert_eq!(reply.status, 407);
                reply.header("Retry-After").is_some()
            })
        })
        .collect();
    let with_retry_after = guesses
        .into_iter()
        .map(|g| g.join().expect("guess thread"))
        .filter(|&retry_after| retry_after)
        .count();
    let metrics = gw.metrics();
    let verified = metric(
        &metrics,
        "rampart_auth_failures_total{reason=\"wrong_password\"}",
    );
    let throttled = metric(&metrics, "rampart_auth_throttled_total{scope=\"source\"}")
        + metric(&metrics, "rampart_auth_throttled_total{scope=\"user\"}");
    // Guesses already waiting for a verification slot re-check the backoff once
    // they get it: only the first auth_max_failures (plus the slots) are verified.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        (5..=5 + cpus as u64).contains(&verified),
        "{verified} verified\n{metrics}"
    );
    assert_eq!(verified + throttled, 64, "{metrics}");
    assert!(
        with_retry_after as u64 >= throttled,
        "{with_retry_after} with Retry-After"
    );
}
