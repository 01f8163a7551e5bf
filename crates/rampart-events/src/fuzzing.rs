//! Entry points for the cargo-fuzz targets in `crates/rampart-events/fuzz`:
//! each feeds arbitrary bytes to the decoders of what the store and the
//! overflow spool read back from disk (a damaged or hostile data dir), and
//! checks what the decoder promises. Hidden from the docs; no production code
//! calls them. The decoders stay crate-private and only these wrappers are
//! exported, so the fuzz crate needs no wider API.

use std::borrow::Cow;

use rusqlite::types::ValueRef;

use crate::field::Field;
use crate::query::FieldValues;
use crate::record::Record;
use crate::store::postings::{self, BLOCK_EVENTS};
use crate::store::segment::Segment;
use crate::store::{doc, varint};

/// The store's decoders. The first byte picks one; the rest is its input.
pub fn store_decode(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 5 {
        0 => segment(rest),
        1 => document(rest),
        2 => stored(rest),
        3 => postings_blob(rest),
        _ => varints(rest),
    }
}

/// A segment's `data` column, with the event count its row claims read from a
/// varint in front (the row is as damaged as the blob can be). Every stored
/// form it holds is decoded too, as a query scanning it would.
fn segment(data: &[u8]) {
    let mut r = varint::Reader::new(data);
    let Ok(count) = r.varint() else {
        return;
    };
    let data = &data[r.pos()..];
    // The reader turns the row's i64 into a usize the same way.
    let count = usize::try_from(count).unwrap_or(0);
    if let Ok(seg) = Segment::decode(data, count) {
        assert_eq!(seg.len(), count);
        for i in 0..count {
            let form = seg
                .stored(i)
                .expect("every counted event has a stored form");
            stored(form);
        }
        assert!(seg.stored(count).is_none());
    }
}

/// A `doc` column value, as a blob and as text.
fn document(data: &[u8]) {
    let _ = doc::decode(ValueRef::Blob(data));
    let _ = doc::decode(ValueRef::Text(data));
    if let Ok(event) = doc::decode_event(ValueRef::Blob(data)) {
        let _ = serde_json::to_string(&event);
    }
}

/// One stored form (a flow record or compressed JSON): decoded, its query
/// columns read and its OCSF event built, as search, the API and sinks do.
fn stored(data: &[u8]) {
    if let Ok(record) = crate::store::decode_stored(data) {
        read_record(&record);
    }
}

fn read_record(record: &Record) {
    let _ = (record.id(), record.time());
    for field in Field::ALL {
        let _ = record.text(field);
        let _ = record.integer(field);
    }
    let event: Cow<'_, _> = record.to_event();
    let _ = serde_json::to_string(&*event);
}

/// A postings blob, looked up under a key taken from the front of the input
/// (one length byte, then the key).
fn postings_blob(data: &[u8]) {
    let Some((&klen, rest)) = data.split_first() else {
        return;
    };
    let klen = usize::from(klen).min(rest.len());
    let (key, blob) = rest.split_at(klen);
    let key = String::from_utf8_lossy(key);
    if let Ok(offsets) = postings::lookup(blob, &key) {
        // Gaps are unsigned: offsets never go down.
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
        assert!(offsets.iter().all(|&o| i64::from(o) < BLOCK_EVENTS));
    }
}

/// Bounds-checked reads in every mix: the position only moves forward and
/// never past the end.
fn varints(data: &[u8]) {
    let mut r = varint::Reader::new(data);
    let mut ops = data.iter().copied().cycle();
    loop {
        let before = r.pos();
        let step = match ops.next().map_or(0, |b| b % 4) {
            0 => r.byte().map(|_| ()),
            1 => r.varint().map(|_| ()),
            2 => r.len().map(|_| ()),
            _ => {
                let n = r.len().unwrap_or(0);
                r.take(n).map(|s| assert_eq!(s.len(), n))
            }
        };
        assert!(r.pos() >= before && r.pos() <= data.len());
        if step.is_err() || r.pos() == data.len() {
            break;
        }
    }
}

