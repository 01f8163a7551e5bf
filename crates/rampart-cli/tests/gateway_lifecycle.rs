//! Reload and shutdown: SIGHUP applies a valid configuration and rejects a
//! broken one (the old one keeps serving); SIGTERM drains requests in flight.

mod support;

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::origin::Origin;
use support::{curl, curl_status, eventually, Rampart};

const BASE: &str = "[proxy]\nallow_loopback_destinations = true\n";

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_serving() {
    let origin = Origin::start();
    let gw = Rampart::start(BASE);
    std::fs::write(&gw.config_path, "[proxy\nthis is not toml").unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .stderr()
            .contains("configuration rejected")),
        "{}",
        gw.stderr()
    );
    assert!(
        gw.stderr().contains("rampart.toml:1:"),
        "error names file and line: {}",
        gw.stderr()
    );
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello"), &[]),
        200
    );

    // A semantically invalid file (unknown upstream) is rejected the same way.
    gw.rewrite_config(
        "[proxy]\nallow_loopback_destinations = true\n[egress]\ndefault = \"missing\"\n",
    );
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .stderr()
            .contains("unknown upstream group")),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello"), &[]),
        200
    );
    assert!(gw
        .metrics()
        .contains("rampart_config_reloads_total{kind=\"rejected\"} 2"));
}

#[test]
fn sighup_with_a_valid_config_applies_it() {
    let origin = Origin::start();
    let gw = Rampart::start(BASE);
    assert_eq!(
        curl_status(&gw.proxy_url(), &origin.url("/hello"), &[]),
        200
    );
    gw.rewrite_config(
        "[proxy]\nallow_loopback_destinations = true\nallow_networks = [\"10.0.0.0/8\"]\n",
    );
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || curl_status(
            &gw.proxy_url(),
            &origin.url("/hello"),
            &[]
        ) == 403),
        "new ACL not applied: {}",
        gw.stderr()
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .stderr()
            .contains("configuration and policy reloaded")),
        "{}",
        gw.stderr()
    );
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits() {
    let origin = Origin::start();
    let mut gw = Rampart::start(BASE);
    let proxy = gw.proxy_url();
    let url = origin.url("/slow/1500");
    let slow = std::thread::spawn(move || curl(&proxy, &["-w", " %{http_code}", &url]));
    std::thread::sleep(Duration::from_millis(400));
    gw.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    // No new connections once draining.
    let refused = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-x",
            &gw.proxy_url(),
            &origin.url("/hello"),
        ])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a new request was accepted while draining"
    );
    let (_, body, err) = slow.join().unwrap();
    assert_eq!(body, "slow done 200", "{err}");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("SIGTERM: draining"));
}

/// User + system CPU time of a process so far, from /proc/PID/stat (clock ticks).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn busy_polling_serves_requests_and_leaves_an_idle_gateway_idle() {
    let origin = Origin::start();
    let gw = Rampart::start(&format!("{BASE}[runtime]\nbusy_poll = \"200us\"\n"));
    for _ in 0..20 {
        assert_eq!(
            curl_status(&gw.proxy_url(), &origin.url("/hello"), &[]),
            200
        );
    }
    assert!(
        !gw.stderr().contains("busy polling is off"),
        "the runtime's epoll instance was not found: {}",
        gw.stderr()
    );
    // The spin is bounded: with no traffic the threads sleep, they do not spin on.
    let before = cpu_ticks(gw.pid());
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(gw.pid()) - before;
    // Clock ticks are 1/100 s: 200 ticks would be one CPU spinning the whole time.
    assert!(ticks < 40, "idle gateway used {ticks} ticks of CPU in 2 s");
}

#[test]
fn a_busy_poll_budget_above_the_maximum_is_refused_at_start() {
    let err = match Rampart::try_start(&format!("{BASE}[runtime]\nbusy_poll = \"1s\"\n"), &[]) {
        Ok(_) => panic!("a 1 s spin was accepted"),
        Err(log) => log,
    };
    assert!(err.contains("above the 10ms maximum"), "{err}");
    assert!(err.contains("rampart.toml:"), "error names the file: {err}");
}
