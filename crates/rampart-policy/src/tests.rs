//! Rule semantics end to end through the public API: parse, compile, evaluate.

use std::fs;
use std::path::Path;

use crate::*;

fn compile(src: &str) -> (Policy, Vec<Diagnostic>) {
    match Policy::from_str(src, "policy.toml", Path::new(".")) {
        Ok(p) => p,
        Err(e) => panic!("policy failed to compile:\n{e}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    match Policy::from_str(src, "policy.toml", Path::new(".")) {
        Ok(_) => panic!("policy compiled but errors were expected"),
        Err(e) => e.errors().map(|d| d.to_string()).collect(),
    }
}

fn who(user: Option<&str>, groups: &[&str]) -> Identity {
    Identity {
        user: user.map(String::from),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    }
}

fn access(p: &Policy, id: &Identity, host: &str, path: &str) -> Decision<AccessAction> {
    let conn = ConnectionFacts {
        identity: id,
        process: None,
        host: Some(host),
        dst_ip: None,
        port: 443,
    };
    match p
        .evaluate_request(&RequestFacts {
            connection: conn,
            method: "GET",
            path,
        })
        .access
    {
        Outcome::Decided(d) => d,
        other => panic!("access pending: {other:?}"),
    }
}

const NEWS_POLICY: &str = r#"
[identities]
users = [{ name = "alice", groups = ["engineering"] }, { name = "bob", groups = ["sales"] }]

[lists]
news-sites = [".news.example", "daily.example"]
press-allowed = ["press.news.example", "*.releases.example/2024/*"]

[categories.custom]
all-news = { lists = ["news-sites"] }

[[access]]
id = "no-news-eng"
name = "no news for engineering"
when = { groups = ["engineering"], categories = ["all-news"] }
unless = { lists = ["press-allowed"] }
action = "block"

[[access]]
name = "everyone else is coached"
when = { categories = ["all-news"] }
action = "user-alert"
"#;

#[test]
fn group_rule_blocks_news_for_engineering_except_press_list() {
    let (p, _) = compile(NEWS_POLICY);
    let alice = who(Some("alice"), &[]);
    let d = access(&p, &alice, "www.news.example", "/");
    assert_eq!(
        (d.action, &*d.rule_id),
        (AccessAction::Block, "no-news-eng")
    );
    assert!(d.matched.contains(&MatchedObject {
        kind: ObjectKind::Group,
        name: "engineering".into()
    }));
    assert!(d.matched.contains(&MatchedObject {
        kind: ObjectKind::CustomCategory,
        name: "all-news".into()
    }));
    // The press host is in the `unless` list: the next rule (user-alert) applies.
    let d = access(&p, &alice, "press.news.example", "/");
    assert_eq!(d.action, AccessAction::UserAlert);
    // Another user falls through to the second rule; a non-news host to the default.
    assert_eq!(
        access(&p, &who(Some("bob"), &[]), "news.example", "/").action,
        AccessAction::UserAlert
    );
    let d = access(&p, &alice, "example.org", "/");
    assert!(d.default);
    assert_eq!(d.action, AccessAction::Allow);
}

#[test]
fn groups_from_the_gateway_count_like_policy_groups() {
    let (p, _) = compile(NEWS_POLICY);
    let carol = who(Some("carol"), &["Engineering"]);
    assert_eq!(
        access(&p, &carol, "daily.example", "/").action,
        AccessAction::Block
    );
}

#[test]
fn host_matching_ignores_case_trailing_dot_and_idn_form() {
    let (p, _) = compile(
        r#"
        [[access]]
        when = { hosts = ["bücher.example", "*.Wild.Example"] }
        action = "block"
        "#,
    );
    let id = Identity::default();
    for host in [
        "BÜCHER.example.",
        "xn--bcher-kva.example",
        "a.b.wild.example",
    ] {
        assert_eq!(
            access(&p, &id, host, "/").action,
            AccessAction::Block,
            "{host}"
        );
    }
    assert_eq!(
        access(&p, &id, "wild.example", "/").action,
        AccessAction::Allow
    );
}

#[test]
fn path_entries_wait_for_the_request_and_then_match_the_path() {
    let (p, _) = compile(
        r#"
        [lists]
        docs = ["docs.example/private"]
        [[access]]
        id = "private-docs"
        when = { lists = ["docs"] }
        action = "block"
        "#,
    );
    let id = Identity::default();
    let conn = ConnectionFacts {
        identity: &id,
        process: None,
        host: Some("docs.example"),
        dst_ip: None,
        port: 443,
    };
    match p.evaluate_connection(&conn).access {
        Outcome::Pending { until, rule_id, .. } => {
            assert_eq!(until, EvalPoint::Request);
            assert_eq!(&*rule_id, "private-docs");
        }
        other => panic!("expected pending, got {other:?}"),
    }
    assert_eq!(
        access(&p, &id, "docs.example", "/private/a").action,
        AccessAction::Block
    );
    assert_eq!(
        access(&p, &id, "docs.example", "/public").action,
        AccessAction::Allow
    );
}

#[test]
fn first_match_wins_and_disabled_rules_are_skipped() {
    let (p, _) = compile(
        r#"
        [[access]]
        id = "off"
        disabled = true
        when = { hosts = ["a.example"] }
        action = "block"
        [[access]]
        id = "first"
        when = { hosts = ["a.example"] }
        action = "alert"
        [[access]]
        id = "second"
        when = { hosts = [".example"] }
        action = "block"
        "#,
    );
    let d = access(&p, &Identity::default(), "a.example", "/");
    assert_eq!((&*d.rule_id, d.action), ("first", AccessAction::Alert));
}

#[test]
fn methods_ports_networks_and_processes_are_conditions() {
    let (p, _) = compile(
        r#"
        [identities]
        networks = [{ name = "office", cidrs = ["203.0.113.0/24"] }]
        [[access]]
        id = "uploads"
        when = { methods = ["POST", "PUT"], networks = ["office"], ports = [443, "8000-8999"] }
        action = "block"
        "#,
    );
    let id = Identity {
        source_ip: Some("203.0.113.9".parse().unwrap()),
        ..Default::default()
    };
    let conn = ConnectionFacts {
        identity: &id,
        process: None,
        host: Some("x.example"),
        dst_ip: None,
        port: 8443,
    };
    let post = p.evaluate_request(&RequestFacts {
        connection: conn,
        method: "post",
        path: "/",
    });
    assert_eq!(post.access.decided().unwrap().action, AccessAction::Block);
    let get = p.evaluate_request(&RequestFacts {
        connection: conn,
        method: "GET",
        path: "/",
    });
    assert_eq!(get.access.decided().unwrap().action, AccessAction::Allow);
    let other_port = ConnectionFacts { port: 9443, ..conn };
    let r = p.evaluate_request(&RequestFacts {
        connection: other_port,
        method: "POST",
        path: "/",
    });
    assert_eq!(r.access.decided().unwrap().action, AccessAction::Allow);
}

#[test]
fn builtin_default_decrypts_everything_but_pinned_apps() {
    let p = Policy::builtin_default();
    assert!(p.apps().count() >= 50);
    assert!(p.apps().any(|a| &*a.id == "dropbox" && a.pins_certificates));
    let id = Identity::default();
    let conn = |host| ConnectionFacts {
        identity: &id,
        process: None,
        host: Some(host),
        dst_ip: None,
        port: 443,
    };
    let d = p
        .evaluate_connection(&conn("api.dropboxapi.com"))
        .decryption;
    assert_eq!(
        (d.action, &*d.rule_id),
        (DecryptionAction::DoNotDecrypt, "builtin-pinned-apps")
    );
    let d = p.evaluate_connection(&conn("github.com")).decryption;
    assert_eq!(d.action, DecryptionAction::Decrypt);
    assert!(d.default);
    let v = p.evaluate_connection(&conn("github.com"));
    assert_eq!(v.access.decided().unwrap().action, AccessAction::Allow);
    assert_eq!(v.egress.decided().unwrap().action, Egress::Direct);
}

#[test]
fn app_categories_from_the_catalog_are_matchable() {
    let (p, _) = compile(
        r#"
        [[access]]
        when = { categories = ["generative-ai"] }
        action = "user-alert"
        "#,
    );
    assert_eq!(
        access(&p, &Identity::default(), "chatgpt.com", "/").action,
        AccessAction::UserAlert
    );
}

#[test]
fn egress_rules_choose_upstream_source_or_direct() {
    let (p, w) = compile(
        r#"
        [lists]
        partners = ["portal.partner.example"]
        fixed = ["bank.example"]
        [upstreams.aws-squid]
        proxies = ["http://127.0.0.1:3128", "http://egress-b.example:3128"]
        [[egress]]
        when = { lists = ["partners"] }
        via = "aws-squid"
        [[egress]]
        when = { lists = ["fixed"] }
        source = "192.0.2.7"
        "#,
    );
    assert!(w.is_empty(), "{w:?}");
    let id = Identity::default();
    let eg = |host| {
        let conn = ConnectionFacts {
            identity: &id,
            process: None,
            host: Some(host),
            dst_ip: None,
            port: 443,
        };
        p.evaluate_request(&RequestFacts {
            connection: conn,
            method: "GET",
            path: "/",
        })
        .egress
        .action
    };
    assert_eq!(
        eg("portal.partner.example"),
        Egress::Upstream("aws-squid".into())
    );
    assert_eq!(
        eg("bank.example"),
        Egress::Source("192.0.2.7".parse().unwrap())
    );
    assert_eq!(eg("other.example"), Egress::Direct);
    let g = &p.upstream_groups()[0];
    assert_eq!(
        (g.proxies[0].host.as_str(), g.proxies[0].port),
        ("127.0.0.1", 3128)
    );
}

#[test]
fn steering_matches_process_globs_and_hosts_and_carries_log_flag() {
    let (p, _) = compile(
        r#"
        [[steering]]
        name = "python to PyPI goes direct"
        when = { processes = ["python3*", "pip*"], apps = ["pypi"] }
        action = "bypass"
        log = false
        [[steering]]
        when = { processes = ["nc"] }
        action = "block"
        "#,
    );
    let id = Identity::default();
    let steer = |name: &str, host| {
        let proc_ = Process {
            name: name.into(),
            path: None,
        };
        p.evaluate_steering(&SteeringFacts {
            identity: &id,
            process: &proc_,
            host: Some(host),
            dst_ip: None,
            port: 443,
        })
    };
    let v = steer("python3.12", "files.pythonhosted.org");
    assert_eq!((v.action, v.log), (SteeringAction::Bypass, false));
    assert_eq!(
        steer("python3.12", "example.org").action,
        SteeringAction::Steer
    );
    assert_eq!(steer("nc", "example.org").action, SteeringAction::Block);
}

#[test]
fn unknown_list_reports_place_and_suggestion() {
    let errs = errors(
        "[lists]\npress-allowed = [\"a.example\"]\n\n[[access]]\nwhen = { lists = [\"press-alowed\"] }\naction = \"block\"\n",
    );
    assert_eq!(
        errs,
        ["policy.toml:5:19: unknown list \"press-alowed\" (did you mean \"press-allowed\"?)"]
    );
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    let errs = errors(
        r#"
[[access]]
when = { categories = ["news"] }
action = "blok"

[[egress]]
via = "nowhere"

[lists]
bad = ["a.*.example"]

[bogus]
"#,
    );
    let text = errs.join("\n");
    assert!(
        text.contains("policy.toml:3:24: unknown category \"news\""),
        "{text}"
    );
    assert!(
        text.contains("policy.toml:4:10: unknown access action \"blok\""),
        "{text}"
    );
    assert!(text.contains("(did you mean \"block\"?)"), "{text}");
    assert!(text.contains("unknown upstream \"nowhere\""), "{text}");
    assert!(text.contains("first label"), "{text}");
    assert!(text.contains("unknown key \"bogus\""), "{text}");
}

#[test]
fn toml_syntax_errors_have_locations() {
    let errs = errors("[lists]\nx = [\"a.example\"\n");
    assert!(errs[0].starts_with("policy.toml:"), "{errs:?}");
    assert!(errs[0].contains("TOML syntax"), "{errs:?}");
}

#[test]
fn conditions_at_rule_top_level_get_a_pointed_hint() {
    let errs = errors("[[steering]]\nprocesses = [\"pip\"]\naction = \"bypass\"\n");
    assert!(errs[0].contains("conditions go inside `when"), "{errs:?}");
}

#[test]
fn shadowed_rules_and_unused_lists_are_warned() {
    let (_, warnings) = compile(
        r#"
        [lists]
        a = ["a.example"]
        unused = ["u.example"]
        [[access]]
        id = "broad"
        when = { groups = ["eng"] }
        action = "block"
        [[access]]
        id = "narrow"
        when = { groups = ["eng"], lists = ["a"] }
        action = "allow"
        "#,
    );
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let text = text.join("\n");
    assert!(
        text.contains("rule \"narrow\" is never reached: rule \"broad\""),
        "{text}"
    );
    assert!(text.contains("list \"unused\" is not used"), "{text}");
}

#[test]
fn decryption_rules_cannot_use_methods() {
    let errs = errors("[[decryption]]\nwhen = { methods = [\"POST\"] }\naction = \"decrypt\"\n");
    assert!(errs[0].contains("cannot use `methods`"), "{errs:?}");
}

#[test]
fn categories_load_from_ut1_directory_and_hosts_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("cats/news")).unwrap();
    fs::write(dir.path().join("cats/news/domains"), "news.example\nb@d!\n").unwrap();
    fs::write(dir.path().join("cats/news/urls"), "portal.example/news\n").unwrap();
    fs::write(dir.path().join("ads.hosts"), "0.0.0.0 ads.example\n").unwrap();
    fs::write(
        dir.path().join("policy.toml"),
        r#"
        [categories]
        load = ["cats/", { path = "ads.hosts", name = "ads" }]
        [[access]]
        when = { categories = ["news", "ads"] }
        action = "block"
        "#,
    )
    .unwrap();
    let (p, warnings) = Policy::load(&dir.path().join("policy.toml")).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("skipped 1 invalid entry")),
        "{warnings:?}"
    );
    let id = Identity::default();
    assert_eq!(
        access(&p, &id, "www.news.example", "/").action,
        AccessAction::Block
    );
    assert_eq!(
        access(&p, &id, "ads.example", "/").action,
        AccessAction::Block
    );
    assert_eq!(
        access(&p, &id, "portal.example", "/news/1").action,
        AccessAction::Block
    );
    assert_eq!(
        access(&p, &id, "portal.example", "/mail").action,
        AccessAction::Allow
    );
    // The revision changes when category data changes, not only the policy text.
    let before = p.revision().to_string();
    fs::write(dir.path().join("ads.hosts"), "0.0.0.0 ads2.example\n").unwrap();
    let (p2, _) = Policy::load(&dir.path().join("policy.toml")).unwrap();
    assert_ne!(before, p2.revision());
}

