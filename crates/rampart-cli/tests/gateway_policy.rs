//! Policy enforced by the real gateway: access rules per group with an
//! exception list and categories from disk (block page for browsers, plain
//! text for tools), egress rules that send chosen hosts through an upstream
//! proxy, the decision recorded in the access log, and policy reload.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::origin::Origin;
use support::{curl, eventually, hash_password, Rampart};

const POLICY: &str = r#"
[identities]
users = [{ name = "alice", groups = ["engineering"] }]

[lists]
press-allowed = ["press.news.test"]

[categories]
load = ["categories/"]

[[access]]
id = "no-news-eng"
name = "no news for engineering"
when = { groups = ["engineering"], categories = ["news"] }
unless = { lists = ["press-allowed"] }
action = "block"
"#;

/// A gateway with POLICY, users alice and bob, and *.news.test → 127.0.0.1.
fn gateway_with_policy(policy: &str, extra: &str) -> (Rampart, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("categories/news")).unwrap();
    std::fs::write(dir.path().join("categories/news/domains"), "news.test\n").unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let hash = hash_password("pw");
    let gw = Rampart::start(&format!(
        "policy = {path:?}\n[proxy]\nallow_loopback_destinations = true\nusers = [{{ name = \"alice\", password_hash = \"{hash}\" }}, {{ name = \"bob\", password_hash = \"{hash}\" }}]\n[resolve]\n\"www.news.test\" = \"127.0.0.1\"\n\"press.news.test\" = \"127.0.0.1\"\n\"portal.partner.test\" = \"127.0.0.1\"\n{extra}",
        path = policy_path.display().to_string()
    ));
    (gw, dir)
}

#[test]
fn news_is_blocked_for_engineering_except_the_press_list() {
    let origin = Origin::start();
    let (gw, _dir) = gateway_with_policy(POLICY, "");
    let port = origin.port();
    let news = format!("http://www.news.test:{port}/hello");
    let press = format!("http://press.news.test:{port}/hello");

    // A tool gets 403 text/plain naming the rule and the event id.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &news],
    );
    assert!(body.ends_with("403"), "{body}");
    assert!(body.contains("no news for engineering"), "{body}");
    assert!(body.contains("Category: news"), "{body}");
    assert!(body.contains("Event ID: "), "{body}");

    // A browser gets an HTML page with the same facts.
    let (_, page, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-H", "Accept: text/html", &news],
    );
    assert!(
        page.contains("<html") && page.contains("no news for engineering"),
        "{page}"
    );

    // The press list is the exception; other users are not engineering.
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", &press]);
    assert_eq!(body, "hello from origin");
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "bob:pw", &news]);
    assert_eq!(body, "hello from origin");

    // CONNECT to a news host is refused for alice too (host known at the connection stage).
    // HTTPS to a blocked site: the tunnel would be decrypted, so the gateway
    // answers the CONNECT and shows the block page inside TLS (no origin contacted).
    let ca = gw.gateway_ca();
    let (_, page, _) = curl(
        &gw.proxy_url(),
        &[
            "-U",
            "alice:pw",
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
            "https://www.news.test:443/",
        ],
    );
    assert!(page.ends_with("403"), "{page}");
    assert!(page.contains("no news for engineering"), "{page}");

    let log = gw.access_log();
    let blocked = log
        .iter()
        .find(|r| r["status"] == 403 && r["user"] == "alice")
        .expect("blocked flow logged");
    assert_eq!(blocked["policy"]["rule_id"], "no-news-eng");
    assert_eq!(blocked["policy"]["action"], "block");
    assert_eq!(blocked["policy"]["stage"], "access");
    let matched: Vec<String> =
        serde_json::from_value(blocked["policy"]["matched"].clone()).unwrap();
    assert!(
        matched.iter().any(|m| m == "group engineering"),
        "{matched:?}"
    );
    assert!(matched.iter().any(|m| m == "category news"), "{matched:?}");
    assert!(!blocked["policy"]["revision"].as_str().unwrap().is_empty());
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn egress_rule_sends_a_list_through_an_upstream_and_the_rest_direct() {
    let origin = Origin::start();
    let upstream = Rampart::start("[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"portal.partner.test\" = \"127.0.0.1\"\n");
    let policy = format!(
        "[lists]\npartner-portals = [\"portal.partner.test\"]\n[upstreams.fixed-egress]\nproxies = [\"{}\"]\n[[egress]]\nid = \"partners-fixed-ip\"\nwhen = {{ lists = [\"partner-portals\"] }}\nvia = \"fixed-egress\"\n",
        upstream.proxy_url()
    );
    let (gw, _dir) = gateway_with_policy(&policy, "");
    let port = origin.port();
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &[
            "-U",
            "bob:pw",
            &format!("http://portal.partner.test:{port}/hello"),
        ],
    );
    assert_eq!(body, "hello from origin");
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &[
            "-U",
            "bob:pw",
            &format!("http://press.news.test:{port}/hello"),
        ],
    );
    assert_eq!(body, "hello from origin");

    let up_log = upstream.access_log();
    assert_eq!(
        up_log.len(),
        1,
        "only the partner portal goes through the upstream: {up_log:?}"
    );
    assert_eq!(
        up_log[0]["target"],
        format!("http://portal.partner.test:{port}/hello")
    );
    let log = gw.access_log();
    let partner = log
        .iter()
        .find(|r| {
            r["target"]
                .as_str()
                .unwrap()
                .contains("portal.partner.test")
        })
        .unwrap();
    assert_eq!(
        partner["egress"],
        format!("fixed-egress/{}", upstream.proxy)
    );
    let other = log
        .iter()
        .find(|r| r["target"].as_str().unwrap().contains("press.news.test"))
        .unwrap();
    assert_eq!(other["egress"], "direct");
}

#[test]
fn a_broken_policy_on_reload_keeps_the_old_one_serving() {
    let origin = Origin::start();
    let (gw, dir) = gateway_with_policy(POLICY, "");
    let news = format!("http://www.news.test:{}/hello", origin.port());
    std::fs::write(
        dir.path().join("policy.toml"),
        POLICY.replace("categories = [\"news\"]", "categories = [\"newz\"]"),
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .stderr()
            .contains("policy rejected")),
        "{}",
        gw.stderr()
    );
    assert!(
        gw.stderr().contains("newz"),
        "the error names the bad value: {}",
        gw.stderr()
    );
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", " %{http_code}", &news],
    );
    assert!(body.ends_with("403"), "old policy still blocks: {body}");

    // A valid new policy without the rule applies. (It keeps a rule: a policy
    // with none replacing one with rules is refused unless forced.)
    std::fs::write(
        dir.path().join("policy.toml"),
        "[lists]\nnothing = [\"x.test\"]\n[[access]]\nname = \"x\"\nwhen = { lists = [\"nothing\"] }\naction = \"block\"\n",
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || curl(
            &gw.proxy_url(),
            &["-U", "alice:pw", &news]
        )
        .1 == "hello from origin"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn an_invalid_policy_refuses_to_start_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[lists]\npress = [\"a.test\"]\n[[access]]\nname = \"x\"\nwhen = { lists = [\"pres\"] }\naction = \"block\"\n").unwrap();
    let err = Rampart::try_start(&format!("policy = {:?}\n", path.display().to_string()), &[])
        .err()
        .expect("must not start");
    assert!(err.contains("policy.toml:5:"), "{err}");
    assert!(err.contains("did you mean \"press\""), "{err}");
}