/// One line of the overflow spool, as the store's writer replays it after a
/// restart: parsed to a record and its stored form, then prepared for insert.
pub fn spool_line(data: &[u8]) {
    if let Ok((record, stored)) = crate::pipeline::parse_spool_line(data) {
        read_record(&record);
        let prepared = crate::store::PreparedEvent::new(&record, &stored);
        assert_eq!(prepared.id(), record.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowEvent, FlowKind, FlowSummary};
    use crate::store::postings::PostingsBuilder;
    use crate::store::segment::SegmentBuilder;

    fn flows() -> Vec<FlowEvent> {
        let mut summary = FlowSummary::new(crate::new_flow_id(), 1_763_900_000_000);
        summary.user = Some("Alice".into());
        summary.groups = vec!["eng".into()];
        summary.url = Some("https://a.example/x?y=1".into());
        summary.status = Some(403);
        let mut bare = FlowSummary::new(crate::new_flow_id(), 1_763_900_000_500);
        bare.host = Some("b.example".into());
        vec![
            FlowEvent::new(FlowKind::Http, summary),
            FlowEvent::new(FlowKind::Network, bare),
        ]
    }

    /// Valid inputs of each target, tagged with the decoder's selector byte:
    /// the committed seed corpora (see `write_seed_corpus`).
    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        use base64::Engine;
        let flows = flows();
        let json = serde_json::to_string(&flows[0].event()).expect("json");
        let mut seg = SegmentBuilder::default();
        for f in &flows {
            seg.push(f.id, f.summary.end_ms, &crate::store::encode_flow(f));
        }
        seg.push(flows[0].event().id(), 1, &doc::encode(&json));
        let seg = seg.finish();
        let mut segment = vec![0];
        varint::put(&mut segment, seg.count as u64);
        segment.extend_from_slice(seg.data);
        let mut postings = PostingsBuilder::default();
        for (i, v) in ["alice", "Bob", "alice"].iter().enumerate() {
            postings.add(v, i as u32 * 7);
        }
        let mut postings_seed = vec![3, 5];
        postings_seed.extend_from_slice(b"alice");
        postings_seed.extend_from_slice(&postings.encode());
        let mut varints = vec![4];
        for v in [0, 127, 128, 300, u64::MAX, 3] {
            varint::put(&mut varints, v);
        }
        varints.extend_from_slice(b"abc");
        let flow_line = [
            b"F:".as_slice(),
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(crate::store::encode_flow(&flows[0]))
                .as_bytes(),
        ]
        .concat();
        let doc_line = [
            b"F:".as_slice(),
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(doc::encode(&json))
                .as_bytes(),
        ]
        .concat();
        vec![
            ("store_decode", "segment", segment),
            (
                "store_decode",
                "doc",
                [&[1][..], &doc::encode(&json)].concat(),
            ),
            (
                "store_decode",
                "doc_text",
                [&[1][..], json.as_bytes()].concat(),
            ),
            (
                "store_decode",
                "flow",
                [&[2][..], &crate::store::encode_flow(&flows[1])].concat(),
            ),
            ("store_decode", "postings", postings_seed),
            ("store_decode", "varints", varints),
            ("spool_line", "flow", flow_line),
            ("spool_line", "doc", doc_line),
            ("spool_line", "json", json.into_bytes()),
        ]
    }

    /// The seeds are valid: each decodes (the fuzz targets start from real data).
    #[test]
    fn seed_inputs_decode() {
        for (target, name, input) in seeds() {
            match (target, name) {
                ("store_decode", "segment") => {
                    let mut r = varint::Reader::new(&input[1..]);
                    let count = r.varint().expect("count") as usize;
                    let seg = Segment::decode(&input[1 + r.pos()..], count).expect("segment");
                    for i in 0..count {
                        crate::store::decode_stored(seg.stored(i).expect("form")).expect("record");
                    }
                }
                ("store_decode", "flow") => {
                    crate::store::decode_stored(&input[1..]).expect("flow");
                }
                ("store_decode", "postings") => {
                    assert_eq!(postings::lookup(&input[7..], "alice"), Ok(vec![0, 14]));
                }
                ("spool_line", _) => {
                    crate::pipeline::parse_spool_line(&input).expect("line");
                }
                _ => {}
            }
            match target {
                "store_decode" => store_decode(&input),
                _ => spool_line(&input),
            }
        }
    }

    /// Writes the seed corpora under `fuzz/corpus/<target>/`:
    /// `cargo test -p rampart-events fuzzing -- --ignored`.
    #[test]
    #[ignore = "writes the committed fuzz seed corpora"]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (target, name, input) in seeds() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(name), input).expect("write");
        }
    }
}