#[test]
fn missing_category_directory_is_an_error_at_the_load_entry() {
    let errs = errors("[categories]\nload = [\"no-such-dir/\"]\n");
    assert!(
        errs[0].starts_with("policy.toml:2:9: category source \"no-such-dir/\""),
        "{errs:?}"
    );
}

#[test]
fn policy_directory_merges_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("10-lists.toml"),
        "[lists]\nbad = [\"bad.example\"]\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("20-rules.toml"),
        "[[access]]\nwhen = { lists = [\"bad\"] }\naction = \"block\"\n",
    )
    .unwrap();
    let (p, _) = Policy::load(dir.path()).unwrap();
    assert_eq!(
        access(&p, &Identity::default(), "bad.example", "/").action,
        AccessAction::Block
    );
}

#[test]
fn revision_is_stable_for_the_same_text() {
    let (a, _) = compile(NEWS_POLICY);
    let (b, _) = compile(NEWS_POLICY);
    assert_eq!(a.revision(), b.revision());
    let (c, _) = compile(&NEWS_POLICY.replace("user-alert", "alert"));
    assert_ne!(a.revision(), c.revision());
}

#[test]
fn indexed_evaluation_agrees_with_rule_order_over_many_rules() {
    let mut src = String::from("[lists]\n");
    for i in 0..300 {
        src.push_str(&format!(
            "l{i} = [\"h{i}.example\", \".shared{}.example\"]\n",
            i % 10
        ));
    }
    for i in 0..300 {
        let cond = match i % 3 {
            0 => format!("{{ lists = [\"l{i}\"] }}"),
            1 => format!("{{ groups = [\"g{}\"] }}", i % 7),
            _ => format!(
                "{{ users = [\"u{}\"], lists = [\"l{}\"] }}",
                i % 5,
                (i * 7) % 300
            ),
        };
        src.push_str(&format!(
            "[[access]]\nid = \"r{i}\"\nwhen = {cond}\naction = \"block\"\n"
        ));
    }
    let (p, _) = compile(&src);
    for (user, group, host) in [
        ("u1", "g3", "h4.example"),
        ("u0", "g9", "x.shared3.example"),
        ("u2", "g6", "h299.example"),
    ] {
        let id = who(Some(user), &[group]);
        let got = access(&p, &id, host, "/");
        // Naive reference: first rule in order whose conditions hold.
        let conn = ConnectionFacts {
            identity: &id,
            process: None,
            host: Some(host),
            dst_ip: None,
            port: 443,
        };
        let ctx = p.context(
            &conn,
            Some("/"),
            Some("GET"),
            InspectionFacts::default(),
            EvalPoint::Request,
        );
        let expected = p
            .stage(Stage::Access)
            .rules
            .iter()
            .find(|r| r.eval(&ctx) == crate::rule::Tri::Yes)
            .map(|r| r.id.to_string())
            .unwrap_or_else(|| "default".into());
        assert_eq!(&*got.rule_id, expected.as_str(), "{user} {group} {host}");
    }
}

