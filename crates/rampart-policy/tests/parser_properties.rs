//! Bounded property tests of the policy parser and compiler, run by plain
//! `cargo test` (the cargo-fuzz target needs a nightly toolchain CI does not
//! have). Inputs are mutations of `examples/policy.toml` and TOML-ish
//! documents generated from the policy's own vocabulary. For every input the
//! compiler must return a policy or diagnostics — never panic — and every
//! diagnostic must point inside the input (1-based line and column, columns
//! counted in characters, one past the end of a line allowed for "missing
//! value here" errors).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use rampart_policy::{ConnectionFacts, Diagnostic, Identity, Policy, Process, RequestFacts};

const FILE: &str = "input.toml";
const EXAMPLE: &str = include_str!("../../../examples/policy.toml");

/// The directory the example's `categories/` path is relative to.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Cases per property: enough to reach most error paths, few enough that the
/// whole file stays well under 10 s in an unoptimised build on a loaded
/// 2-core machine. `PROPTEST_CASES` overrides it for longer local runs.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking a failure can take many compiles; a bounded budget keeps a
        // failing run short and still yields a small counterexample.
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Checks that a diagnostic names the input file and a place inside it.
fn check_location(src: &str, d: &Diagnostic) -> Result<(), TestCaseError> {
    if &*d.file != FILE {
        // The built-in rules (pinned apps) live in the catalog: a policy may make
        // them unreachable, which is a warning about them, never an error.
        prop_assert!(
            &*d.file == "<app catalog>" && !d.is_error(),
            "diagnostic from another file: {}",
            d
        );
        return Ok(());
    }
    let lines: Vec<&str> = src.split('\n').collect();
    prop_assert!(
        d.line >= 1 && (d.line as usize) <= lines.len(),
        "line {} outside 1..={}: {}",
        d.line,
        lines.len(),
        d
    );
    let line = lines[d.line as usize - 1].trim_end_matches('\r');
    let width = line.chars().count() + 1;
    prop_assert!(
        d.column >= 1 && (d.column as usize) <= width,
        "column {} outside 1..={} of line {:?}: {}",
        d.column,
        width,
        line,
        d
    );
    prop_assert!(!d.message.is_empty(), "empty message at {}", d);
    Ok(())
}

/// Compiles `src`; checks every diagnostic, and that a compiled policy
/// evaluates and explains a few requests.
fn compile_and_check(src: &str) -> Result<(), TestCaseError> {
    match Policy::from_str(src, FILE, &examples_dir()) {
        Ok((policy, warnings)) => {
            for w in &warnings {
                prop_assert!(!w.is_error(), "an accepted policy returned an error: {}", w);
                check_location(src, w)?;
            }
            let who = Identity {
                user: Some("alice".into()),
                groups: vec!["engineering".into()],
                ..Default::default()
            };
            let process = Process {
                name: "python3".into(),
                path: Some("/usr/bin/python3".into()),
            };
            for host in [
                "www.news.example",
                "pypi.org",
                "www.dropbox.com",
                "192.0.2.7",
            ] {
                let conn = ConnectionFacts {
                    identity: &who,
                    process: Some(&process),
                    host: Some(host),
                    dst_ip: None,
                    port: 443,
                };
                let req = RequestFacts {
                    connection: conn,
                    method: "POST",
                    path: "/releases/x?y",
                };
                let _ = policy.evaluate_connection(&conn);
                let _ = policy.evaluate_request(&req);
                prop_assert!(!policy.explain(&req).to_string().is_empty());
            }
        }
        Err(err) => {
            prop_assert!(
                err.errors().next().is_some(),
                "a rejected policy must carry at least one error"
            );
            for d in &err.diagnostics {
                check_location(src, d)?;
            }
        }
    }
    Ok(())
}

