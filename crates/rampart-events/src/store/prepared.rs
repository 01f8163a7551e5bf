//! An event as the store's writer takes it: id, time, the values its postings
//! index and its stored form, packed into one buffer.
//!
//! The data path prepares flow events itself ([`PreparedEvent::from_flow`])
//! and hands over this single allocation. The flow record's dozen strings are
//! then allocated and freed on the same thread, which glibc serves from its
//! per-thread cache; freed on the writer's thread instead, each one went
//! through the allocating arena's bins, and that cross-thread traffic cost
//! more than encoding the record.
//!
//! Layout: id (16 bytes), time (i64 LE), offset of the stored form (u32 LE),
//! one entry per [`INDEXED`] field (varint 0 for no value, else length + 1 and
//! the UTF-8 text), then the stored form (`doc.rs`).

use std::borrow::Cow;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use uuid::Uuid;

use super::columns::Row;
use super::schema::INDEXED;
use super::varint;
use crate::field::Field;
use crate::flow::FlowEvent;

const ID: std::ops::Range<usize> = 0..16;
const TIME: std::ops::Range<usize> = 16..24;
const DOC_AT: std::ops::Range<usize> = 24..28;
const HEADER: usize = 28;

/// See the module docs. Only built here, so the layout always holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedEvent {
    buf: Vec<u8>,
}

impl PreparedEvent {
    /// A flow event with its stored form encoded ([`super::encode_flow`]'s bytes).
    pub fn from_flow(flow: &FlowEvent) -> PreparedEvent {
        let buf = Self::header_and_index(flow, 384);
        let doc_at = buf.len();
        let buf = super::doc::encode_flow_into(flow, buf);
        Self::finish(buf, doc_at)
    }

    /// Any event (a flow or a full OCSF event), with its stored form already made.
    pub fn new(row: &impl Row, stored: &[u8]) -> PreparedEvent {
        let mut buf = Self::header_and_index(row, stored.len());
        let doc_at = buf.len();
        buf.extend_from_slice(stored);
        Self::finish(buf, doc_at)
    }

    fn header_and_index(row: &impl Row, doc_capacity: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER + 64 + doc_capacity);
        buf.extend_from_slice(row.id().as_bytes());
        buf.extend_from_slice(&row.time().to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        for value in indexed_values(row).into_iter().chain(summary_values(row)) {
            match value {
                Some(text) => {
                    varint::put(&mut buf, text.len() as u64 + 1);
                    buf.extend_from_slice(text.as_bytes());
                }
                None => buf.push(0),
            }
        }
        buf
    }

    fn finish(mut buf: Vec<u8>, doc_at: usize) -> PreparedEvent {
        // Index entries are a few short strings: far below 4 GiB.
        let at = u32::try_from(doc_at).unwrap_or(u32::MAX);
        buf[DOC_AT].copy_from_slice(&at.to_le_bytes());
        PreparedEvent { buf }
    }

    pub fn id(&self) -> Uuid {
        let mut id = [0; 16];
        id.copy_from_slice(&self.buf[ID]);
        Uuid::from_bytes(id)
    }

    /// The event's `time` (the end of the flow for flow events).
    pub fn time(&self) -> i64 {
        let mut t = [0; 8];
        t.copy_from_slice(&self.buf[TIME]);
        i64::from_le_bytes(t)
    }

    fn doc_at(&self) -> usize {
        let mut at = [0; 4];
        at.copy_from_slice(&self.buf[DOC_AT]);
        (u32::from_le_bytes(at) as usize).min(self.buf.len())
    }

    /// The stored form (`doc.rs`), as a segment keeps it.
    pub fn stored(&self) -> &[u8] {
        &self.buf[self.doc_at()..]
    }

    /// The value of each [`INDEXED`] field, in that order.
    pub fn indexed(&self) -> impl Iterator<Item = Option<&str>> {
        self.header_values().take(INDEXED.len())
    }