#[test]
fn explanation_names_rule_matches_and_near_misses() {
    let (p, _) = compile(NEWS_POLICY);
    let bob = who(Some("bob"), &[]);
    let conn = ConnectionFacts {
        identity: &bob,
        process: None,
        host: Some("www.news.example"),
        dst_ip: None,
        port: 443,
    };
    let e = p.explain(&RequestFacts {
        connection: conn,
        method: "GET",
        path: "/",
    });
    let text = e.to_string();
    assert!(
        text.contains("list news-sites (via news.example)"),
        "{text}"
    );
    assert!(text.contains("custom-category all-news"), "{text}");
    assert!(
        text.contains("access: user-alert by rule \"everyone else is coached\""),
        "{text}"
    );
    assert!(
        text.contains("nearly: rule \"no news for engineering\"")
            && text.contains("only groups did not match"),
        "{text}"
    );
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn fragment() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "[lists]\n",
            "a = [\"x.example\", \"*.y.example/p/*\"]\n",
            "[[access]]\n",
            "when = { lists = [\"a\"], groups = [\"g\"] }\n",
            "unless = { hosts = [\".z.example\"] }\n",
            "action = \"block\"\n",
            "action = \"nope\"\n",
            "[[egress]]\n",
            "via = \"u\"\n",
            "[upstreams.u]\nproxies = [\"http://127.0.0.1:3128\"]\n",
            "[categories.custom]\nc = { lists = [\"a\"] }\n",
            "when = { categories = [\"c\"], ports = [443, \"0-1\"] }\n",
            "[[steering]]\n",
            "action = \"bypass\"\n",
            "when = { processes = [\"py*\"] }\n",
            "[defaults]\naccess = \"block\"\n",
            "= broken\n",
            "[identities]\n",
            "users = [{ name = \"u\", groups = [\"g\"] }]\n",
            "when = { methods = [] }\n",
        ])
        .prop_map(String::from)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_mix_of_policy_fragments_compiles_or_reports_errors(parts in prop::collection::vec(fragment(), 0..12)) {
            let src: String = parts.concat();
            match Policy::from_str(&src, "p.toml", Path::new("/nonexistent")) {
                Ok((p, _)) => {
                    let id = who(Some("u"), &[]);
                    let _ = access(&p, &id, "a.y.example", "/p/q");
                }
                Err(e) => prop_assert!(e.errors().next().is_some()),
            }
        }
    }
}