/// Snippets that are meaningful to the policy parser: section headers, keys,
/// values of the right and wrong types, names that do and do not exist.
const TOKENS: &[&str] = &[
    "[lists]",
    "[[access]]",
    "[[decryption]]",
    "[[egress]]",
    "[[steering]]",
    "[identities]",
    "[categories]",
    "[categories.custom]",
    "[apps.x]",
    "[apps.dropbox]",
    "[upstreams.u]",
    "[defaults]",
    "id = ",
    "name = ",
    "action = ",
    "when = ",
    "unless = ",
    "via = ",
    "source = ",
    "log = ",
    "disabled = ",
    "domains = ",
    "proxies = ",
    "\"block\"",
    "\"allow\"",
    "\"do-not-decrypt\"",
    "\"tunnel-bypass\"",
    "\"user-alert\"",
    "{ lists = [\"press-allowed\"] }",
    "{ lists = [\"no-such-list\"] }",
    "{ apps = [\"dropbox\"], methods = [\"GET\"] }",
    "{ categories = [\"news\", \"nope\"] }",
    "{ ports = [443, \"8000-8080\", 70000] }",
    "{ networks = [\"office\"], users = [\"alice\"] }",
    "{ processes = [\"python3*\"], hosts = [\"*.a.example\"] }",
    "[\"*.example.com\", \".b.example\", \"bücher.example\"]",
    "[\"a.*.example\", \"x:80\", \"\", \"10.0.0.0/8\"]",
    "[\"http://u:3128\"]",
    "\"",
    "'",
    "\"\"\"",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    ".",
    "\n",
    "\r\n",
    "\t",
    "é",
    "\u{0}",
    "true",
    "42",
    "-1",
    "1979-05-27",
    "inf",
];

fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(TOKENS)
}

/// A byte offset of `s` on a character boundary, picked by `at`.
fn boundary(s: &str, at: Index) -> usize {
    let mut i = at.index(s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One edit of a policy text.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, &'static str),
    Delete(Index, usize),
    Replace(Index, usize, &'static str),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), token()).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1usize..12, token()).prop_map(|(i, n, t)| Edit::Replace(i, n, t)),
        any::<Index>().prop_map(Edit::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(src: &mut String, e: &Edit) {
    match e {
        Edit::Insert(at, t) => {
            let i = boundary(src, *at);
            src.insert_str(i, t);
        }
        Edit::Delete(at, n) | Edit::Replace(at, n, _) => {
            let start = boundary(src, *at);
            let mut end = (start + n).min(src.len());
            while !src.is_char_boundary(end) {
                end += 1;
            }
            let with = match e {
                Edit::Replace(_, _, t) => *t,
                _ => "",
            };
            src.replace_range(start..end, with);
        }
        Edit::DuplicateLine(at) | Edit::SwapLines(at, _) => {
            let mut lines: Vec<String> = src.split('\n').map(str::to_string).collect();
            let a = at.index(lines.len());
            match e {
                Edit::SwapLines(_, other) => {
                    let b = other.index(lines.len());
                    lines.swap(a, b);
                }
                _ => {
                    let dup = lines[a].clone();
                    lines.insert(a, dup);
                }
            }
            *src = lines.join("\n");
        }
        Edit::Truncate(at) => {
            let i = boundary(src, *at);
            src.truncate(i);
        }
    }
}

/// A TOML-ish document: lines made of 1–4 tokens each.
fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(token(), 1..5), 0..30).prop_map(|lines| {
        lines
            .iter()
            .map(|l| l.concat())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[test]
fn the_example_policy_compiles_cleanly() {
    // The mutations start from a valid policy: if it stopped compiling, every
    // case below would only exercise the error path.
    match Policy::from_str(EXAMPLE, FILE, &examples_dir()) {
        Ok((_, warnings)) => assert!(warnings.is_empty(), "{warnings:?}"),
        Err(e) => panic!("examples/policy.toml: {e}"),
    }
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn mutated_example_policies_never_panic_and_point_inside_the_input(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let mut src = EXAMPLE.to_string();
        for e in &edits {
            apply(&mut src, e);
        }
        compile_and_check(&src)?;
    }
}

proptest! {
    #![proptest_config(config(320))]

    #[test]
    fn generated_documents_never_panic_and_point_inside_the_input(src in document()) {
        compile_and_check(&src)?;
    }

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
        compile_and_check(&src)?;
    }
}
