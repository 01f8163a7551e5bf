//! The CLI finds the server's state: commands that read local state, given the
//! server's `--config` (or `RAMPART_CONFIG`), read its `data_dir` from another
//! working directory, and say on stderr which directory they used. Also the small
//! contracts around it: a lower-case `bearer` works on the API, the admin token
//! never starts with `-`, `events timeline --user` follows a proxy user without an
//! agent, and times sort as strings.

mod support;

use std::process::Command;
use std::time::Duration;

use support::origin::Origin;
use support::{curl, eventually, hash_password, run, Rampart};

/// A server whose config names its data dir, an origin it may reach as ok.test, and
/// one request through it as alice (a proxy user with a password, no agent).
fn server_with_one_request() -> (Rampart, Origin) {
    let origin = Origin::start();
    let hash = hash_password("s3cret");
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\n\
         [[proxy.users]]\nname = \"alice\"\npassword_hash = {hash:?}\n\
         [resolve]\n\"ok.test\" = \"127.0.0.1\"\n"
    ));
    let (code, _, err) = curl(
        &gw.proxy_url(),
        &[
            "-U",
            "alice:s3cret",
            &format!("http://ok.test:{}/hello", origin.port()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    (gw, origin)
}

/// `rampart ARGS` run from an empty directory (no `./rampart-data` to fall back on).
fn rampart_elsewhere(args: &[&str]) -> (bool, String, String) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new(support::rampart_bin())
        .args(args)
        .current_dir(cwd.path())
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_DATA_DIR"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn trust_env_with_config_reads_the_ca_of_the_configured_data_dir() {
    let (gw, _origin) = server_with_one_request();
    let config = gw.config_path.to_str().expect("utf-8 path");
    let data_dir = gw.data_dir();
    let (ok, stdout, stderr) = rampart_elsewhere(&["trust", "env", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&data_dir.join("trust-bundle.pem").display().to_string()),
        "trust env did not point at the configured data dir {}:\n{stdout}",
        data_dir.display()
    );
    assert!(
        stderr.contains("data dir") && stderr.contains("rampart.toml"),
        "the data dir in use is not named on stderr: {stderr}"
    );

    // The same CA as the server's, by fingerprint.
    let (ok, by_config, stderr) = rampart_elsewhere(&["ca", "show", "--json", "--config", config]);
    assert!(ok, "{stderr}");
    let by_dir = run(Command::new(support::rampart_bin())
        .args(["ca", "show", "--json", "--data-dir"])
        .arg(gw.data_dir()));
    assert_eq!(by_config, String::from_utf8_lossy(&by_dir.stdout));

    // RAMPART_CONFIG does the same as --config.
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new(support::rampart_bin())
        .args(["trust", "env"])
        .current_dir(cwd.path())
        .env("RAMPART_CONFIG", config)
        .env_remove("RAMPART_DATA_DIR"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn events_search_with_config_finds_the_servers_events() {
    let (gw, _origin) = server_with_one_request();
    let config = gw.config_path.to_str().expect("utf-8 path");
    let mut found = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, stdout, _) = rampart_elsewhere(&[
                "events",
                "search",
                "host = ok.test",
                "--format",
                "json",
                "--config",
                config,
            ]);
            found = stdout;
            found.contains("ok.test")
        }),
        "events search --config found nothing: {found:?}"
    );
}

#[test]
fn events_timeline_user_follows_a_proxy_user_without_an_agent() {
    let (gw, _origin) = server_with_one_request();
    let config = gw.config_path.to_str().expect("utf-8 path");
    let mut found = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, stdout, _) = rampart_elsewhere(&[
                "events", "timeline", "--user", "alice", "--format", "json", "--config", config,
            ]);
            found = stdout;
            found.contains("ok.test")
        }),
        "timeline --user alice is empty: {found:?}"
    );
    let (_, nobody, _) = rampart_elsewhere(&[
        "events", "timeline", "--user", "bob", "--format", "json", "--config", config,
    ]);
    assert!(!nobody.contains("ok.test"), "{nobody}");
}

#[test]
fn lower_case_bearer_is_accepted_and_the_admin_token_never_starts_with_a_dash() {
    let (gw, _origin) = server_with_one_request();
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).expect("token");
    let token = token.trim();
    assert!(!token.starts_with('-'), "{token}");
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("authorization: bearer {token}")])
        .arg(format!("http://{}/api/v1/policy/reload", gw.api)));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // The CLI takes the token as --token=VALUE, whatever its first character.
    let (ok, _, stderr) = rampart_elsewhere(&[
        "events",
        "search",
        "",
        "--server",
        &format!("http://{}", gw.api),
        &format!("--token={token}"),
    ]);
    assert!(ok, "{stderr}");
}

#[test]
fn access_log_and_event_times_have_a_fixed_width_fraction() {
    let (gw, _origin) = server_with_one_request();
    let record = gw.find_record(|r| r["target"].as_str().is_some_and(|t| t.contains("ok.test")));
    let time = record["time"].as_str().expect("time");
    // 2026-12-07T10:19:17.339Z: always three digits, so lines sort as strings.
    assert_eq!(time.len(), 24, "{time}");
    assert_eq!(&time[19..20], ".", "{time}");
    let config = gw.config_path.to_str().expect("utf-8 path");
    let mut events = Vec::new();
    eventually(Duration::from_secs(15), || {
        let (_, stdout, _) = rampart_elsewhere(&[
            "events", "search", "", "--format", "json", "--config", config,
        ]);
        events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
        !events.is_empty()
    });
    for e in &events {
        let t = e["time"].as_str().expect("event time");
        assert_eq!(t.len(), 24, "{t}");
    }
}

#[test]
fn server_logs_have_no_colour_codes_when_stderr_is_a_file() {
    let (gw, _origin) = server_with_one_request();
    assert!(
        !gw.stderr().contains('\u{1b}'),
        "escape codes in a file:\n{}",
        gw.stderr()
    );
}

#[test]
fn the_example_configuration_shows_every_section() {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rampart.toml"),
    )
    .expect("examples/rampart.toml");
    // The tables of RampartConfig (crates/rampart-server/src/config.rs).
    for section in [
        "policy",
        "proxy",
        "api",
        "limits",
        "egress",
        "upstreams",
        "resolve",
        "access_log",
        "log",
        "tunnel",
        "events",
        "coaching",
        "tls",
        "agent",
        "runtime",
        "isolation",
        "response",
        "inspect",
    ] {
        assert!(
            example.lines().any(|l| {
                let l = l.trim_start_matches("# ").trim_start_matches('[');
                l.starts_with(section) && l[section.len()..].starts_with([']', '.'])
            }),
            "examples/rampart.toml has no [{section}] section"
        );
    }
}