#[test]
fn path_entries_in_decryption_rules_are_warned_and_ignored() {
    let (p, warnings) = compile(
        r#"
        [lists]
        mixed = ["bank.example", "portal.example/private"]
        [[decryption]]
        when = { lists = ["mixed"] }
        action = "do-not-decrypt"
        "#,
    );
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.iter()
            .any(|w| w
                .contains("list \"mixed\" has path entries, which never match in [[decryption]]")),
        "{text:?}"
    );
    let id = Identity::default();
    let dec = |host| {
        let conn = ConnectionFacts {
            identity: &id,
            process: None,
            host: Some(host),
            dst_ip: None,
            port: 443,
        };
        p.evaluate_connection(&conn).decryption.action
    };
    assert_eq!(dec("bank.example"), DecryptionAction::DoNotDecrypt);
    assert_eq!(dec("portal.example"), DecryptionAction::Decrypt);
}

#[test]
fn explanation_says_when_a_file_type_rule_waits_for_the_response() {
    let (p, _) = compile(
        r#"
        [[access]]
        id = "no-exe"
        when = { file_types = ["exe"] }
        action = "block"
        "#,
    );
    let id = Identity::default();
    let conn = ConnectionFacts {
        identity: &id,
        process: None,
        host: Some("dl.example"),
        dst_ip: None,
        port: 443,
    };
    let req = RequestFacts {
        connection: conn,
        method: "GET",
        path: "/setup.exe",
    };
    let text = p.explain(&req).to_string();
    assert!(
        text.contains("access: undecided until the response stage (block if it matches)"),
        "{text}"
    );
    let exe = p.evaluate_response(&ResponseFacts {
        request: req,
        inspection: InspectionFacts {
            file_type: Some("EXE"),
            ..Default::default()
        },
    });
    assert_eq!((exe.action, &*exe.rule_id), (AccessAction::Block, "no-exe"));
    let pdf = p.evaluate_response(&ResponseFacts {
        request: req,
        inspection: InspectionFacts {
            file_type: Some("pdf"),
            ..Default::default()
        },
    });
    assert!(pdf.default);
}

