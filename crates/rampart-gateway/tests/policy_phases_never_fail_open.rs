//! The property DESIGN §6 asks for: for random policies (rules mixing host,
//! list with path entries, method, file type, inspection verdict, DLP profile,
//! direction, size, user, group, process and port conditions in random order) and random flows (plain HTTP, decrypted and
//! not-decrypted tunnels, agent flows), the decision the gateway enforces —
//! through its real policy phases, in the order the data path calls them —
//! equals the decision of one evaluation with every fact the flow ever has,
//! and no flow is ever allowed that the full evaluation blocks.

use std::path::Path;

use proptest::prelude::*;
use rampart_gateway::access_log::FlowRecord;
use rampart_gateway::policy_stage::{self, FlowFacts};
use rampart_policy::{
    AccessAction, ConnectionFacts, Direction, EvalPoint, Identity, InspectionFacts, Policy,
    Process, RequestFacts, ResponseFacts,
};

const HOSTS: [&str; 4] = ["a.test", "b.test", "www.c.test", "d.test"];
const PATHS: [&str; 4] = ["/", "/admin/x", "/files/setup.exe", "/docs/?q=1"];
const METHODS: [&str; 2] = ["GET", "POST"];
const TYPES: [&str; 4] = ["exe", "zip", "pdf", "html"];
const VERDICTS: [&str; 4] = ["malicious", "encrypted", "unscannable", "clean"];
const DLP: [&str; 2] = ["payment-card", "iban"];
const SIZES: [u64; 3] = [0, 1000, 4096];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const PROCESSES: [&str; 2] = ["curl", "python3.11"];
const PORTS: [u16; 2] = [443, 8443];
const ACTIONS: [&str; 4] = ["allow", "block", "alert", "user-alert"];

/// One random condition, as TOML.
fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::subsequence(HOSTS.to_vec(), 1..3).prop_map(|h| format!("hosts = {h:?}")),
        prop::sample::select(vec!["admin-paths", "exe-paths", "c-site"])
            .prop_map(|l| format!("lists = [{l:?}]")),
        prop::sample::subsequence(METHODS.to_vec(), 1..2).prop_map(|m| format!("methods = {m:?}")),
        prop::sample::subsequence(TYPES.to_vec(), 1..3).prop_map(|t| format!("file_types = {t:?}")),
        prop::sample::subsequence(VERDICTS.to_vec(), 1..3)
            .prop_map(|v| format!("verdicts = {v:?}")),
        prop::sample::select(vec!["download", "upload"]).prop_map(|d| format!("direction = {d:?}")),
        prop::sample::subsequence(DLP.to_vec(), 1..2).prop_map(|p| format!("dlp = {p:?}")),
        prop::sample::select(vec!["min = 1000", "max = \"1kB\"", "min = 1, max = 5000"])
            .prop_map(|b| format!("size = {{ {b} }}")),
        prop::sample::subsequence(USERS.to_vec(), 1..3).prop_map(|u| format!("users = {u:?}")),
        prop::sample::select(vec!["engineering", "sales"])
            .prop_map(|g| format!("groups = [{g:?}]")),
        prop::sample::select(vec!["curl", "python3*"]).prop_map(|p| format!("processes = [{p:?}]")),
        prop::sample::select(vec![443u16, 8443]).prop_map(|p| format!("ports = [{p}]")),
    ]
}

/// A rule: one to three conditions, maybe an `unless`, an action.
fn rule() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(condition(), 1..4),
        prop::option::of(condition()),
        prop::sample::select(ACTIONS.to_vec()),
    )
        .prop_map(|(when, unless, action)| {
            // One condition per kind: a later duplicate key would be a TOML error.
            let mut seen = Vec::new();
            let when: Vec<String> = when
                .into_iter()
                .filter(|c| {
                    let key = c.split(' ').next().unwrap_or_default().to_string();
                    let fresh = !seen.contains(&key);
                    seen.push(key);
                    fresh
                })
                .collect();
            let unless = unless
                .map(|u| format!("unless = {{ {u} }}\n"))
                .unwrap_or_default();
            format!(
                "when = {{ {} }}\n{unless}action = \"{action}\"\n",
                when.join(", ")
            )
        })
}

fn policy_text(rules: &[String], default_block: bool) -> String {
    let mut text = String::from(
        "[identities]\nusers = [{ name = \"alice\", groups = [\"engineering\"] }, { name = \"bob\", groups = [\"sales\"] }]\n\
         [lists]\nadmin-paths = [\"a.test/admin/*\", \"b.test/admin/*\"]\nexe-paths = [\"*.test/files/*\"]\nc-site = [\".c.test\"]\n",
    );
    if default_block {
        text.push_str("[defaults]\naccess = \"block\"\n");
    }
    for (i, r) in rules.iter().enumerate() {
        text.push_str(&format!("[[access]]\nname = \"rule {i}\"\n{r}"));
    }
    text
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Absolute-form HTTP on the proxy listener.
    Plain,
    /// A CONNECT whose TLS is decrypted: each request seen, responses classified.
    Decrypted,
    /// A CONNECT relayed without decrypting: only the connection is seen.
    Spliced,
}

