//! Leaf minting throughput (cache miss), leaf cache hit latency, and ClientHello parsing.
//! Run: `cargo bench -p rampart-tls --bench leaf`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rampart_tls::ca::{CaOptions, CaPaths, CertificateAuthority};
use rampart_tls::client_hello::parse_client_hello;
use rampart_tls::client_hello::testing::{handshake_message, records, HelloSpec};
use rampart_tls::leaf::LeafNames;
use rampart_tls::leaf_cache::LeafCache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// CPU time consumed by this thread: unlike wall time, unaffected by other processes
/// competing for the cores (the bench machine is shared).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ca() -> (tempfile::TempDir, Arc<CertificateAuthority>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca =
        CertificateAuthority::create(&CaPaths::in_dir(dir.path()), &CaOptions::default(), false)
            .expect("create CA");
    (dir, Arc::new(ca))
}

fn minting(c: &mut Criterion) {
    rampart_tls::install_crypto_provider();
    let (_dir, ca) = ca();
    let names = LeafNames::for_host("bench.example").expect("host");
    let mut group = c.benchmark_group("leaf");
    group.throughput(Throughput::Elements(1));
    // What a cache miss costs: key generation, signing, and loading into rustls.
    group.bench_function("mint_p256_leaf_and_load_into_rustls", |b| {
        b.iter(|| {
            ca.mint(&names)
                .and_then(|l| l.certified_key())
                .expect("mint")
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cache = LeafCache::new(ca.clone(), 20_000);
    runtime.block_on(cache.get(&names)).expect("warm");
    group.bench_function("cache_hit", |b| {
        b.iter(|| runtime.block_on(cache.get(&names)).expect("hit"))
    });
    // Misses through the cache (distinct hosts), including moka's bookkeeping.
    let counter = AtomicU64::new(0);
    group.bench_function("cache_miss_distinct_hosts", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let names = LeafNames::for_host(&format!("h{n}.bench.example")).expect("host");
            runtime.block_on(cache.get(&names)).expect("miss")
        })
    });
    // The same two operations measured in thread CPU time (the "CPU per miss").
    group.bench_function("mint_cpu_time", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                ca.mint(&names)
                    .and_then(|l| l.certified_key())
                    .expect("mint");
            }
            thread_cpu_time() - start
        })
    });
    group.bench_function("cache_miss_cpu_time", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let names = LeafNames::for_host(&format!("h{n}.bench.example")).expect("host");
                runtime.block_on(cache.get(&names)).expect("miss");
            }
            thread_cpu_time() - start
        })
    });
    group.finish();
    // The documented bound: 10,000 distinct hosts later the cache holds at most its capacity.
    runtime.block_on(cache.run_pending_tasks());
    println!(
        "leaf cache after {} distinct hosts: {} entries (capacity 20000)",
        counter.load(Ordering::Relaxed),
        cache.entry_count()
    );
}

fn client_hello(c: &mut Criterion) {
    // A browser-sized ClientHello (487 bytes with padding and a key share), in one record.
    let spec = HelloSpec {
        server_name: Some(b"www.example.com".to_vec()),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        versions: vec![0x0304, 0x0303],
        extra_extensions: vec![(21, vec![0; 300]), (51, vec![0; 40])],
    };
    let wire = records(&handshake_message(&spec), 16384);
    let mut group = c.benchmark_group("client_hello");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("parse_browser_sized_hello", |b| {
        b.iter(|| parse_client_hello(std::hint::black_box(&wire)).expect("parse"))
    });
    group.finish();
}

criterion_group!(benches, minting, client_hello);
criterion_main!(benches);