#[test]
fn an_empty_or_comment_only_policy_file_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    for text in ["", "\n  \n", "# only a comment\n\n   # and another\n"] {
        fs::write(&path, text).unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("policy.toml:1:1: policy file is empty"),
            "{err}"
        );
        let (p, _) = Policy::load_with(&path, LoadOptions { allow_empty: true }).unwrap();
        assert_eq!(p.own_rules(), 0);
    }
    // One empty file in a directory is refused too: it may be mid-write.
    fs::write(
        dir.path().join("10-rules.toml"),
        "[[access]]\nwhen = { hosts = [\"a.example\"] }\naction = \"block\"\n",
    )
    .unwrap();
    let (p, _) = Policy::load(&dir.path().join("10-rules.toml")).unwrap();
    assert_eq!(p.own_rules(), 1);
    fs::write(&path, "").unwrap();
    let err = Policy::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("policy file is empty"), "{err}");
    // A table with a comment is content.
    fs::write(&path, "# lists\n[lists]\n").unwrap();
    assert!(Policy::load(&path).is_ok());
}

#[test]
fn a_method_rule_on_a_never_decrypted_destination_is_reported_as_undecidable() {
    let src = r#"
[lists]
bank = ["bank.example"]

[[decryption]]
name = "banks stay private"
when = { lists = ["bank"] }
action = "do-not-decrypt"

[[access]]
name = "no uploads to banks"
when = { lists = ["bank"], methods = ["POST"] }
action = "block"

[[access]]
name = "no uploads to dropbox"
when = { apps = ["dropbox"], methods = ["POST"] }
action = "block"
"#;
    let (_, diags) = compile(src);
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let bank = text
        .iter()
        .find(|d| d.contains("\"no uploads to banks\" needs the method"))
        .unwrap_or_else(|| panic!("no warning for the bank rule: {text:#?}"));
    assert!(bank.starts_with("policy.toml:10:"), "{bank}");
    assert!(bank.contains("\"banks stay private\""), "{bank}");
    // Built-in pinned apps are never decrypted either.
    assert!(
        text.iter()
            .any(|d| d.contains("\"no uploads to dropbox\" needs the method")),
        "{text:#?}"
    );
}

/// Block malware, alert on what cannot be opened, keep cards from leaving,
/// and alert on big downloads: the inspection rules of docs/policy.md.
const INSPECTION_POLICY: &str = r#"
[[access]]
id = "no-malware"
when = { verdicts = ["malicious"] }
action = "block"
[[access]]
id = "unopened"
when = { verdicts = ["encrypted", "Unscannable"] }
action = "alert"
[[access]]
id = "no-cards-out"
when = { dlp = ["Payment-Card", "acme-project-names"], direction = "upload" }
action = "block"
[[access]]
id = "big-downloads"
when = { size = { min = "10MB" }, direction = ["download"] }
action = "alert"
"#;

