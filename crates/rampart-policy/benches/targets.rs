//! Scale targets of the policy engine (issue 4), measured and checked:
//! - a 1,000,000-domain category database loads in <= 3 s and keeps <= 64 MiB;
//! - a host lookup in it answers in <= 1 µs at p99;
//! - 10,000 rules evaluate without a linear scan (request p99 reported).
//!
//! Run: `cargo bench -p rampart-policy --bench targets`

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rampart_policy::{ConnectionFacts, Identity, Policy, RequestFacts};

/// Counts live heap bytes and their peak, so memory is measured, not estimated.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Deterministic pseudo-random numbers (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const TLDS: [&str; 6] = ["com", "net", "org", "example", "info", "de"];

fn domain(rng: &mut Rng, i: usize) -> String {
    let tld = TLDS[(rng.next() % TLDS.len() as u64) as usize];
    match rng.next() % 3 {
        0 => format!("site{i}-{:x}.{tld}", rng.next() % 0xffff),
        1 => format!("www.host{i}.{tld}"),
        _ => format!("cdn{}.brand{i}.{tld}", rng.next() % 10),
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn main() {
    let mut report = String::new();
    let dir = std::env::temp_dir().join(format!("rampart-policy-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n = 1_000_000usize;
    let categories = [
        "ads", "news", "gambling", "malware", "shopping", "social", "adult", "games",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sample_domains = Vec::new();
    let mut files: Vec<String> = vec![String::new(); categories.len()];
    for i in 0..n {
        let d = domain(&mut rng, i);
        if i % 97 == 0 {
            sample_domains.push(d.clone());
        }
        let c = i % categories.len();
        files[c].push_str(&d);
        files[c].push('\n');
    }
    for (c, text) in categories.iter().zip(&files) {
        std::fs::create_dir_all(dir.join("cats").join(c)).expect("mkdir");
        std::fs::write(dir.join("cats").join(c).join("domains"), text).expect("write");
    }
    drop(files);
    let policy_path = dir.join("policy.toml");
    std::fs::write(
        &policy_path,
        "[categories]\nload = [\"cats/\"]\n[[access]]\nwhen = { categories = [\"gambling\", \"malware\"] }\naction = \"block\"\n",
    )
    .expect("write policy");

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();
    let (policy, _) = match Policy::load(&policy_path) {
        Ok(p) => p,
        Err(e) => panic!("bench policy failed: {e}"),
    };
    let load_time = start.elapsed();
    let retained = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let stats = policy.stats();

    // Lookups: half hits (subdomains of listed domains), half misses.
    let mut queries = Vec::new();
    for (i, d) in sample_domains.iter().enumerate() {
        queries.push(if i % 2 == 0 {
            format!("a.b.{d}")
        } else {
            format!("miss{i}.unlisted.example")
        });
    }
    let mut found = 0usize;
    for q in &queries {
        policy.host_objects(q, |_, _| found += 1);
    }
    let mut lookup = Vec::with_capacity(queries.len() * 10);
    let mut hit_times = Vec::with_capacity(queries.len() * 5);
    let mut miss_times = Vec::with_capacity(queries.len() * 5);
    for _ in 0..10 {
        for (i, q) in queries.iter().enumerate() {
            let t = Instant::now();
            let mut hits = 0u32;
            policy.host_objects(std::hint::black_box(q), |_, _| hits += 1);
            std::hint::black_box(hits);
            let d = t.elapsed();
            lookup.push(d);
            if i % 2 == 0 {
                hit_times.push(d)
            } else {
                miss_times.push(d)
            }
        }
    }
    let lookup_p50 = percentile(&mut lookup, 0.5);
    let lookup_p99 = percentile(&mut lookup, 0.99);
    let hit_p99 = percentile(&mut hit_times, 0.99);
    let miss_p99 = percentile(&mut miss_times, 0.99);
    // Timer cost, to read the figures above: two Instant::now() around nothing.
    let mut empty = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        empty.push(t.elapsed());
    }
    let timer_p50 = percentile(&mut empty, 0.5);

    // Full request evaluation against the 1M database.
    let id = Identity::default();
    let mut eval = Vec::with_capacity(queries.len());
    for q in &queries {
        let conn = ConnectionFacts {
            identity: &id,
            process: None,
            host: Some(q),
            dst_ip: None,
            port: 443,
        };
        let t = Instant::now();
        std::hint::black_box(policy.evaluate_request(&RequestFacts {
            connection: conn,
            method: "GET",
            path: "/",
        }));
        eval.push(t.elapsed());
    }
    let eval_p99 = percentile(&mut eval, 0.99);
    drop(policy);

    // 10,000 rules: lists, groups, users and categories, evaluated per request.
    let rules = 10_000usize;
    let mut src = String::from("[lists]\n");
    for i in 0..rules {
        let _ = writeln!(
            src,
            "l{i} = [\"h{i}.corp.example\", \".zone{}.example\"]",
            i % 500
        );
    }
    for i in 0..rules {
        let when = match i % 4 {
            0 => format!("{{ lists = [\"l{i}\"] }}"),
            1 => format!("{{ groups = [\"g{}\"], lists = [\"l{i}\"] }}", i % 200),
            2 => format!("{{ users = [\"u{}\"] , methods = [\"POST\"] }}", i % 1000),
            _ => format!("{{ groups = [\"team{}\"] }}", i % 300),
        };
        let _ = writeln!(
            src,
            "[[access]]\nid = \"r{i}\"\nwhen = {when}\naction = \"block\""
        );
    }
    let start = Instant::now();
    let (big, _) = match Policy::from_str(&src, "rules.toml", Path::new(".")) {
        Ok(p) => p,
        Err(e) => panic!("10k-rule policy failed: {e}"),
    };
    let compile_time = start.elapsed();
    let who = Identity {
        user: Some("u7".into()),
        groups: vec!["g3".into(), "team11".into()],
        ..Default::default()
    };
    let hosts: Vec<String> = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                format!("h{}.corp.example", i * 5)
            } else {
                format!("x.zone{}.example", i % 500)
            }
        })
        .collect();
    let mut rule_eval = Vec::new();
    for _ in 0..5 {
        for h in &hosts {
            let conn = ConnectionFacts {
                identity: &who,
                process: None,
                host: Some(h),
                dst_ip: None,
                port: 443,
            };
            let t = Instant::now();
            std::hint::black_box(big.evaluate_request(&RequestFacts {
                connection: conn,
                method: "GET",
                path: "/",
            }));
            rule_eval.push(t.elapsed());
        }
    }
    let rules_p50 = percentile(&mut rule_eval, 0.5);
    let rules_p99 = percentile(&mut rule_eval, 0.99);
    let _ = std::fs::remove_dir_all(&dir);

    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    let _ = writeln!(report, "| measure | result | target | |");
    let _ = writeln!(report, "|---|---|---|---|");
    let _ = writeln!(
        report,
        "| load {n} domains ({} categories, UT1 layout) | {:.2} s | <= 3 s | {} |",
        categories.len(),
        load_time.as_secs_f64(),
        ok(load_time <= Duration::from_secs(3))
    );
    let _ = writeln!(
        report,
        "| heap retained by the compiled policy | {:.1} MiB | <= 64 MiB | {} |",
        mib(retained),
        ok(retained <= 64 << 20)
    );
    let _ = writeln!(
        report,
        "| heap peak while loading | {:.1} MiB | | |",
        mib(peak)
    );
    let _ = writeln!(
        report,
        "| host lookup p50 / p99 ({} queries, half hits) | {} ns / {} ns | p99 <= 1000 ns | {} |",
        lookup.len(),
        lookup_p50.as_nanos(),
        lookup_p99.as_nanos(),
        ok(lookup_p99 <= Duration::from_micros(1))
    );
    let _ = writeln!(
        report,
        "| host lookup p99, hits / misses | {} ns / {} ns | | |",
        hit_p99.as_nanos(),
        miss_p99.as_nanos()
    );
    let _ = writeln!(
        report,
        "| timer overhead per sample (p50) | {} ns | | |",
        timer_p50.as_nanos()
    );
    let _ = writeln!(
        report,
        "| evaluate_request p99 against the 1M database | {} ns | | |",
        eval_p99.as_nanos()
    );
    let _ = writeln!(
        report,
        "| compile {rules} rules + {rules} lists | {:.2} s | | |",
        compile_time.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| evaluate_request with {rules} rules p50 / p99 | {} ns / {} ns | no linear scan | |",
        rules_p50.as_nanos(),
        rules_p99.as_nanos()
    );
    let _ = writeln!(report, "\n({} domains indexed, {} hits found in {} probe queries; policy stats heap estimate {:.1} MiB)", stats.domains, found, queries.len(), mib(stats.heap_bytes));
    print!("{report}");
}
