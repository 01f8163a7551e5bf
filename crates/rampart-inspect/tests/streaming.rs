//! Sessions streaming in the background (`ScanSession::stream_in_background`,
//! what the gateway does with a long download): the same verdicts, digests
//! and sizes as an inline scan of the same bytes, whatever the chunking.

mod common;

use bytes::Bytes;
use common::{inspector, run, write, EICAR};
use md5::Digest as _;
use rampart_inspect::{Inspector, ScanContext, ScanReport, Verdict};

/// Feeds `held` inline (the start the gateway holds), then the rest in
/// `chunk`-sized pieces from the background thread.
fn streamed(insp: &Inspector, name: &str, body: &[u8], held: usize, chunk: usize) -> ScanReport {
    let mut session = insp.session(ScanContext::download().with_file_name(name));
    let (start, rest) = body.split_at(held.min(body.len()));
    session.feed(start).unwrap();
    session.stream_in_background();
    assert!(session.is_streaming());
    for piece in rest.chunks(chunk) {
        session.feed_bytes(Bytes::copy_from_slice(piece));
    }
    assert_eq!(session.size(), body.len() as u64);
    session.finish()
}

fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[0] = 0;
    v
}

#[test]
#[cfg(feature = "yara")]
fn a_streamed_body_gets_the_inline_verdict_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = write(
        d,
        "marker.yar",
        b"rule stream_marker { strings: $m = \"RAMPART-STREAM-MARKER\" condition: $m }\n",
    );
    let insp = inspector(d, |c| {
        c.memory_threshold = 64 * 1024;
        c.yara.rules = vec![rules];
    });
    // 3 MiB of noise with the marker across a chunk boundary near the end,
    // so the body spills to the spool file before YARA sees it.
    let mut body = noise(3 * 1024 * 1024);
    let at = body.len() - 100_003;
    body[at..at + 21].copy_from_slice(b"RAMPART-STREAM-MARKER");
    let inline = insp.scan_bytes(ScanContext::download().with_file_name("a.bin"), &body);
    for chunk in [4096, 65_536, 1_000_003] {
        let report = streamed(&insp, "a.bin", &body, 64 * 1024, chunk);
        assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
        assert_eq!(report.findings[0].rule_or_signature, "stream_marker");
        assert_eq!(report.sha256, inline.sha256);
        assert_eq!(report.size, inline.size);
        assert_eq!(report.file_type, inline.file_type);
    }
    let clean = noise(2 * 1024 * 1024 + 17);
    let report = streamed(&insp, "b.bin", &clean, 64 * 1024, 16 * 1024);
    assert_eq!(report.verdict, Verdict::Clean, "{report:#?}");
    assert_eq!(
        report.sha256,
        insp.scan_bytes(ScanContext::download(), &clean).sha256
    );
}

/// `bundle.zip` in `d`: EICAR stored (no compression) after 1 MiB of noise, so
/// the finding sits past the first chunks of a streamed body.
fn stored_zip_with_eicar(d: &std::path::Path) -> Vec<u8> {
    write(d, "eicar.com", EICAR);
    write(d, "filler.bin", &noise(1024 * 1024));
    run(
        d,
        "zip",
        &["-q", "-0", "bundle.zip", "filler.bin", "eicar.com"],
    );
    common::read(d, "bundle.zip")
}

#[test]
fn a_streamed_zip_is_walked_and_md5_feeds_match_without_a_second_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zip = stored_zip_with_eicar(d);
    let sample = noise(700_000);
    let list = write(
        d,
        "feed.txt",
        format!("{} Bad.Sample\n", hex::encode(md5::Md5::digest(&sample))).as_bytes(),
    );
    let insp = inspector(d, |c| {
        c.memory_threshold = 32 * 1024;
        c.hash_lists.files = vec![list];
    });

    // Handed over in memory, and (200 KiB held) already spilled to the
    // spool file: the thread's reads of the start must not disturb its writes.
    for held in [32 * 1024, 200 * 1024] {
        let report = streamed(&insp, "bundle.zip", &zip, held, 8192);
        assert_eq!(
            report.verdict,
            Verdict::Malicious,
            "held {held}: {report:#?}"
        );
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.container_path == "bundle.zip!/eicar.com"),
            "held {held}: {report:#?}"
        );
    }

    // The MD5 was computed while the body streamed.
    let report = streamed(&insp, "sample.bin", &sample, 32 * 1024, 5000);
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert!(report.findings[0].rule_or_signature.ends_with("Bad.Sample"));
}

#[test]
fn a_streamed_body_past_max_scan_size_is_too_large_and_an_abandoned_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let insp = inspector(dir.path(), |c| {
        c.memory_threshold = 16 * 1024;
        c.max_scan_size = 1024 * 1024;
    });
    let body = noise(3 * 1024 * 1024);
    let report = streamed(&insp, "big.bin", &body, 16 * 1024, 64 * 1024);
    assert_eq!(report.verdict.to_string(), "unscannable: too-large");
    assert_eq!(report.size, body.len() as u64);
    assert_eq!(
        report.sha256,
        insp.scan_bytes(ScanContext::download(), &body).sha256
    );

    // Dropped mid-stream (the client went away): the thread stops, nothing
    // is left in the spool directory.
    let mut session = insp.session(ScanContext::download());
    session.stream_in_background();
    for piece in body.chunks(64 * 1024).take(10) {
        session.feed_bytes(Bytes::copy_from_slice(piece));
    }
    drop(session);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn poll_ready_waits_while_the_queue_is_full_and_wakes_when_it_drains() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let insp = inspector(dir.path(), |_| {});
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut session = insp.session(ScanContext::download());
    session.stream_in_background();
    // Far more than the queue bound at once (64 chunks of 1 MiB, shared):
    // the thread, hashing and spooling each, is almost surely behind.
    let chunk = Bytes::from(noise(1024 * 1024));
    for _ in 0..64 {
        session.feed_bytes(chunk.clone());
    }
    if session.poll_ready(&mut cx) == Poll::Pending {
        let started = std::time::Instant::now();
        while !flag.0.load(Ordering::SeqCst) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the scan thread never woke the waiting feeder"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    assert_eq!(session.poll_ready(&mut cx), Poll::Ready(()));
    assert_eq!(session.finish().verdict, Verdict::Clean);
}