fn response(
    p: &Policy,
    verdicts: &[&str],
    dlp: &[&str],
    direction: Option<Direction>,
    size: Option<u64>,
) -> Decision<AccessAction> {
    let id = Identity::default();
    p.evaluate_response(&ResponseFacts {
        request: RequestFacts {
            connection: ConnectionFacts {
                identity: &id,
                process: None,
                host: Some("files.example"),
                dst_ip: None,
                port: 443,
            },
            method: "GET",
            path: "/f",
        },
        inspection: InspectionFacts {
            file_type: None,
            verdicts,
            dlp,
            direction,
            size,
        },
    })
}

#[test]
fn verdicts_dlp_direction_and_size_decide_at_the_response() {
    let (p, _) = compile(INSPECTION_POLICY);
    let down = Some(Direction::Download);
    let up = Some(Direction::Upload);
    let rule = |d: Decision<AccessAction>| (d.action, d.rule_id.to_string());
    let by = |a, r: &str| (a, r.to_string());
    use AccessAction::{Alert, Allow, Block};
    assert_eq!(
        rule(response(&p, &["malicious"], &[], down, Some(1))),
        by(Block, "no-malware")
    );
    // Any of several findings matches; verdict names ignore case.
    assert_eq!(
        rule(response(&p, &["sensitive", "UNSCANNABLE"], &[], up, None)),
        by(Alert, "unopened")
    );
    assert_eq!(
        rule(response(&p, &["sensitive"], &["PAYMENT-card"], up, None)),
        by(Block, "no-cards-out")
    );
    assert_eq!(
        rule(response(
            &p,
            &["sensitive"],
            &["acme-project-names"],
            up,
            None
        )),
        by(Block, "no-cards-out")
    );
    // The same finding on a download, or another profile, is not that rule's.
    assert_eq!(
        rule(response(&p, &["sensitive"], &["payment-card"], down, None)),
        by(Allow, "default")
    );
    assert_eq!(
        rule(response(&p, &["sensitive"], &["iban"], up, None)),
        by(Allow, "default")
    );
    assert_eq!(
        rule(response(&p, &["clean"], &[], down, Some(10_000_000))),
        by(Alert, "big-downloads")
    );
    assert_eq!(
        rule(response(&p, &["clean"], &[], down, Some(9_999_999))),
        by(Allow, "default")
    );
    // Facts inspection did not give are absent at the response: no match.
    assert_eq!(
        rule(response(&p, &[], &[], None, Some(50_000_000))),
        by(Allow, "default")
    );
}

#[test]
fn matched_lists_the_verdict_dlp_profile_direction_and_size_that_matched() {
    let (p, _) = compile(INSPECTION_POLICY);
    let names = |d: Decision<AccessAction>| -> Vec<String> {
        d.matched.iter().map(|m| m.to_string()).collect()
    };
    assert_eq!(
        names(response(
            &p,
            &["malicious", "encrypted"],
            &[],
            Some(Direction::Download),
            None
        )),
        ["verdict malicious"]
    );
    assert_eq!(
        names(response(
            &p,
            &["sensitive"],
            &["payment-card"],
            Some(Direction::Upload),
            None
        )),
        ["dlp payment-card", "direction upload"]
    );
    assert_eq!(
        names(response(
            &p,
            &["clean"],
            &[],
            Some(Direction::Download),
            Some(12_345_678)
        )),
        ["direction download", "size 12345678"]
    );
}

fn conn_facts(id: &Identity) -> ConnectionFacts<'_> {
    ConnectionFacts {
        identity: id,
        process: None,
        host: Some("files.example"),
        dst_ip: None,
        port: 443,
    }
}

#[test]
fn inspection_conditions_leave_access_undecided_until_the_response() {
    let (p, _) = compile(INSPECTION_POLICY);
    let id = Identity::default();
    let at_connection = p.evaluate_connection(&conn_facts(&id)).access;
    let at_request = p
        .evaluate_request(&RequestFacts {
            connection: conn_facts(&id),
            method: "GET",
            path: "/f",
        })
        .access;
    for outcome in [at_connection, at_request] {
        match outcome {
            Outcome::Pending { until, rule_id, .. } => {
                assert_eq!((until, &*rule_id), (EvalPoint::Response, "no-malware"))
            }
            other => panic!("expected pending until the response: {other:?}"),
        }
    }
}

#[test]
fn inspection_conditions_are_skipped_when_the_flow_never_reaches_the_response() {
    let (p, _) = compile(INSPECTION_POLICY);
    let id = Identity::default();
    let all = ["no-malware", "unopened", "no-cards-out", "big-downloads"];
    // A tunnel that is not decrypted, and a request whose body is not inspected.
    let tunnel = p.evaluate_connection_until(&conn_facts(&id), EvalPoint::Connection);
    let uninspected = p.evaluate_request_until(
        &RequestFacts {
            connection: conn_facts(&id),
            method: "GET",
            path: "/f",
        },
        EvalPoint::Request,
    );
    for (access, skipped) in [
        (tunnel.access, tunnel.skipped),
        (uninspected.access, uninspected.skipped),
    ] {
        let d = access.decided().expect("decided: no response will come");
        assert_eq!((d.action, d.default), (AccessAction::Allow, true));
        let skipped: Vec<&str> = skipped.iter().map(|s| &**s).collect();
        assert_eq!(skipped, all);
    }
}

