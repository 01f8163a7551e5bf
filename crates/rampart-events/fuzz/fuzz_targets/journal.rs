//! The journal reader (what a restart replays after a crash) never panics and
//! never allocates by a length it read: on any bytes, from any committed
//! offset, it returns intact records only, stops where they end, and those
//! records framed again are exactly the bytes it accepted. Each payload then
//! goes through the same decoding the replay does, which must not panic either.
//! `cargo +nightly fuzz run journal` from crates/rampart-events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_events::journal::{encode_record, read_records, Damage, MAGIC, MAX_RECORD};

fuzz_target!(|data: &[u8]| {
    // First byte: where the committed marker points (0 = the segment's start),
    // the rest: the segment. Half the inputs get a valid magic, so the fuzzer
    // spends its time on records rather than on guessing eight bytes.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut segment = Vec::with_capacity(rest.len() + MAGIC.len());
    if first & 0x80 != 0 {
        segment.extend_from_slice(MAGIC);
    }
    segment.extend_from_slice(rest);
    let offset = u64::from(first & 0x7f);
    let records = read_records(&segment, offset);
    let start = (offset as usize).max(MAGIC.len());
    if records.damage == Some(Damage::BadMagic) || segment.len() < MAGIC.len() {
        assert!(records.payloads.is_empty());
        return;
    }
    if start > segment.len() {
        assert!(records.payloads.is_empty());
        return;
    }
    let end = records.end as usize;
    assert!(end >= start && end <= segment.len());
    assert_eq!(records.damage.is_some(), end < segment.len());
    let mut framed = Vec::new();
    for p in &records.payloads {
        assert!(p.len() <= MAX_RECORD);
        encode_record(&mut framed, p);
    }
    assert_eq!(framed.as_slice(), &segment[start..end]);
    for p in &records.payloads {
        let _ = rampart_events::store::decode_stored(p);
    }
});