    /// The [`SUMMARY`] fields' values, in that order.
    pub fn summary(&self) -> impl Iterator<Item = Option<&str>> {
        self.header_values().skip(INDEXED.len()).take(SUMMARY.len())
    }

    fn header_values(&self) -> impl Iterator<Item = Option<&str>> {
        let mut r = varint::Reader::new(&self.buf[HEADER..self.doc_at()]);
        (0..INDEXED.len() + SUMMARY.len()).map(move |_| match r.varint() {
            Ok(0) | Err(_) => None,
            Ok(n) => r
                .take(n as usize - 1)
                .ok()
                .and_then(|b| std::str::from_utf8(b).ok()),
        })
    }
}

/// Fields the hourly summaries count besides the [`INDEXED`] ones
/// (`hourly.rs`): kept after them in the prepared header, never posted.
pub const SUMMARY: [Field; 2] = [Field::App, Field::Bypass];

fn summary_values<R: Row>(row: &R) -> [Option<Cow<'_, str>>; SUMMARY.len()] {
    std::array::from_fn(|i| text_of(row.column(SUMMARY[i])))
}

/// The text of each [`INDEXED`] field of a row (numbers as their decimal text).
pub fn indexed_values<R: Row>(row: &R) -> [Option<Cow<'_, str>>; INDEXED.len()] {
    std::array::from_fn(|i| text_of(row.column(INDEXED[i])))
}

fn text_of(v: ToSqlOutput<'_>) -> Option<Cow<'_, str>> {
    match v {
        ToSqlOutput::Borrowed(ValueRef::Text(t)) => Some(String::from_utf8_lossy(t)),
        ToSqlOutput::Owned(Value::Text(t)) => Some(Cow::Owned(t)),
        ToSqlOutput::Borrowed(ValueRef::Integer(n)) | ToSqlOutput::Owned(Value::Integer(n)) => {
            Some(Cow::Owned(n.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowKind, FlowSummary};
    use crate::record::Record;

    fn flow() -> FlowEvent {
        let mut s = FlowSummary::new(crate::event::new_flow_id(), 1_763_900_000_000);
        s.user = Some("Alice".into());
        s.url = Some("https://WWW.Example.com:8443/x?y".into());
        s.categories = vec!["news".into()];
        FlowEvent::new(FlowKind::Http, s)
    }

    #[test]
    fn a_prepared_flow_holds_its_id_time_index_values_and_stored_form() {
        let f = flow();
        let p = PreparedEvent::from_flow(&f);
        let record = Record::Flow(f.clone());
        assert_eq!(p.id(), f.id);
        assert_eq!(p.time(), f.summary.end_ms);
        assert_eq!(p.stored(), super::super::encode_flow(&f).as_slice());
        let expected: Vec<Option<String>> = indexed_values(&record)
            .into_iter()
            .map(|v| v.map(Cow::into_owned))
            .collect();
        let got: Vec<Option<String>> = p.indexed().map(|v| v.map(str::to_string)).collect();
        assert_eq!(got, expected);
        // type, user, device, action, host, category, rule
        assert_eq!(got[1].as_deref(), Some("Alice"));
        assert_eq!(got[2], None);
        assert_eq!(got[4].as_deref(), Some("www.example.com"));
        assert_eq!(got[5].as_deref(), Some("news"));
        // The generic constructor makes the same bytes.
        assert_eq!(PreparedEvent::new(&record, p.stored()), p);
    }

    #[test]
    fn a_full_event_is_prepared_with_its_stored_document() {
        let e = flow().event();
        let stored = super::super::encode_doc(&serde_json::to_string(&e).unwrap());
        let p = PreparedEvent::new(&e, &stored);
        assert_eq!(p.id(), e.id());
        assert_eq!(p.time(), e.time);
        assert_eq!(p.stored(), stored.as_slice());
        assert_eq!(p.indexed().count(), INDEXED.len());
    }
}