#[test]
fn a_host_block_after_a_verdict_alert_waits_but_a_verdict_block_does_not() {
    let (p, _) = compile(
        r#"
        [[access]]
        id = "unopened"
        when = { verdicts = ["encrypted"] }
        action = "alert"
        [[access]]
        id = "malware"
        when = { verdicts = ["malicious"] }
        action = "block"
        [[access]]
        id = "host"
        when = { hosts = ["files.example"] }
        action = "block"
        "#,
    );
    let id = Identity::default();
    // An encrypted file would only alert: the host block must wait for the verdict.
    match p.evaluate_connection(&conn_facts(&id)).access {
        Outcome::Pending { rule_id, .. } => assert_eq!(&*rule_id, "unopened"),
        other => panic!("{other:?}"),
    }
    // Without the alert rule every outcome blocks: decided at once.
    let (p, _) = compile(
        r#"
        [[access]]
        id = "malware"
        when = { verdicts = ["malicious"] }
        action = "block"
        [[access]]
        id = "host"
        when = { hosts = ["files.example"] }
        action = "block"
        "#,
    );
    let d = p.evaluate_connection(&conn_facts(&id)).access;
    assert_eq!(d.decided().map(|d| &*d.rule_id), Some("host"));
}

#[test]
fn unknown_verdict_is_an_error_with_its_place_and_a_suggestion() {
    let errs =
        errors("[[access]]\nwhen = { verdicts = [\"clean\", \"malicous\"] }\naction = \"block\"\n");
    assert_eq!(
        errs,
        ["policy.toml:2:31: unknown verdict \"malicous\" (expected one of: malicious, encrypted, unscannable, sensitive, clean) (did you mean \"malicious\"?)"]
    );
}

#[test]
fn direction_is_one_known_value() {
    let errs = errors("[[access]]\nwhen = { direction = \"uplaod\" }\naction = \"block\"\n");
    assert_eq!(
        errs,
        ["policy.toml:2:22: unknown direction \"uplaod\" (expected one of: download, upload) (did you mean \"upload\"?)"]
    );
    let errs = errors(
        "[[access]]\nwhen = { direction = [\"download\", \"upload\"] }\naction = \"block\"\n",
    );
    assert_eq!(
        errs,
        ["policy.toml:2:22: direction takes one value, \"download\" or \"upload\"; remove it to match both"]
    );
    let errs = errors("[[access]]\nwhen = { direction = 1 }\naction = \"block\"\n");
    assert_eq!(
        errs,
        ["policy.toml:2:22: direction must be a string, found integer"]
    );
}

#[test]
fn dlp_accepts_any_profile_name_but_not_an_empty_one() {
    let errs = errors("[[access]]\nwhen = { dlp = [\"iban\", \" \"] }\naction = \"block\"\n");
    assert_eq!(errs, ["policy.toml:2:25: empty name in dlp"]);
    let errs = errors("[[access]]\nwhen = { dlp = [] }\naction = \"block\"\n");
    assert_eq!(
        errs,
        ["policy.toml:2:16: dlp is empty; remove it to match anything"]
    );
}

#[test]
fn size_bounds_take_units_and_reject_min_above_max() {
    let (p, _) = compile(
        "[[access]]\nid = \"mid\"\nwhen = { size = { min = 1024, max = \"1.5 KiB\" } }\naction = \"block\"\n",
    );
    let at = |n| response(&p, &[], &[], None, Some(n)).rule_id.to_string();
    assert_eq!(
        [at(1023), at(1024), at(1536), at(1537)],
        ["default", "mid", "mid", "default"]
    );
    let errs = errors(
        "[[access]]\nwhen = { size = { min = \"1GB\", max = \"10MB\" } }\naction = \"block\"\n",
    );
    assert_eq!(
        errs,
        ["policy.toml:2:25: size min (1000000000 bytes) is larger than max (10000000 bytes)"]
    );
    let errs =
        errors("[[access]]\nwhen = { size = { max = \"10 XB\", maxi = 1 } }\naction = \"block\"\n");
    let text = errs.join("\n");
    assert!(
        text.contains(
            "policy.toml:2:25: size max must be a number of bytes or a size like \"10MB\""
        ),
        "{text}"
    );
    assert!(
        text.contains("policy.toml:2:34: unknown key \"maxi\" in `size` (did you mean \"max\"?)"),
        "{text}"
    );
    let errs = errors("[[access]]\nwhen = { size = {} }\naction = \"block\"\n");
    assert_eq!(errs, ["policy.toml:2:17: size needs `min`, `max` or both"]);
}

#[test]
fn byte_sizes_parse_decimal_and_binary_units_exactly() {
    use crate::parser::parse_size;
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size("10MB"), Some(10_000_000));
    assert_eq!(parse_size("10 mb"), Some(10_000_000));
    assert_eq!(parse_size("512KiB"), Some(524_288));
    assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
    assert_eq!(parse_size("1 GiB"), Some(1 << 30));
    assert_eq!(parse_size(".5kB"), Some(500));
    assert_eq!(parse_size("16777216TiB"), None, "beyond u64");
    for bad in ["", "MB", "-1", "1.2.3MB", "10 XB", "1e6", "."] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
}