#[test]
fn a_streamed_body_keeps_its_spool_only_when_an_engine_reads_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let insp = inspector(dir.path(), |c| c.memory_threshold = 64 * 1024);
    // Noise: typed from its start, hashed as it passes, not spooled past it.
    let noise_body = noise(5 * 1024 * 1024 + 3);
    let report = streamed(&insp, "n.bin", &noise_body, 64 * 1024, 32 * 1024);
    let inline = insp.scan_bytes(ScanContext::download(), &noise_body);
    assert_eq!(report.verdict, Verdict::Clean, "{report:#?}");
    assert_eq!(report.size, inline.size);
    assert_eq!(report.sha256, inline.sha256);

    // A PDF is read again at the end (/Encrypt): it keeps spooling.
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.extend_from_slice(&vec![b' '; 3 * 1024 * 1024]);
    pdf.extend_from_slice(b"\ntrailer\n<< /Root 1 0 R /Encrypt 5 0 R >>\n%%EOF\n");
    let inline = insp.scan_bytes(ScanContext::download(), &pdf);
    assert_eq!(inline.verdict, Verdict::Encrypted, "{inline:#?}");
    let report = streamed(&insp, "e.pdf", &pdf, 64 * 1024, 16 * 1024);
    assert_eq!(report.verdict, Verdict::Encrypted, "{report:#?}");
    assert_eq!(report.size, pdf.len() as u64);
}

/// What the gateway does with a download whose declared length is past
/// `memory_threshold`: it holds only the first bytes (`ISO_SNIFF_LEN` or
/// less, as chunks come), so the background thread decides whether to keep
/// spooling once enough of the body has arrived, not from the start alone.
#[test]
fn a_streamed_body_held_shorter_than_the_sniff_is_decided_once_enough_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zip = stored_zip_with_eicar(d);
    let insp = inspector(d, |c| c.memory_threshold = 64 * 1024);
    for held in [0, 1000, rampart_inspect::ISO_SNIFF_LEN] {
        // An archive is walked at the end: every byte must have been kept.
        let report = streamed(&insp, "bundle.zip", &zip, held, 3000);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.container_path == "bundle.zip!/eicar.com"),
            "held {held}: {report:#?}"
        );
        // A PDF is read again for /Encrypt.
        let mut pdf = b"%PDF-1.7\n".to_vec();
        pdf.extend_from_slice(&vec![b' '; 2 * 1024 * 1024]);
        pdf.extend_from_slice(b"\ntrailer\n<< /Root 1 0 R /Encrypt 5 0 R >>\n%%EOF\n");
        let report = streamed(&insp, "e.pdf", &pdf, held, 7000);
        assert_eq!(
            report.verdict,
            Verdict::Encrypted,
            "held {held}: {report:#?}"
        );
        // Noise: the same digest, size and type as inline.
        let body = noise(3 * 1024 * 1024 + 5);
        let inline = insp.scan_bytes(ScanContext::download(), &body);
        let report = streamed(&insp, "n.bin", &body, held, 5000);
        assert_eq!(report.verdict, Verdict::Clean, "held {held}: {report:#?}");
        assert_eq!(report.sha256, inline.sha256);
        assert_eq!(report.size, inline.size);
        assert_eq!(report.file_type, inline.file_type);
    }
}

/// The gateway's held chunks are fed by reference (`feed_shared`): the
/// verdict and digest are those of the same bytes fed as one copy.
#[test]
fn chunks_fed_by_reference_get_the_verdict_of_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let insp = inspector(dir.path(), |c| c.memory_threshold = 64 * 1024);
    let body = EICAR.to_vec();
    for chunk in [7, 1, EICAR.len()] {
        let mut session = insp.session(ScanContext::download().with_file_name("e.com"));
        for piece in body.chunks(chunk) {
            session.feed_shared(Bytes::copy_from_slice(piece)).unwrap();
        }
        let report = session.finish();
        let copy = insp.scan_bytes(ScanContext::download().with_file_name("e.com"), &body);
        assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
        assert_eq!(report.sha256, copy.sha256);
        assert_eq!(report.file_type, copy.file_type);
    }
    // Past the threshold in memory, the shared chunks spill to the file:
    // a zip read back from it is still walked.
    let d = dir.path();
    write(d, "eicar.com", EICAR);
    write(d, "filler.bin", &noise(200 * 1024));
    run(
        d,
        "zip",
        &["-q", "-0", "small.zip", "filler.bin", "eicar.com"],
    );
    let zip = common::read(d, "small.zip");
    let mut session = insp.session(ScanContext::download().with_file_name("small.zip"));
    for piece in zip.chunks(10_000) {
        session.feed_shared(Bytes::copy_from_slice(piece)).unwrap();
    }
    let report = session.finish();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.container_path == "small.zip!/eicar.com"),
        "{report:#?}"
    );
}
