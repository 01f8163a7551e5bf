//! End-to-end tests of `rampart policy check|explain|test`, running the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .expect("run rampart")
}

/// A fresh directory under the system temp dir, unique per test.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rampart-policy-cli-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Broken policies and the exact diagnostic each must produce (file:line:col first).
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "typo-list.toml",
        "[lists]\npress-allowed = [\"press.example\"]\n\n[[access]]\nwhen = { lists = [\"press-alowed\"] }\naction = \"block\"\n",
        "typo-list.toml:5:19: unknown list \"press-alowed\" (did you mean \"press-allowed\"?)",
    ),
    (
        "bad-action.toml",
        "[[access]]\nwhen = { hosts = [\"a.example\"] }\naction = \"deny\"\n",
        "bad-action.toml:3:10: unknown access action \"deny\" (expected one of: allow, block, alert, user-alert)",
    ),
    (
        "syntax.toml",
        "[lists]\nx = [\"a.example\"\n",
        "syntax.toml:2:",
    ),
    (
        "wildcard.toml",
        "[lists]\nw = [\"a.*.example\"]\n[[access]]\nwhen = { lists = [\"w\"] }\naction = \"block\"\n",
        "wildcard.toml:2:6: invalid entry in list \"w\": \"a.*.example\": a wildcard is only allowed as the whole first label",
    ),
    (
        "no-categories.toml",
        "[categories]\nload = [\"missing-dir/\"]\n",
        "no-categories.toml:2:9: category source \"missing-dir/\"",
    ),
    (
        "upstream.toml",
        "[upstreams.squid]\nproxies = [\"http://127.0.0.1:3128\"]\n[[egress]]\nwhen = { hosts = [\"a.example\"] }\nvia = \"sqiud\"\n",
        "upstream.toml:5:7: unknown upstream \"sqiud\" (did you mean \"squid\"?)",
    ),
    (
        "key.toml",
        "[[access]]\nwhen = { host = [\"a.example\"] }\naction = \"block\"\n",
        "key.toml:2:10: unknown key \"host\" in `when` conditions (did you mean \"hosts\"?)",
    ),
    (
        "proxy-url.toml",
        "[upstreams.u]\nproxies = [\"squid.example\"]\n",
        "proxy-url.toml:2:12: upstream proxy \"squid.example\" must start with http://",
    ),
];