#[test]
fn inspection_conditions_are_errors_outside_access_rules() {
    for (stage, action, key, why) in [
        (
            "steering",
            "action = \"bypass\"",
            "verdicts = [\"clean\"]",
            "the content is only known after decryption",
        ),
        (
            "decryption",
            "action = \"decrypt\"",
            "dlp = [\"iban\"]",
            "the content is only known after decryption",
        ),
        (
            "decryption",
            "action = \"decrypt\"",
            "direction = \"upload\"",
            "the content is only known after decryption",
        ),
        (
            "egress",
            "action = \"direct\"",
            "size = { max = 1 }",
            "egress is chosen before the response exists",
        ),
    ] {
        let name = key.split(' ').next().unwrap_or_default();
        let errs = errors(&format!("[[{stage}]]\nwhen = {{ {key} }}\n{action}\n"));
        assert_eq!(
            errs,
            [format!(
                "policy.toml:1:1: a [[{stage}]] rule cannot use `{name}` ({why})"
            )],
        );
    }
}

#[test]
fn a_narrower_verdict_or_size_rule_after_a_broader_one_is_warned_as_shadowed() {
    let (_, warnings) = compile(
        r#"
        [[access]]
        id = "unopened"
        when = { verdicts = ["encrypted", "unscannable"] }
        action = "alert"
        [[access]]
        id = "encrypted-uploads"
        when = { verdicts = ["encrypted"], direction = "upload", size = { min = "1MB", max = "2MB" } }
        action = "block"
        [[access]]
        id = "any-size"
        when = { size = { min = 1 } }
        action = "block"
        [[access]]
        id = "huge"
        when = { size = { min = "1GB" } }
        action = "block"
        "#,
    );
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let text = text.join("\n");
    assert!(
        text.contains("rule \"encrypted-uploads\" is never reached: rule \"unopened\""),
        "{text}"
    );
    assert!(
        text.contains("rule \"huge\" is never reached: rule \"any-size\""),
        "{text}"
    );
    assert!(
        !text.contains("rule \"any-size\" is never reached"),
        "{text}"
    );
}

#[test]
fn explain_shows_the_response_stage_with_the_inspected_facts() {
    let (p, _) = compile(INSPECTION_POLICY);
    let id = Identity::default();
    let req = RequestFacts {
        connection: conn_facts(&id),
        method: "POST",
        path: "/upload",
    };
    let text = p
        .explain_response(&ResponseFacts {
            request: req,
            inspection: InspectionFacts {
                verdicts: &["sensitive"],
                dlp: &["payment-card"],
                direction: Some(Direction::Upload),
                size: Some(2048),
                ..Default::default()
            },
        })
        .to_string();
    assert!(
        text.contains("access: undecided until the response stage (block if it matches)"),
        "{text}"
    );
    assert!(
        text.contains(
            "access at the response: block by rule \"no-cards-out\" (id no-cards-out, policy.toml:"
        ),
        "{text}"
    );
    assert!(
        text.contains("matched: dlp payment-card, direction upload"),
        "{text}"
    );
    assert!(
        text.contains("with file type unknown, verdicts sensitive, dlp payment-card, direction upload, size 2048 bytes"),
        "{text}"
    );
    // Without inspection facts the explanation is what it always was.
    assert!(!p.explain(&req).to_string().contains("at the response"));
}

#[test]
fn policy_test_cases_can_give_inspection_facts() {
    let (p, _) = compile(INSPECTION_POLICY);
    let cases = parse_cases(
        r#"
        [[case]]
        name = "a card number uploaded is blocked"
        url = "https://files.example/upload"
        method = "POST"
        verdicts = ["sensitive"]
        dlp = ["payment-card"]
        direction = "upload"
        size = 512
        expect = { access = "block", access_rule = "no-cards-out" }
        [[case]]
        name = "a big clean download alerts"
        url = "https://files.example/iso"
        verdicts = ["clean"]
        direction = "download"
        size = 700000000
        expect = { access = "alert", access_rule = "big-downloads" }
        [[case]]
        name = "a misspelt direction fails the case"
        url = "https://files.example/"
        direction = "sideways"
        expect = { access = "allow" }
        "#,
    )
    .unwrap();
    let results: Vec<CaseResult> = cases.cases.iter().map(|c| p.run_case(c)).collect();
    assert!(results[0].passed(), "{:?}", results[0]);
    assert!(results[1].passed(), "{:?}", results[1]);
    assert_eq!(
        results[2].failures,
        ["unknown direction \"sideways\" (expected one of: download, upload)"]
    );
}

#[test]
fn a_verdict_rule_on_a_never_decrypted_destination_is_reported_as_undecidable() {
    let (_, warnings) = compile(
        r#"
        [lists]
        bank = ["bank.example"]
        [[decryption]]
        name = "banks"
        when = { lists = ["bank"] }
        action = "do-not-decrypt"
        [[access]]
        name = "bank malware"
        when = { lists = ["bank"], verdicts = ["malicious"] }
        action = "block"
        "#,
    );
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let text = text.join("\n");
    assert!(
        text.contains("rule \"bank malware\" needs the inspected body, but every destination it names is never decrypted"),
        "{text}"
    );
}
