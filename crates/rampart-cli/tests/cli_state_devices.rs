//! The CLI finds the server's state, continued: `device list` read through the
//! server's `--config` shows a `last seen` that moves while the agent's tunnel is open
//! and stops when the agent stops; every local-state command (`ca`, `trust`, `events`,
//! `device`, `user`) names on stderr the data dir it used when it is not the default.

mod support;

use std::process::Command;
use std::time::Duration;

use support::enrolled_agent::EnrolledAgent;
use support::{eventually, free_port, rampart_bin, run, Rampart};

/// `rampart ARGS` from an empty directory, without the state variables of the
/// environment; returns (success, stdout, stderr).
fn rampart_elsewhere(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(rampart_bin());
    command
        .args(args)
        .current_dir(cwd.path())
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_DATA_DIR")
        .envs(env.iter().copied());
    let out = run(&mut command);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The device's `last_seen` as `device list --config --json` shows it.
fn last_seen(config: &str, device: &str) -> String {
    let (ok, stdout, stderr) =
        rampart_elsewhere(&["device", "list", "--json", "--config", config], &[]);
    assert!(ok, "{stderr}");
    let devices: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("device list JSON");
    devices
        .iter()
        .find(|d| d["id"] == device)
        .and_then(|d| d["last_seen"].as_str())
        .unwrap_or_else(|| panic!("{device} not listed: {stdout}"))
        .to_string()
}

#[test]
fn last_seen_moves_while_the_agent_tunnels_and_stops_when_it_stops() {
    // One write per device per second instead of the default minute, to see it move.
    let gw = Rampart::start(&format!(
        "[tunnel]\nlisten = \"127.0.0.1:{}\"\nlast_seen_interval = \"1s\"\n",
        free_port()
    ));
    let config = gw.config_path.to_str().expect("utf-8 path").to_string();
    let agent = EnrolledAgent::start(&gw, "alice", "eng", "");
    let device = agent.device.clone();
    let first = last_seen(&config, &device);
    // RFC 3339 in UTC with whole seconds: later times sort after earlier ones.
    let mut now = first.clone();
    assert!(
        eventually(Duration::from_secs(15), || {
            now = last_seen(&config, &device);
            now > first
        }),
        "last_seen stayed at {first} while the agent's tunnel was open:\n{}",
        gw.stderr()
    );
    // Once more: it keeps following the open tunnel, not a single reconnection.
    let second = now.clone();
    assert!(
        eventually(Duration::from_secs(15), || {
            now = last_seen(&config, &device);
            now > second
        }),
        "last_seen stopped at {second} with the tunnel open"
    );

    // The table shows the same time in LAST SEEN.
    let (ok, table, stderr) = rampart_elsewhere(&["device", "list", "--config", &config], &[]);
    assert!(ok, "{stderr}");
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("LAST SEEN"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&device) && l.contains(&now[..16])),
        "{now} not in LAST SEEN:\n{table}"
    );

    // The agent stops: the tunnel closes and last_seen stays where it was.
    drop(agent);
    std::thread::sleep(Duration::from_secs(3));
    let stopped = last_seen(&config, &device);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        last_seen(&config, &device),
        stopped,
        "last_seen moved without a tunnel"
    );
}

#[test]
fn every_local_state_command_names_the_data_dir_it_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("srv-data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let (ok, _, stderr) = rampart_elsewhere(&["ca", "init", "--data-dir", &data_arg], &[]);
    assert!(ok, "{stderr}");
    let config = dir.path().join("rampart.toml");
    std::fs::write(&config, format!("data_dir = {data_arg:?}\n")).expect("write config");
    let config_arg = config.to_str().expect("utf-8").to_string();
    let bundle = dir.path().join("bundle.pem");
    let bundle_arg = bundle.to_str().expect("utf-8").to_string();

    let commands: &[&[&str]] = &[
        &["ca", "show"],
        &["trust", "env"],
        &["trust", "bundle", "--out", &bundle_arg],
        &["device", "list"],
        &["device", "token", "create", "--user", "bob"],
        &["user", "list"],
    ];
    for command in commands {
        let with_config: Vec<&str> = command
            .iter()
            .copied()
            .chain(["--config", &config_arg])
            .collect();
        let (ok, _, stderr) = rampart_elsewhere(&with_config, &[]);
        assert!(ok, "{command:?} --config: {stderr}");
        assert!(
            stderr.contains(&format!("data dir {data_arg} (data_dir of {config_arg})")),
            "{command:?} --config did not name the data dir: {stderr}"
        );
        let (ok, _, stderr) = rampart_elsewhere(command, &[("RAMPART_CONFIG", &config_arg)]);
        assert!(ok, "{command:?} with RAMPART_CONFIG: {stderr}");
        assert!(
            stderr.contains(&format!("data dir {data_arg}")),
            "{command:?}: {stderr}"
        );
        let (ok, _, stderr) = rampart_elsewhere(command, &[("RAMPART_DATA_DIR", &data_arg)]);
        assert!(ok, "{command:?} with RAMPART_DATA_DIR: {stderr}");
        assert!(
            stderr.contains(&format!("data dir {data_arg} (from RAMPART_DATA_DIR)")),
            "{command:?}: {stderr}"
        );
    }
    // events read the same directory: no store there yet, and the error names it.
    let (ok, _, stderr) = rampart_elsewhere(
        &["events", "search", "host = a", "--config", &config_arg],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!("data dir {data_arg} (data_dir of {config_arg})"))
            && stderr.contains(&format!("{data_arg}/events.db")),
        "{stderr}"
    );
    // The built-in default is used silently.
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new(rampart_bin())
        .args(["ca", "init"])
        .current_dir(cwd.path())
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_DATA_DIR"));
    assert!(out.status.success());
    assert!(cwd.path().join("rampart-data/ca.pem").is_file());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("data dir"));
}