#[test]
fn check_gives_file_line_column_errors_for_a_corpus_of_broken_policies_and_exits_1() {
    let dir = scratch("broken");
    for (name, src, expected) in BROKEN {
        let path = write(&dir, name, src);
        let out = rampart(&["policy", "check", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let full = format!("{}/{expected}", dir.display());
        assert!(
            stderr.contains(&full),
            "{name}: expected {full:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_the_example_policy_and_prints_its_revision() {
    let out = rampart(&[
        "policy",
        "check",
        examples().join("policy.toml").to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, text(&out.stderr));
    assert!(stdout.contains(": ok, revision "), "{stdout}");
}

#[test]
fn check_warns_on_shadowed_rules_and_unused_lists_without_failing() {
    let dir = scratch("warn");
    let path = write(
        &dir,
        "p.toml",
        "[lists]\nspare = [\"s.example\"]\n[[access]]\nid = \"all\"\naction = \"alert\"\n[[access]]\nid = \"late\"\nwhen = { hosts = [\"x.example\"] }\naction = \"block\"\n",
    );
    let out = rampart(&["policy", "check", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("p.toml:6:1: warning: rule \"late\" is never reached: rule \"all\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("p.toml:2:1: warning: list \"spare\" is not used"),
        "{stderr}"
    );
    let strict = rampart(&["policy", "check", "--deny-warnings", path.to_str().unwrap()]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn explain_names_each_stage_rule_and_matched_objects() {
    let policy = examples().join("policy.toml");
    let out = rampart(&[
        "policy",
        "explain",
        policy.to_str().unwrap(),
        "--url",
        "https://www.news.example/today",
        "--user",
        "alice",
        "--process",
        "firefox",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("category news (via news.example)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("steering: steer by no rule matched"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decryption: decrypt by no rule matched"),
        "{stdout}"
    );
    assert!(
        stdout.contains("access: block by rule \"no news for engineering\" (id no-news-eng, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("matched: group engineering, custom-category blocked-news"),
        "{stdout}"
    );
    assert!(
        stdout.contains("egress: direct by no rule matched"),
        "{stdout}"
    );
}

#[test]
fn explain_shows_rules_that_nearly_matched() {
    let policy = examples().join("policy.toml");
    let out = rampart(&[
        "policy",
        "explain",
        policy.to_str().unwrap(),
        "--url",
        "https://www.news.example/",
        "--user",
        "bob",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("nearly: rule \"no news for engineering\"")
            && stdout.contains("only groups did not match"),
        "{stdout}"
    );
    let press = rampart(&[
        "policy",
        "explain",
        policy.to_str().unwrap(),
        "--url",
        "https://press.news.example/",
        "--group",
        "engineering",
    ]);
    let stdout = text(&press.stdout);
    assert!(
        stdout.contains("excluded by `unless` (list press-allowed)"),
        "{stdout}"
    );
}

#[test]
fn explain_adds_the_response_stage_only_when_given_inspection_facts() {
    let dir = scratch("inspection");
    let policy = write(
        &dir,
        "policy.toml",
        r#"
[[access]]
name = "block malware"
when = { verdicts = ["malicious"] }
action = "block"

[[access]]
name = "no card numbers out"
when = { dlp = ["payment-card"], direction = "upload" }
action = "block"
"#,
    );
    let base = [
        "policy",
        "explain",
        policy.to_str().unwrap(),
        "--url",
        "https://files.example/up",
    ];
    let plain = rampart(&base);
    let stdout = text(&plain.stdout);
    assert!(plain.status.success(), "{stdout}");
    assert!(!stdout.contains("at the response"), "{stdout}");
    let mut args = base.to_vec();
    args.extend([
        "--verdict",
        "sensitive",
        "--dlp",
        "payment-card",
        "--direction",
        "upload",
        "--size",
        "2KiB",
    ]);
    let inspected = rampart(&args);
    let stdout = text(&inspected.stdout);
    assert!(
        stdout.contains("access at the response: block by rule \"no card numbers out\"")
            && stdout.contains("matched: dlp payment-card, direction upload")
            && stdout.contains("size 2048 bytes"),
        "{stdout}"
    );
    let mut args = base.to_vec();
    args.extend(["--verdict", "malicous"]);
    let bad = rampart(&args);
    let stderr = text(&bad.stderr);
    assert!(!bad.status.success(), "{stderr}");
    assert!(stderr.contains("'malicious'"), "{stderr}");
}

#[test]
fn policy_test_passes_on_the_example_cases() {
    let out = rampart(&[
        "policy",
        "test",
        examples().join("policy.toml").to_str().unwrap(),
        examples().join("policy-tests/cases.toml").to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("ok   engineering cannot read news"),
        "{stdout}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn policy_test_reports_each_failed_expectation_and_exits_1() {
    let dir = scratch("cases");
    let policy = write(
        &dir,
        "p.toml",
        "[[access]]\nid = \"no-casino\"\nwhen = { hosts = [\".casino.example\"] }\naction = \"block\"\n",
    );
    let cases = write(
        &dir,
        "cases.toml",
        "[[case]]\nname = \"casino blocked\"\nurl = \"https://www.casino.example/\"\nexpect = { access = \"block\", access_rule = \"no-casino\" }\n\n[[case]]\nname = \"wrong on purpose\"\nurl = \"https://casino.example/\"\nexpect = { access = \"allow\" }\n",
    );
    let out = rampart(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   casino blocked"), "{stdout}");
    assert!(stdout.contains("FAIL wrong on purpose"), "{stdout}");
    assert!(
        stdout.contains("access: expected allow, got block (rule no-casino)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}
