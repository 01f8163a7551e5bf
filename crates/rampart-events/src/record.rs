//! What travels from the data path to the store: a full OCSF event, or an
//! HTTP/network event still in its compact flow form.
//!
//! Nearly every event is a flow event, and building its OCSF document (some
//! forty strings) and rendering it as JSON cost more than storing it. Flow
//! events therefore travel and are stored as [`FlowEvent`]s; the OCSF event is
//! built when someone reads it, or on the way to a sink.

use std::borrow::Cow;

use uuid::Uuid;

use crate::event::Event;
use crate::flow::FlowEvent;

/// A full event is boxed: it is twice the size of a flow event, and the
/// pipeline allocates every record at the size of the largest variant. Flow
/// events, nearly all records, stay inline: one allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Record {
    Event(Box<Event>),
    Flow(FlowEvent),
}

impl Record {
    pub fn id(&self) -> Uuid {
        match self {
            Record::Event(e) => e.id(),
            Record::Flow(f) => f.id,
        }
    }

    /// The event's `time` (the end of the flow for flow events).
    pub fn time(&self) -> i64 {
        match self {
            Record::Event(e) => e.time,
            Record::Flow(f) => f.summary.end_ms,
        }
    }

    /// The OCSF event (built for flow events).
    pub fn to_event(&self) -> Cow<'_, Event> {
        match self {
            Record::Event(e) => Cow::Borrowed(e),
            Record::Flow(f) => Cow::Owned(f.event()),
        }
    }

    /// The OCSF event when it is one already.
    pub fn as_event(&self) -> Option<&Event> {
        match self {
            Record::Event(e) => Some(e),
            Record::Flow(_) => None,
        }
    }
}

impl From<Event> for Record {
    fn from(e: Event) -> Record {
        Record::Event(Box::new(e))
    }
}

impl From<FlowEvent> for Record {
    fn from(f: FlowEvent) -> Record {
        Record::Flow(f)
    }
}