#[derive(Debug, Clone)]
struct Flow {
    kind: Kind,
    host: &'static str,
    path: &'static str,
    method: &'static str,
    file_type: Option<&'static str>,
    /// Empty: the body was not scanned.
    verdicts: Vec<&'static str>,
    direction: Option<Direction>,
    dlp: Vec<&'static str>,
    size: Option<u64>,
    user: Option<&'static str>,
    process: Option<&'static str>,
    port: u16,
}

fn flow() -> impl Strategy<Value = Flow> {
    (
        prop::sample::select(vec![Kind::Plain, Kind::Decrypted, Kind::Spliced]),
        prop::sample::select(HOSTS.to_vec()),
        prop::sample::select(PATHS.to_vec()),
        prop::sample::select(METHODS.to_vec()),
        // What inspection found, grouped: proptest tuples stop at twelve.
        (
            prop::option::of(prop::sample::select(TYPES.to_vec())),
            prop::sample::subsequence(VERDICTS.to_vec(), 0..3),
            prop::sample::subsequence(DLP.to_vec(), 0..2),
            prop::option::of(prop::sample::select(vec![
                Direction::Download,
                Direction::Upload,
            ])),
            prop::option::of(prop::sample::select(SIZES.to_vec())),
        ),
        prop::option::of(prop::sample::select(USERS.to_vec())),
        prop::option::of(prop::sample::select(PROCESSES.to_vec())),
        prop::sample::select(PORTS.to_vec()),
    )
        .prop_map(
            |(kind, host, path, method, inspected, user, process, port)| {
                let (file_type, verdicts, dlp, direction, size) = inspected;
                Flow {
                    kind,
                    host,
                    path,
                    method,
                    file_type,
                    verdicts,
                    direction,
                    dlp,
                    size,
                    user,
                    process,
                    port,
                }
            },
        )
}

impl Flow {
    /// What inspection found, as the response phase is given it.
    fn inspection(&self) -> InspectionFacts<'_> {
        InspectionFacts {
            file_type: self.file_type,
            verdicts: &self.verdicts,
            dlp: &self.dlp,
            direction: self.direction,
            size: self.size,
        }
    }
}

/// What the gateway enforced, and the action it recorded.
#[derive(Debug, PartialEq)]
struct Enforced {
    blocked: bool,
    action: String,
}

fn record() -> FlowRecord {
    FlowRecord::new("127.0.0.1:1".parse().unwrap(), "GET", String::new())
}

fn action_of(record: &FlowRecord) -> String {
    record
        .policy
        .as_ref()
        .map(|p| p.action.to_string())
        .unwrap_or_else(|| "none".into())
}

/// The data path's sequence of phases for `flow` (connect.rs, session.rs,
/// forward.rs, response_gate.rs call them in this order).
fn enforce(
    policy: &Policy,
    identity: &Identity,
    process: Option<&Process>,
    flow: &Flow,
) -> Enforced {
    enforce_fronted(policy, identity, process, flow, None)
}

/// [`enforce`] for a decrypted tunnel whose CONNECT went to `connect_host`
/// while its SNI and requests name `flow.host` (fronting let through by
/// `tls.fronting = "alert"`): the connection phase runs on both names
/// (connect.rs on the CONNECT host, intercept's probe on the SNI), and the
/// request and response phases carry the CONNECT host as `also_host`.
fn enforce_fronted(
    policy: &Policy,
    identity: &Identity,
    process: Option<&Process>,
    flow: &Flow,
    connect_host: Option<&'static str>,
) -> Enforced {
    let last = match flow.kind {
        Kind::Spliced => EvalPoint::Connection,
        Kind::Plain | Kind::Decrypted => EvalPoint::Response,
    };
    let facts = FlowFacts {
        identity,
        process,
        host: flow.host,
        dst_ip: None,
        port: flow.port,
        last,
        also_host: connect_host,
    };
    if let Some(connect_host) = connect_host {
        let mut tunnel = record();
        let on_connect_host = FlowFacts {
            host: connect_host,
            also_host: None,
            ..facts
        };
        if policy_stage::connection_phase(policy, &on_connect_host, &mut tunnel)
            .blocked
            .is_some()
        {
            return Enforced {
                blocked: true,
                action: action_of(&tunnel),
            };
        }
    }
    if !matches!(flow.kind, Kind::Plain) {
        let mut tunnel = record();
        let stage = policy_stage::connection_phase(policy, &facts, &mut tunnel);
        if stage.blocked.is_some() {
            return Enforced {
                blocked: true,
                action: action_of(&tunnel),
            };
        }
        if matches!(flow.kind, Kind::Spliced) {
            // A spliced tunnel is never left pending: the URL never comes.
            assert!(
                !stage.pending,
                "a tunnel that is not decrypted was left pending"
            );
            return Enforced {
                blocked: false,
                action: action_of(&tunnel),
            };
        }
    }
    let mut request = record();
    let stage = policy_stage::request_phase(policy, &facts, flow.method, flow.path, &mut request);
    if stage.blocked.is_some() || !stage.pending {
        return Enforced {
            blocked: stage.blocked.is_some(),
            action: action_of(&request),
        };
    }
    let stage = policy_stage::response_phase(
        policy,
        &facts,
        flow.method,
        flow.path,
        flow.inspection(),
        &mut request,
    );
    Enforced {
        blocked: stage.blocked.is_some(),
        action: action_of(&request),
    }
}

