//! Local-proxy mode needs no privileges (issue 6): the enrolled agent runs as `nobody`
//! with no capabilities, a client of the same account uses it as its proxy, and the
//! gateway sees the flow attributed to that client's process.

mod support;

use std::process::Command;
use std::time::Duration;

use support::enrolled_agent::EnrolledAgent;
use support::origin::Origin;
use support::{eventually, Rampart};

fn effective_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn local_proxy_mode_runs_without_root_and_attributes_the_users_process() {
    // Dropping to `nobody` needs root to start with; CI runs as root.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to start the agent as nobody");
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let origin = Origin::start();
    let agent = EnrolledAgent::start_as(&gw, "dana", "eng", "", Some(("nobody", "nogroup")));
    assert_eq!(
        effective_uid(agent.pid()),
        Some(65534),
        "agent is not nobody"
    );

    // curl as the same unprivileged account, through the agent's local proxy.
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "curl",
            "-sS",
            "-m",
            "20",
            "-x",
        ])
        .arg(agent.proxy_url())
        .arg(origin.url("/hello"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from origin",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut record = None;
    let found = eventually(Duration::from_secs(15), || {
        record = gw
            .access_log()
            .into_iter()
            .find(|r| r["method"] == "CONNECT" && r["device"] == agent.device.as_str());
        record.is_some()
    });
    assert!(found, "no tunnel record: {:#?}", gw.access_log());
    let record = record.unwrap();
    assert_eq!(record["user"], "dana", "{record}");
    assert_eq!(record["process"]["name"], "curl", "{record}");
    assert_eq!(record["process"]["uid"], 65534, "{record}");
}
