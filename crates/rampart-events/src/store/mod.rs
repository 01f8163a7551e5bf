//! The embedded event store: SQLite in WAL mode in the data dir.
//!
//! One writer (the pipeline's writer thread) inserts in batched transactions;
//! any number of readers (CLI, API) open their own connections. Events are
//! stored in segments of up to 1,024 (`segment.rs`): each event's stored form
//! (`doc.rs`: the flow record of HTTP and network events, compressed OCSF JSON
//! of the others), compressed together, with the segment's time and id range.
//! The fields investigations start from (user, device, action, host,
//! category, rule) have postings per block of 8,192 events (`postings.rs`),
//! which queries use through a plan (`plan.rs`); every query is evaluated on
//! the decoded records (`scan.rs`).

mod columns;
// The decoders of bytes read from disk are crate-visible for `crate::fuzzing`.
pub(crate) mod doc;
pub mod hourly;
mod migrate;
mod plan;
pub(crate) mod postings;
mod prepared;
mod reader;
mod reader_pool;
mod scan;
mod schema;
pub(crate) mod segment;
pub(crate) mod varint;
mod writer;

pub use columns::Row;
pub use prepared::PreparedEvent;
pub use reader::{Cursor, Page, SearchRequest, StoreReader};
pub use reader_pool::ReaderPool;
pub use writer::{
    Checkpointer, RetentionReport, StoreWriter, DEFAULT_PAGE_CACHE_BYTES, MIN_PAGE_CACHE_BYTES,
};

/// The stored form of an event's JSON document, for [`PreparedEvent::new`].
pub fn encode_doc(json: &str) -> Vec<u8> {
    doc::encode(json)
}

/// The stored form of a flow event (no JSON); [`PreparedEvent::from_flow`] makes it too.
pub fn encode_flow(flow: &crate::flow::FlowEvent) -> Vec<u8> {
    doc::encode_flow(flow)
}

/// The record back from [`encode_flow`]'s (or [`encode_doc`]'s) bytes: a flow
/// event when it was stored as one, else the full event.
pub fn decode_stored(stored: &[u8]) -> Result<crate::record::Record, EventsError> {
    let damaged = |e: doc::DocError| EventsError::DamagedDocument(e.to_string());
    match doc::decode_flow(stored) {
        Ok(flow) => Ok(crate::record::Record::Flow(flow)),
        Err(doc::DocError::UnknownFormat(_)) => doc::decode_event(ValueRef::Blob(stored))
            .map(|e| crate::record::Record::Event(Box::new(e)))
            .map_err(damaged),
        Err(e) => Err(damaged(e)),
    }
}

/// The OCSF event in a stored form (either kind), as the store's readers
/// return it: flow records keep the product version that wrote them.
pub fn decode_stored_event(stored: &[u8]) -> Result<crate::event::Event, EventsError> {
    doc::decode_event(ValueRef::Blob(stored))
        .map_err(|e| EventsError::DamagedDocument(e.to_string()))
}

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;

use crate::error::EventsError;

/// The database file inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("events.db")
}