fn check(rules: &[String], default_block: bool, flow: &Flow) -> Result<(), TestCaseError> {
    let text = policy_text(rules, default_block);
    let policy = match Policy::from_str(&text, "policy.toml", Path::new(".")) {
        Ok((p, _)) => p,
        // A random rule the checker rejects (e.g. a rule that can never match) is not a flow.
        Err(_) => return Ok(()),
    };
    let identity = Identity {
        user: flow.user.map(String::from),
        ..Default::default()
    };
    let process = flow.process.map(|name| Process {
        name: name.to_string(),
        path: Some(format!("/usr/bin/{name}")),
    });
    let enforced = enforce(&policy, &identity, process.as_ref(), flow);
    let last = match flow.kind {
        Kind::Spliced => EvalPoint::Connection,
        _ => EvalPoint::Response,
    };
    let full = policy.evaluate_access_full(
        &ResponseFacts {
            request: RequestFacts {
                connection: ConnectionFacts {
                    identity: &identity,
                    process: process.as_ref(),
                    host: Some(flow.host),
                    dst_ip: None,
                    port: flow.port,
                },
                method: flow.method,
                path: flow.path,
            },
            inspection: flow.inspection(),
        },
        last,
    );
    let full_blocks = full.action == AccessAction::Block;
    prop_assert!(
        !full_blocks || enforced.blocked,
        "FAIL OPEN: the full evaluation blocks (rule {:?}) but the gateway let it through ({:?})\npolicy:\n{text}",
        full.rule_name,
        enforced
    );
    prop_assert_eq!(
        enforced.blocked,
        full_blocks,
        "the gateway blocked what the full evaluation allows\npolicy:\n{}",
        text
    );
    prop_assert_eq!(
        &enforced.action,
        full.action.as_str(),
        "recorded action differs from the full evaluation's\npolicy:\n{}",
        text
    );
    Ok(())
}

/// The full evaluation of `flow` under `host` blocks.
fn full_blocks(
    policy: &Policy,
    identity: &Identity,
    process: Option<&Process>,
    flow: &Flow,
    host: &str,
) -> bool {
    let full = policy.evaluate_access_full(
        &ResponseFacts {
            request: RequestFacts {
                connection: ConnectionFacts {
                    identity,
                    process,
                    host: Some(host),
                    dst_ip: None,
                    port: flow.port,
                },
                method: flow.method,
                path: flow.path,
            },
            inspection: flow.inspection(),
        },
        EvalPoint::Response,
    );
    full.action == AccessAction::Block
}

/// A fronted decrypted tunnel is blocked exactly when either of its names
/// is blocked by the full evaluation: alert mode never judges the SNI alone.
fn check_fronted(
    rules: &[String],
    default_block: bool,
    flow: &Flow,
    connect_host: &'static str,
) -> Result<(), TestCaseError> {
    let text = policy_text(rules, default_block);
    let Ok((policy, _)) = Policy::from_str(&text, "policy.toml", Path::new(".")) else {
        return Ok(());
    };
    let identity = Identity {
        user: flow.user.map(String::from),
        ..Default::default()
    };
    let process = flow.process.map(|name| Process {
        name: name.to_string(),
        path: Some(format!("/usr/bin/{name}")),
    });
    let flow = Flow {
        kind: Kind::Decrypted,
        ..flow.clone()
    };
    let enforced = enforce_fronted(
        &policy,
        &identity,
        process.as_ref(),
        &flow,
        Some(connect_host),
    );
    let expected = full_blocks(&policy, &identity, process.as_ref(), &flow, flow.host)
        || full_blocks(&policy, &identity, process.as_ref(), &flow, connect_host);
    prop_assert_eq!(
        enforced.blocked,
        expected,
        "fronted flow (SNI {}, CONNECT {}): enforced {:?}\npolicy:\n{}",
        flow.host,
        connect_host,
        enforced,
        text
    );
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    // 3,000 cases in CI; `PROPTEST_CASES=100000` for a long run.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn enforced_decision_equals_the_full_information_decision(
        rules in prop::collection::vec(rule(), 1..7),
        default_block in any::<bool>(),
        flows in prop::collection::vec(flow(), 1..6),
    ) {
        for f in &flows {
            check(&rules, default_block, f)?;
        }
    }

    #[test]
    fn a_fronted_decrypted_flow_is_blocked_when_either_name_is(
        rules in prop::collection::vec(rule(), 1..7),
        default_block in any::<bool>(),
        flow in flow(),
        connect_host in prop::sample::select(HOSTS.to_vec()),
    ) {
        check_fronted(&rules, default_block, &flow, connect_host)?;
    }
}

