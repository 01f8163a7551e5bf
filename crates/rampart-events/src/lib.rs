//! Rampart events: every connection, page, bypass and alert recorded once, in one
//! OCSF-based schema, stored in an embedded SQLite store, searchable with a small
//! query language and streamed to SIEMs at least once.
//!
//! From the data path:
//! ```no_run
//! # fn main() -> Result<(), rampart_events::EventsError> {
//! use rampart_events::{EventsConfig, FlowEvent, FlowKind, FlowSummary, Pipeline, Verdict};
//! let (pipeline, sender) = Pipeline::start("./rampart-data".as_ref(), &EventsConfig::default())?;
//! let mut flow = FlowSummary::new(rampart_events::new_flow_id(), rampart_events::now_ms());
//! flow.host = Some("news.example".into());
//! flow.verdict = Verdict::Block;
//! // Stored in this compact form; the OCSF event is built when it is read.
//! sender.send_flow(FlowEvent::new(FlowKind::Network, flow)); // never blocks
//! pipeline.close();
//! # Ok(()) }
//! ```

#[cfg(feature = "api")]
pub mod api;
pub mod config;
mod error;
pub mod event;
pub mod field;
pub mod flow;
/// Entry points of the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub mod journal;
pub mod pipeline;
pub mod query;
pub mod record;
pub mod remote;
pub mod render;
pub mod sink;
pub mod spool;
pub mod store;
pub mod time_range;
pub mod tls_client;
pub mod token;

pub use config::{EventsConfig, SinkConfig};
pub use error::EventsError;
pub use event::{
    new_event_id, new_flow_id, now_ms, Bypass, BypassSite, DeviceActivity, Event, EventType,
    Severity, TlsDecision, Verdict,
};
pub use flow::{device_event, AlertSpec, FlowEvent, FlowKind, FlowSummary};
pub use pipeline::{EventSender, Pipeline, PipelineStats, StatsSnapshot};
pub use query::{parse as parse_query, Query, QueryError};
pub use record::Record;
pub use store::{db_path, Page, SearchRequest, StoreReader, StoreWriter};
