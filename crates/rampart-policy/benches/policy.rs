//! Micro-benchmarks of the policy engine (divan): host lookup, request evaluation
//! with many rules, and compilation of the example policy.
//!
//! Run: `cargo bench -p rampart-policy --bench policy`
//! The scale targets (1M domains, 10k rules) are checked by `--bench targets`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use rampart_policy::{ConnectionFacts, Identity, Policy, RequestFacts};

fn main() {
    divan::main();
}

fn lists_policy(n: usize) -> Policy {
    let mut src = String::from("[lists]\n");
    for i in 0..n {
        let _ = writeln!(
            src,
            "l{i} = [\"h{i}.corp.example\", \".zone{}.example\"]",
            i % 100
        );
    }
    for i in 0..n {
        let _ = writeln!(src, "[[access]]\nid = \"r{i}\"\nwhen = {{ lists = [\"l{i}\"], groups = [\"g{}\"] }}\naction = \"block\"", i % 50);
    }
    match Policy::from_str(&src, "bench.toml", Path::new(".")) {
        Ok((p, _)) => p,
        Err(e) => panic!("{e}"),
    }
}

fn big() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| lists_policy(10_000))
}

#[divan::bench(args = ["h4242.corp.example", "deep.a.zone7.example", "unlisted.example"])]
fn host_lookup(host: &str) -> usize {
    let mut n = 0;
    big().host_objects(divan::black_box(host), |_, _| n += 1);
    n
}

#[divan::bench(args = ["h4242.corp.example", "deep.a.zone7.example", "unlisted.example"])]
fn evaluate_request_10k_rules(host: &str) -> bool {
    let id = Identity {
        groups: vec!["g42".into()],
        ..Default::default()
    };
    let conn = ConnectionFacts {
        identity: &id,
        process: None,
        host: Some(divan::black_box(host)),
        dst_ip: None,
        port: 443,
    };
    big()
        .evaluate_request(&RequestFacts {
            connection: conn,
            method: "GET",
            path: "/",
        })
        .egress
        .default
}

#[divan::bench]
fn builtin_default_connection(bencher: divan::Bencher) {
    let p = Policy::builtin_default();
    let id = Identity::default();
    bencher.bench_local(|| {
        let conn = ConnectionFacts {
            identity: &id,
            process: None,
            host: Some(divan::black_box("api.dropboxapi.com")),
            dst_ip: None,
            port: 443,
        };
        p.evaluate_connection(&conn)
    });
}

#[divan::bench(sample_count = 20)]
fn compile_example_policy() -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy.toml");
    match Policy::load(&path) {
        Ok((p, _)) => p.stats().rules,
        Err(e) => panic!("{e}"),
    }
}