/// The two fail-open cases from the issue, as plain examples.
#[test]
fn a_file_type_rule_first_does_not_shadow_a_host_block() {
    let rules = vec![
        "when = { file_types = [\"exe\"] }\naction = \"alert\"\n".to_string(),
        "when = { hosts = [\"d.test\"] }\naction = \"block\"\n".to_string(),
    ];
    for kind in [Kind::Plain, Kind::Decrypted, Kind::Spliced] {
        let flow = Flow {
            kind,
            host: "d.test",
            path: "/",
            method: "GET",
            file_type: Some("html"),
            verdicts: Vec::new(),
            direction: None,
            dlp: Vec::new(),
            size: None,
            user: None,
            process: None,
            port: 443,
        };
        check(&rules, false, &flow).unwrap();
    }
}

#[test]
fn a_verdict_alert_first_does_not_shadow_a_host_block_and_a_card_upload_is_blocked() {
    let rules = vec![
        "when = { verdicts = [\"encrypted\"] }\naction = \"alert\"\n".to_string(),
        "when = { dlp = [\"payment-card\"], direction = \"upload\" }\naction = \"block\"\n"
            .to_string(),
        "when = { hosts = [\"d.test\"] }\naction = \"block\"\n".to_string(),
    ];
    let text = policy_text(&rules, false);
    let (policy, _) = Policy::from_str(&text, "policy.toml", Path::new(".")).unwrap();
    for kind in [Kind::Plain, Kind::Decrypted, Kind::Spliced] {
        for (host, dlp, direction) in [
            ("d.test", vec![], Some(Direction::Download)),
            ("a.test", vec!["payment-card"], Some(Direction::Upload)),
            ("a.test", vec!["payment-card"], Some(Direction::Download)),
        ] {
            let flow = Flow {
                kind,
                host,
                path: "/",
                method: "POST",
                file_type: Some("pdf"),
                verdicts: vec!["sensitive"],
                direction,
                dlp,
                size: Some(100),
                user: None,
                process: None,
                port: 443,
            };
            check(&rules, false, &flow).unwrap();
            let inspected = !matches!(kind, Kind::Spliced);
            let expected = host == "d.test" || (inspected && direction == Some(Direction::Upload));
            let enforced = enforce(&policy, &Identity::default(), None, &flow);
            assert_eq!(enforced.blocked, expected, "{flow:?}: {enforced:?}");
        }
    }
}

#[test]
fn a_method_rule_first_does_not_open_an_undecrypted_tunnel_to_a_blocked_host() {
    let rules = vec![
        "when = { methods = [\"POST\"] }\naction = \"allow\"\n".to_string(),
        "when = { hosts = [\"d.test\"] }\naction = \"block\"\n".to_string(),
    ];
    let text = policy_text(&rules, false);
    let (policy, _) = Policy::from_str(&text, "policy.toml", Path::new(".")).unwrap();
    let identity = Identity::default();
    let flow = Flow {
        kind: Kind::Spliced,
        host: "d.test",
        path: "/",
        method: "GET",
        file_type: None,
        verdicts: Vec::new(),
        direction: None,
        dlp: Vec::new(),
        size: None,
        user: None,
        process: None,
        port: 443,
    };
    let enforced = enforce(&policy, &identity, None, &flow);
    assert!(enforced.blocked, "{enforced:?}");
}

/// The generator must produce policies the compiler accepts, or the property
/// above would hold vacuously.
#[test]
fn most_generated_policies_compile() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(rule(), 1..7);
    let (mut ok, mut total) = (0, 0);
    let mut last_error = String::new();
    for _ in 0..500 {
        let rules = strategy.new_tree(&mut runner).unwrap().current();
        total += 1;
        match Policy::from_str(&policy_text(&rules, false), "policy.toml", Path::new(".")) {
            Ok(_) => ok += 1,
            Err(e) => last_error = e.to_string(),
        }
    }
    assert!(
        ok * 10 >= total * 8,
        "only {ok}/{total} compiled; last error: {last_error}"
    );
}
