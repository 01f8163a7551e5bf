//! The console's devices, policy and audit pages over HTTP with curl, against the
//! real server: devices listed by state, isolate and release from the device page
//! through the same isolation state as the API and CLI (CSRF, role, confirmation
//! and reason enforced), the policy's rules per stage and its own test cases, and
//! every console action stored as an audit event that `rampart events search` finds.

#[path = "console/common.rs"]
mod common;
mod support;

use std::time::Duration;

use common::{Client, Console, ADMIN_PASSWORD, ANALYST_PASSWORD};
use support::enrolled_agent::EnrolledAgent;
use support::eventually;

/// `rampart device status ID --json` against the server's API.
fn isolation_status(c: &Console, device: &str) -> serde_json::Value {
    let out = c.device_cmd(&["status", device, "--json"]);
    assert!(
        out.status.success(),
        "device status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("device status JSON")
}

/// Audit events (OCSF documents) matching `query`, waiting for at least `n`.
fn audit_events(c: &Console, query: &str, n: usize) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        found = c.server.search_events(query, "ocsf");
        found.len() >= n
    });
    assert!(ok, "fewer than {n} events for {query:?}: {found:#?}");
    found
}

#[test]
fn devices_are_listed_online_offline_isolated_and_revoked_with_last_seen() {
    let c = Console::start();
    let offline = c.enroll_device("alice");
    let revoked = c.enroll_device("bob");
    let out = c.device_cmd(&["revoke", &revoked]);
    assert!(out.status.success(), "{out:?}");
    // Isolated through the CLI: the console shows the same state.
    let out = c.device_cmd(&["isolate", &offline, "--reason", "from the cli"]);
    assert!(out.status.success(), "{out:?}");
    // A running agent (unprivileged, so it can never firewall this machine).
    let agent = EnrolledAgent::start_as(&c.server, "carol", "eng", "", Some(("nobody", "nogroup")));

    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let online = eventually(Duration::from_secs(15), || {
        analyst
            .get("/devices?state=online")
            .body
            .contains(&agent.device)
    });
    assert!(online, "{}", analyst.get("/devices").body);
    let page = analyst.get("/devices?state=online");
    assert!(!page.body.contains(&offline), "{}", page.body);
    assert!(
        page.body.contains("<strong>1</strong> online"),
        "{}",
        page.body
    );

    let page = analyst.get("/devices?state=offline");
    assert!(page.body.contains(&offline), "{}", page.body);
    assert!(!page.body.contains(&agent.device), "{}", page.body);
    assert!(!page.body.contains(&revoked), "{}", page.body);

    let page = analyst.get("/devices?state=revoked");
    assert!(page.body.contains(&revoked), "{}", page.body);
    assert!(!page.body.contains(&offline), "{}", page.body);

    let page = analyst.get("/devices?state=isolated");
    assert!(page.body.contains(&offline), "{}", page.body);
    assert!(!page.body.contains(&revoked), "{}", page.body);
    // The isolation column: asked by the CLI, not confirmed by an agent.
    assert!(page.body.contains(">pending<"), "{}", page.body);

    // Every row has its last-seen time, as `device list` shows it.
    let out = support::run(
        std::process::Command::new(support::rampart_bin())
            .args(["device", "list", "--json", "--data-dir"])
            .arg(c.server.data_dir()),
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let all = analyst.get("/devices");
    assert_eq!(listed.len(), 3);
    for d in &listed {
        let seen = d["last_seen"].as_str().expect("last_seen");
        assert!(all.body.contains(seen), "{seen} missing in {}", all.body);
    }
}

#[test]
fn an_admin_isolates_and_releases_from_the_device_page_and_the_cli_sees_the_same_state() {
    let c = Console::start();
    let device = c.enroll_device("alice");
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let page = admin.get(&format!("/devices/{device}"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Isolate device"), "{}", page.body);
    assert!(page.body.contains("data-confirm"), "{}", page.body);
    let csrf = page.csrf();
    let isolate = format!("/devices/{device}/isolate");

    // Refused: no CSRF token, a forged one, no confirmation, no reason.
    let r = admin.post(&isolate, &[("reason", "x"), ("confirm", "yes")]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin.post(
        &isolate,
        &[("csrf", "forged"), ("reason", "x"), ("confirm", "yes")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin.post(&isolate, &[("csrf", &csrf), ("reason", "beaconing")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("confirmation"), "{}", r.body);
    let r = admin.post(
        &isolate,
        &[("csrf", &csrf), ("reason", "   "), ("confirm", "yes")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("reason"), "{}", r.body);
    assert_eq!(isolation_status(&c, &device)["desired"], "released");

    let r = admin.post(
        &isolate,
        &[
            ("csrf", &csrf),
            ("reason", "beaconing to a C2 host"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert!(
        r.header("location")
            .join("")
            .starts_with(&format!("/devices/{device}?done=")),
        "{r:?}"
    );
    let status = isolation_status(&c, &device);
    assert_eq!(status["desired"], "isolated", "{status}");
    assert_eq!(status["reason"], "beaconing to a C2 host", "{status}");
    assert_eq!(status["by"], "root", "{status}");
    assert_eq!(status["state"], "pending", "{status}");

    let page = admin.get(&format!("/devices/{device}"));
    assert!(
        page.body
            .contains("<dd id=\"isolation-desired\">isolated</dd>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("beaconing to a C2 host"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Release device"), "{}", page.body);

    // The action is an audit event, and the device's own event names who and why.
    let audit = audit_events(
        &c,
        &format!("type = audit and device = \"{device}\" and url like isolate"),
        1,
    );
    assert_eq!(audit[0]["class_uid"], 6003, "{:#?}", audit[0]);
    assert_eq!(audit[0]["actor"]["user"]["name"], "root");
    assert_eq!(audit[0]["action"], "Allowed");
    assert!(
        audit[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("beaconing to a C2 host")),
        "{:#?}",
        audit[0]
    );
    audit_events(&c, &format!("type = device and device = \"{device}\""), 1);
    // The device page's timeline shows both.
    let page = admin.get(&format!("/devices/{device}"));
    assert!(
        page.body.contains("console: root device.isolate"),
        "{}",
        page.body
    );

    let r = admin.post(
        &format!("/devices/{device}/release"),
        &[
            ("csrf", &csrf),
            ("reason", "false positive"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let status = isolation_status(&c, &device);
    assert_eq!(status["desired"], "released", "{status}");
    assert_eq!(status["reason"], "false positive", "{status}");
    audit_events(
        &c,
        &format!("type = audit and device = \"{device}\" and url like release"),
        1,
    );
    assert_eq!(admin.get("/devices/no-such-device").status, 404);
}

#[test]
fn an_analyst_sees_a_device_but_cannot_isolate_it_and_the_refusal_is_audited() {
    let c = Console::start();
    let device = c.enroll_device("alice");
    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let page = analyst.get(&format!("/devices/{device}"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(!page.body.contains("Isolate device"), "{}", page.body);
    let r = analyst.post(
        &format!("/devices/{device}/isolate"),
        &[
            ("csrf", &page.csrf()),
            ("reason", "curious"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(isolation_status(&c, &device)["desired"], "released");
    let refused = audit_events(&c, "type = audit and action = block and user = ana", 1);
    assert_eq!(
        refused[0]["http_response"]["code"], 403,
        "{:#?}",
        refused[0]
    );
    assert!(
        refused[0]["http_request"]["url"]["url_string"]
            .as_str()
            .is_some_and(|u| u.ends_with("/isolate")),
        "{:#?}",
        refused[0]
    );
    // Pages without a session still redirect to the login.
    let anon = Client::new(&c.base());
    for path in ["/devices", &format!("/devices/{device}")] {
        let r = anon.get(path);
        assert_eq!(r.status, 303, "{path}: {r:?}");
    }
    let r = anon.post(
        &format!("/devices/{device}/isolate"),
        &[("reason", "x"), ("confirm", "yes")],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(isolation_status(&c, &device)["desired"], "released");
}

#[test]
fn logins_failed_logins_and_logouts_are_audit_events_found_by_events_search() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    assert_eq!(admin.login("root", "not-the-password").status, 401);
    assert_eq!(admin.login("root", ADMIN_PASSWORD).status, 303);
    let page = admin.get("/events");
    assert_eq!(admin.post("/logout", &[("csrf", &page.csrf())]).status, 303);

    let events = audit_events(&c, "type = audit and user = root", 3);
    let activity = |e: &serde_json::Value| {
        (
            e["activity_name"].as_str().unwrap_or("").to_string(),
            e["action"].as_str().unwrap_or("").to_string(),
            e["http_response"]["code"].as_i64().unwrap_or(0),
        )
    };
    let seen: Vec<_> = events.iter().map(activity).collect();
    for wanted in [
        ("Create".to_string(), "Denied".to_string(), 401),
        ("Create".to_string(), "Allowed".to_string(), 303),
        ("Delete".to_string(), "Allowed".to_string(), 303),
    ] {
        assert!(seen.contains(&wanted), "{wanted:?} not in {seen:?}");
    }
    for e in &events {
        assert_eq!(e["class_name"], "API Activity");
        assert_eq!(e["src_endpoint"]["ip"], "127.0.0.1");
    }
    // The console's own search shows them, with the message as the text.
    let again = Client::new(&c.base());
    again.login("root", ADMIN_PASSWORD);
    let page = again.get_query("/events", &[("q", "type = audit and action = block")]);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("console: root login console: failed"),
        "{}",
        page.body
    );
}

const CASES: &str = r#"
[[case]]
name = "blocked hosts stay blocked"
url = "http://blocked.test/"
expect = { access = "block", access_rule = "block-list" }

[[case]]
name = "other hosts are allowed"
url = "http://ok.test/"
expect = { access = "allow" }
"#;

#[test]
fn the_policy_page_shows_rules_per_stage_and_the_policy_test_cases_pass_or_fail() {
    let c = Console::start_with_tests(Some(CASES));
    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let page = analyst.get("/policy");
    assert_eq!(page.status, 200, "{page:?}");
    for stage in ["steering", "decryption", "access", "egress"] {
        assert!(
            page.body.contains(&format!("id=\"stage-{stage}\"")),
            "{stage}: {}",
            page.body
        );
    }
    // The access rules in order, with their conditions, actions and decision point.
    let access = &page.body[page.body.find("id=\"stage-access\"").expect("access")..];
    let blocked = access.find("blocked hosts").expect("blocked hosts rule");
    let watched = access.find("watched hosts").expect("watched hosts rule");
    assert!(blocked < watched, "{access}");
    assert!(access.contains("list blocked"), "{access}");
    assert!(access.contains("<td>block</td>"), "{access}");
    assert!(access.contains("<td>alert</td>"), "{access}");
    assert!(access.contains("<td>connection</td>"), "{access}");
    assert!(access.contains("Default: allow"), "{access}");
    assert!(page.body.contains("id=\"revision\""), "{}", page.body);
    assert!(page.body.contains("2 passed, 0 failed"), "{}", page.body);
    assert!(
        page.body.contains("<td class=\"pass\">pass</td>"),
        "{}",
        page.body
    );

    // A case the serving policy fails shows as FAIL with the reason.
    let mut cases = CASES.to_string();
    cases.push_str(
        "\n[[case]]\nname = \"watched hosts are blocked\"\nurl = \"http://watched.test/\"\nexpect = { access = \"block\" }\n",
    );
    std::fs::write(c.cases_path(), cases).expect("rewrite cases");
    let page = analyst.get("/policy");
    assert!(page.body.contains("2 passed, 1 failed"), "{}", page.body);
    assert!(
        page.body.contains("<td class=\"fail\">FAIL</td>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("watched hosts are blocked"),
        "{}",
        page.body
    );
    assert!(page.body.contains("expected block"), "{}", page.body);
}

#[test]
fn an_admin_creates_an_enrollment_token_and_revokes_a_device_from_the_console_and_an_analyst_cannot(
) {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);

    // The token form is on the devices page for admins only.
    let page = admin.get("/devices");
    assert!(
        page.body.contains("Create enrollment token"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let analyst_page = analyst.get("/devices");
    assert!(
        !analyst_page.body.contains("Create enrollment token"),
        "{}",
        analyst_page.body
    );
    let r = analyst.post(
        "/devices/tokens",
        &[("csrf", &analyst_page_csrf(&analyst)), ("user", "carol")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin.post("/devices/tokens", &[("user", "carol")]);
    assert_eq!(r.status, 403, "no CSRF token: {r:?}");

    let r = admin.post(
        "/devices/tokens",
        &[
            ("csrf", &csrf),
            ("user", "carol"),
            ("groups", "laptops"),
            ("hours", "2"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let marker = "<pre id=\"enrollment-token\">";
    let token = r
        .body
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(t, _)| t.trim().to_string())
        .unwrap_or_else(|| panic!("no token on the page: {}", r.body));

    // The token enrolls a real agent (once), as carol in laptops.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let device = support::enroll_agent(
        std::process::Command::new(support::rampart_bin()),
        &c.base(),
        &token,
        &config,
        &dir.path().join("state"),
    );
    let list = c.device_cmd(&["list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        listed.contains(&device) && listed.contains("carol"),
        "{listed}"
    );

    // Revoke: refused to an analyst, without confirmation or reason; done by an admin.
    let revoke = format!("/devices/{device}/revoke");
    let device_page = admin.get(&format!("/devices/{device}"));
    assert!(
        device_page.body.contains("Revoke device"),
        "{}",
        device_page.body
    );
    let csrf = device_page.csrf();
    let r = analyst.post(
        &revoke,
        &[
            ("csrf", &analyst_page_csrf(&analyst)),
            ("reason", "x"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin.post(&revoke, &[("csrf", &csrf), ("reason", "stolen")]);
    assert_eq!(r.status, 400, "{r:?}");
    let r = admin.post(
        &revoke,
        &[
            ("csrf", &csrf),
            ("reason", "laptop stolen, SEC-124"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let page = admin.get(&format!("/devices/{device}"));
    assert!(page.body.contains("<dt>Revoked</dt>"), "{}", page.body);
    assert!(!page.body.contains("Revoke device"), "{}", page.body);
    let revoked = admin.get("/devices?state=revoked");
    assert!(revoked.body.contains(&device), "{}", revoked.body);

    // Both actions are audit events; the token itself is never in one.
    // The analyst's refused attempt is audited too, and may be stored first:
    // wait for the admin's own entry, not for any revoke entry.
    let mut revokes = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        revokes = c
            .server
            .search_events("type = audit and url like revoke", "ocsf");
        revokes
            .iter()
            .any(|e| e.to_string().contains("laptop stolen"))
    });
    assert!(ok, "no audit entry of the admin's revoke: {revokes:#?}");
    let tokens = audit_events(&c, "type = audit and url like tokens", 1);
    assert!(
        tokens.iter().all(|e| !e.to_string().contains(&token)),
        "an audit event holds the enrollment token: {tokens:#?}"
    );
}

/// The CSRF token of an analyst's session (from a page every role can see).
fn analyst_page_csrf(analyst: &Client) -> String {
    analyst.get("/policy").csrf()
}
