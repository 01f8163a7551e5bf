//! YARA while a download streams (`ScanSession::stream_in_background`): the
//! rules that allow it are scanned block by block as the body arrives (the
//! others scan the whole body at the end), and the verdicts equal those of
//! the whole-body scan of the same bytes — markers planted across the
//! scan's block boundaries, random chunking.
#![cfg(feature = "yara")]

mod common;

use bytes::Bytes;
use common::{inspector, write};
use proptest::prelude::*;
use rampart_inspect::{Inspector, ScanContext, ScanReport, YARA_STREAM_BLOCK};

const RULES: &str = r#"
rule marker { strings: $a = "RAMPART-STREAM-MARKER" condition: $a }
rule pair { strings: $a = "PAIR-LEFT" $b = { 50 41 49 52 [0-3] 52 49 47 48 54 } condition: $a and $b }
rule wide_word { strings: $w = "WideWord" wide nocase condition: $w }
rule absent { strings: $a = "NEVER-THERE" condition: not $a and marker }
"#;

const PLANTS: &[&[u8]] = &[
    b"RAMPART-STREAM-MARKER",
    b"PAIR-LEFT",
    b"PAIR\x00RIGHT",
    b"PAIRRIGHT",
    b"w\x00i\x00d\x00e\x00W\x00O\x00R\x00D\x00",
    b"NEVER-THERE",
];

fn noise(len: usize, mut x: u64) -> Vec<u8> {
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

/// Feeds `held` bytes inline (the start the gateway holds), then the rest
/// in pieces of the given sizes (cycled) from the background thread.
fn streamed(insp: &Inspector, body: &[u8], held: usize, pieces: &[usize]) -> ScanReport {
    let mut session = insp.session(ScanContext::download().with_file_name("d.bin"));
    let (start, mut rest) = body.split_at(held.min(body.len()));
    session.feed(start).unwrap();
    session.stream_in_background();
    assert!(session.is_streaming());
    for &size in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.clamp(1, rest.len()));
        session.feed_bytes(Bytes::copy_from_slice(now));
        rest = later;
    }
    session.finish()
}

fn rules_found(report: &ScanReport) -> Vec<String> {
    let mut names: Vec<String> = report
        .findings
        .iter()
        .map(|f| f.rule_or_signature.clone())
        .collect();
    names.sort();
    names
}

fn streaming_inspector(dir: &std::path::Path) -> Inspector {
    let rules = write(dir, "rules.yar", RULES.as_bytes());
    let insp = inspector(dir, |c| {
        c.memory_threshold = 64 * 1024;
        c.yara.rules = vec![rules];
    });
    let plan = insp.yara_plan().unwrap();
    assert!(plan.streams, "{plan:?}");
    assert_eq!(plan.streamed.len(), 4);
    insp
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn streamed_yara_verdicts_equal_whole_body_verdicts(
        seed in any::<u64>(),
        blocks in 1usize..4,
        plants in proptest::collection::vec((0usize..6, 0usize..4, -40isize..40), 0..6),
        pieces in proptest::collection::vec(1usize..200_000, 1..5),
        held in 0usize..100_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let insp = streaming_inspector(dir.path());
        let mut body = noise(blocks * YARA_STREAM_BLOCK + 70_001, seed | 1);
        // Each plant near a multiple of the scan block (possibly across it).
        for &(which, boundary, offset) in &plants {
            let plant = PLANTS[which];
            let at = (boundary * YARA_STREAM_BLOCK).saturating_add_signed(offset);
            let at = at.min(body.len() - plant.len());
            body[at..at + plant.len()].copy_from_slice(plant);
        }
        let whole = insp.scan_bytes(ScanContext::download().with_file_name("d.bin"), &body);
        let report = streamed(&insp, &body, held, &pieces);
        prop_assert_eq!(report.verdict, whole.verdict);
        prop_assert_eq!(rules_found(&report), rules_found(&whole));
        prop_assert_eq!(&report.sha256, &whole.sha256);
    }
}

#[test]
fn a_marker_split_across_every_block_boundary_offset_is_found_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let insp = streaming_inspector(dir.path());
    let marker = PLANTS[0];
    for shift in 0..=marker.len() {
        let mut body = noise(2 * YARA_STREAM_BLOCK + 5000, 7);
        let at = 2 * YARA_STREAM_BLOCK - shift;
        body[at..at + marker.len()].copy_from_slice(marker);
        let report = streamed(&insp, &body, 64 * 1024, &[16 * 1024]);
        assert_eq!(
            rules_found(&report),
            ["absent", "marker"],
            "marker at {at}: {report:#?}"
        );
    }
}

#[test]
fn in_a_mixed_rule_set_the_presence_rules_stream_and_the_others_scan_the_whole_body() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = write(
        d,
        "mixed.yar",
        b"rule marker { strings: $a = \"RAMPART-STREAM-MARKER\" condition: $a }\n\
          rule big { strings: $a = \"RAMPART\" condition: #a > 1 and filesize > 100KB }\n\
          rule both { condition: big and marker }\n",
    );
    let insp = inspector(d, |c| {
        c.memory_threshold = 64 * 1024;
        c.yara.rules = vec![rules];
    });
    let plan = insp.yara_plan().unwrap();
    assert!(plan.streams, "{plan:?}");
    assert_eq!(plan.streamed, ["marker"]);
    let whole: Vec<&str> = plan.whole_file.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(whole, ["big", "both"]);
    let mut body = noise(YARA_STREAM_BLOCK * 2, 3);
    body[300_000..300_021].copy_from_slice(PLANTS[0]);
    let report = streamed(&insp, &body, 64 * 1024, &[10_000]);
    assert_eq!(rules_found(&report), ["marker"], "{report:#?}");
    body[400_000..400_021].copy_from_slice(PLANTS[0]);
    let report = streamed(&insp, &body, 64 * 1024, &[10_000]);
    assert_eq!(
        rules_found(&report),
        ["big", "both", "marker"],
        "{report:#?}"
    );
    let whole = insp.scan_bytes(ScanContext::download(), &body);
    assert_eq!(rules_found(&report), rules_found(&whole));
}

#[test]
fn streaming_can_be_turned_off_and_the_verdict_is_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = write(d, "rules.yar", RULES.as_bytes());
    let insp = inspector(d, |c| {
        c.memory_threshold = 64 * 1024;
        c.yara.rules = vec![rules];
        c.yara.stream = false;
    });
    assert!(!insp.yara_plan().unwrap().streams);
    let mut body = noise(YARA_STREAM_BLOCK + 9, 5);
    body[YARA_STREAM_BLOCK - 4..YARA_STREAM_BLOCK + 5].copy_from_slice(PLANTS[1]);
    body[1000..1009].copy_from_slice(PLANTS[3]);
    let report = streamed(&insp, &body, 64 * 1024, &[4096]);
    assert_eq!(rules_found(&report), ["pair"], "{report:#?}");
}
