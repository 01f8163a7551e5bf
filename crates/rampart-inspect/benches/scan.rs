//! Scanner throughput per core (issue 17 targets: type + SHA-256 + archive
//! walk >= 1 GB/s on non-archive data; DLP profiles >= 300 MB/s on text).
//!
//!   CARGO_TARGET_DIR=/work/target-inspect cargo bench -p rampart-inspect --bench scan

use divan::counter::BytesCount;
use divan::Bencher;
use rampart_inspect::dlp::Dlp;
use rampart_inspect::{DlpConfig, InspectConfig, Inspector, ScanContext};

fn main() {
    divan::main();
}

const BODY: usize = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Incompressible, non-archive bytes (xorshift), as a download looks to
/// the scanner when it is an image, a video or an installer payload.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[0] = 0x00; // not text, not a known magic
    v
}

/// Log/CSV-like text with digits, some of them card-shaped.
fn text(len: usize) -> Vec<u8> {
    let line = b"2026-12-07T09:00:00Z user=alice action=upload id=12345678 amount=1234.56 ref=4111 1111 1111 1112 note=\"quarterly report for the team\"\n";
    line.iter().copied().cycle().take(len).collect()
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn type_sha256_walk_64mib_download(bencher: Bencher) {
    let spool = tempfile::tempdir().expect("temp dir");
    let inspector = Inspector::new(InspectConfig {
        spool_dir: Some(spool.path().to_path_buf()),
        ..InspectConfig::default()
    })
    .expect("default config");
    let body = noise(BODY);
    bencher.counter(BytesCount::new(BODY)).bench(|| {
        let mut session = inspector.session(ScanContext::download());
        for chunk in body.chunks(CHUNK) {
            session.feed(chunk).expect("spool");
        }
        let report = session.finish();
        assert_eq!(report.verdict.as_str(), "clean");
        report
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn dlp_all_builtin_profiles_16mib_text(bencher: Bencher) {
    let dlp = Dlp::new(&DlpConfig::default()).expect("built-in profiles");
    let body = text(16 * 1024 * 1024);
    bencher.counter(BytesCount::new(body.len())).bench(|| {
        let mut scan = dlp.scan();
        for chunk in body.chunks(256 * 1024) {
            scan.feed(chunk);
        }
        scan.finish()
    });
}

#[divan::bench(sample_count = 5, sample_size = 1, args = rampart_inspect::dlp::BUILTIN_PROFILES)]
fn dlp_one_profile_16mib_text(bencher: Bencher, profile: &str) {
    let dlp = Dlp::new(&DlpConfig {
        profiles: vec![profile.to_owned()],
        ..DlpConfig::default()
    })
    .expect("built-in profile");
    let body = text(16 * 1024 * 1024);
    bencher.counter(BytesCount::new(body.len())).bench(|| {
        let mut scan = dlp.scan();
        for chunk in body.chunks(256 * 1024) {
            scan.feed(chunk);
        }
        scan.finish()
    });
}

/// The inspection bench mix: type + SHA-256 + 100 YARA rules on a
/// 64 MiB download (rules of literal strings, as marker/IOC rules are).
#[cfg(feature = "yara")]
#[divan::bench(sample_count = 5, sample_size = 1)]
fn type_sha256_yara100_64mib_download(bencher: Bencher) {
    let spool = tempfile::tempdir().expect("temp dir");
    let mut rules = String::new();
    for i in 0..100 {
        rules.push_str(&format!(
            "rule ioc_{i} {{ strings: $a = \"rampart-ioc-{i:03}-payload\" $b = {{ 4D 5A 90 00 03 {:02X} {:02X} }} condition: $a or $b }}\n",
            i % 256,
            (i * 7) % 256
        ));
    }
    let path = spool.path().join("bench.yar");
    std::fs::write(&path, rules).expect("write rules");
    let inspector = Inspector::new(InspectConfig {
        spool_dir: Some(spool.path().to_path_buf()),
        yara: rampart_inspect::YaraConfig {
            rules: vec![path],
            ..Default::default()
        },
        ..InspectConfig::default()
    })
    .expect("config with rules");
    let body = noise(BODY);
    bencher.counter(BytesCount::new(BODY)).bench(|| {
        let mut session = inspector.session(ScanContext::download());
        for chunk in body.chunks(CHUNK) {
            session.feed(chunk).expect("spool");
        }
        let report = session.finish();
        assert_eq!(report.verdict.as_str(), "clean");
        report
    });
}

/// The ceiling for the scanner's hot path: SHA-256 alone (sha2 uses the
/// CPU's SHA extensions when present).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn sha256_only_64mib(bencher: Bencher) {
    use sha2::Digest;
    let body = noise(BODY);
    bencher
        .counter(BytesCount::new(BODY))
        .bench(|| sha2::Sha256::digest(&body));
}
