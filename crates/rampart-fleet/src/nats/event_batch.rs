//! Several events in one JetStream message.
//!
//! One message (and one acknowledgement) per event cost the gateway about
//! 10 µs of CPU per request and nats-server as much again; a batch pays
//! those once for hundreds of events. Each event travels in the embedded
//! store's stored form (`rampart_events::store`: the compact flow record of
//! HTTP and network events, LZ4-compressed OCSF JSON of the others), which a
//! gateway reads from its store and forwards without decoding.
//!
//! Layout: the magic `RMPB`, a format byte (1), the event count (u32 LE),
//! then per event its length (u32 LE) and its stored form. The message's
//! `Nats-Msg-Id` is derived from the payload ([`Batch::msg_id`]), so a batch
//! re-sent as it was (a lost acknowledgement, a spool replay) is dropped by
//! JetStream; events re-sent in another batch are dropped by the fleet store,
//! which ignores event ids it holds.
//!
//! A payload that does not start with the magic is one event's OCSF JSON, as
//! gateways before batching published it: a fleet may be upgraded server first.

use bytes::{BufMut, Bytes, BytesMut};
use rampart_events::Event;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"RMPB";
const FORMAT_V1: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 4;

/// How large a batch may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Events per message at most.
    pub max_events: usize,
    /// Payload bytes per message at most (NATS refuses messages over the
    /// server's `max_payload`, 1 MiB by default). A single larger event still
    /// goes alone in its own message.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_events: 1000,
            max_bytes: 512 * 1024,
        }
    }
}

/// One message's worth of events, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub payload: Bytes,
    pub events: usize,
}

impl Batch {
    /// The `Nats-Msg-Id`: the payload's SHA-256 (first 16 bytes, hex), the
    /// same for the same events in the same order.
    pub fn msg_id(&self) -> String {
        msg_id(&self.payload)
    }

    /// A batch read back from the spool (or any encoded payload).
    pub fn from_payload(payload: Bytes) -> Batch {
        let events = if payload.starts_with(MAGIC) {
            payload
                .get(MAGIC.len() + 1..HEADER)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, |b| u32::from_le_bytes(b) as usize)
        } else {
            1
        };
        Batch { payload, events }
    }
}

pub(crate) fn msg_id(payload: &[u8]) -> String {
    hex::encode(&Sha256::digest(payload)[..16])
}

/// The stored form of a full event, for callers that hold OCSF events
/// rather than the store's stored forms.
pub fn stored_form(event: &Event) -> Vec<u8> {
    rampart_events::store::encode_doc(&rampart_events::render::ocsf_line(event))
}

/// Pack stored forms into batches within `limits`, keeping their order.
pub fn pack<S: AsRef<[u8]>>(stored: &[S], limits: BatchLimits) -> Vec<Batch> {
    let max_events = limits.max_events.max(1);
    let mut batches = Vec::new();
    let mut buf = BytesMut::new();
    let mut count = 0usize;
    let finish = |buf: &mut BytesMut, count: usize, batches: &mut Vec<Batch>| {
        if count > 0 {
            let mut payload = std::mem::take(buf);
            // At most `max_events` (a usize set by the operator, far below 4 G).
            let n = u32::try_from(count).unwrap_or(u32::MAX);
            payload[MAGIC.len() + 1..HEADER].copy_from_slice(&n.to_le_bytes());
            batches.push(Batch {
                payload: payload.freeze(),
                events: count,
            });
        }
    };
    for form in stored {
        let form = form.as_ref();
        let needed = 4 + form.len();
        if count > 0 && (count >= max_events || buf.len() + needed > limits.max_bytes) {
            finish(&mut buf, count, &mut batches);
            count = 0;
        }
        if count == 0 {
            buf.reserve(HEADER + needed);
            buf.put_slice(MAGIC);
            buf.put_u8(FORMAT_V1);
            buf.put_u32_le(0);
        }
        // A stored form is bounded by the store (16 MiB documents).
        buf.put_u32_le(u32::try_from(form.len()).unwrap_or(u32::MAX));
        buf.put_slice(form);
        count += 1;
    }
    finish(&mut buf, count, &mut batches);
    batches
}

/// Why a message could not be read as events.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("unknown batch format {0}")]
    UnknownFormat(u8),
    #[error("truncated batch (event {0})")]
    Truncated(usize),
    #[error("batch says {declared} events but holds {found}")]
    Count { declared: usize, found: usize },
    #[error("event {index} of the batch: {message}")]
    Event { index: usize, message: String },
}

/// The events in a message payload: a batch, or one legacy OCSF JSON document.
pub fn unpack(payload: &[u8]) -> Result<Vec<Event>, BatchError> {
    let Some(rest) = payload.strip_prefix(MAGIC) else {
        return rampart_events::render::parse_line(payload)
            .map(|e| vec![e])
            .map_err(|message| BatchError::Event { index: 0, message });
    };
    let (&format, rest) = rest.split_first().ok_or(BatchError::Truncated(0))?;
    if format != FORMAT_V1 {
        return Err(BatchError::UnknownFormat(format));
    }
    let (declared, mut rest) = take_u32(rest).ok_or(BatchError::Truncated(0))?;
    let declared = declared as usize;
    // Each event takes at least its 4-byte length: refuse a count the payload
    // cannot hold before sizing an allocation by it.
    let mut events = Vec::with_capacity(declared.min(rest.len() / 4));
    while !rest.is_empty() {
        let index = events.len();
        let (len, after) = take_u32(rest).ok_or(BatchError::Truncated(index))?;
        let len = len as usize;
        let form = after.get(..len).ok_or(BatchError::Truncated(index))?;
        let event =
            rampart_events::store::decode_stored_event(form).map_err(|e| BatchError::Event {
                index,
                message: e.to_string(),
            })?;
        events.push(event);
        rest = &after[len..];
    }
    if events.len() != declared {
        return Err(BatchError::Count {
            declared,
            found: events.len(),
        });
    }
    Ok(events)
}

fn take_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_at_checked(4)?;
    Some((u32::from_le_bytes(head.try_into().ok()?), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_events::{FlowEvent, FlowKind, FlowSummary};

    fn flow(n: usize) -> FlowEvent {
        let mut s = FlowSummary::new(rampart_events::new_flow_id(), 1_795_132_800_000);
        s.end_ms = 1_795_132_800_040 + n as i64;
        s.user = Some(format!("user{n}"));
        s.url = Some(format!("https://host{n}.example/path"));
        s.status = Some(200);
        FlowEvent::new(FlowKind::Http, s)
    }

    #[test]
    fn flow_records_and_full_events_round_trip_in_order_across_batches() {
        let flows: Vec<FlowEvent> = (0..25).map(flow).collect();
        let mut stored: Vec<Vec<u8>> = flows
            .iter()
            .map(rampart_events::store::encode_flow)
            .collect();
        let mut full = flows[0].event();
        full.message = Some("a full OCSF event".into());
        stored.push(stored_form(&full));
        let batches = pack(
            &stored,
            BatchLimits {
                max_events: 10,
                max_bytes: 1 << 20,
            },
        );
        assert_eq!(
            batches.iter().map(|b| b.events).collect::<Vec<_>>(),
            [10, 10, 6]
        );
        let back: Vec<Event> = batches
            .iter()
            .flat_map(|b| unpack(&b.payload).unwrap())
            .collect();
        let mut expected: Vec<Event> = flows.iter().map(FlowEvent::event).collect();
        expected.push(full);
        assert_eq!(back, expected);
        assert_eq!(Batch::from_payload(batches[2].payload.clone()).events, 6);
    }

    #[test]
    fn byte_limit_splits_batches_and_an_oversized_event_goes_alone() {
        let stored = vec![
            vec![2u8; 100],
            vec![2u8; 100],
            vec![2u8; 5000],
            vec![2u8; 10],
        ];
        let batches = pack(
            &stored,
            BatchLimits {
                max_events: 100,
                max_bytes: 300,
            },
        );
        assert_eq!(
            batches.iter().map(|b| b.events).collect::<Vec<_>>(),
            [2, 1, 1]
        );
    }

    #[test]
    fn same_events_same_msg_id_other_events_another() {
        let stored: Vec<Vec<u8>> = (0..3)
            .map(|n| rampart_events::store::encode_flow(&flow(n)))
            .collect();
        let a = pack(&stored, BatchLimits::default());
        let b = pack(&stored, BatchLimits::default());
        let c = pack(&stored[1..], BatchLimits::default());
        assert_eq!(a[0].msg_id(), b[0].msg_id());
        assert_ne!(a[0].msg_id(), c[0].msg_id());
        assert_eq!(a[0].msg_id().len(), 32);
    }

    #[test]
    fn legacy_single_json_messages_still_decode() {
        let e = flow(1).event();
        let json = rampart_events::render::ocsf_line(&e);
        assert_eq!(unpack(json.as_bytes()).unwrap(), vec![e]);
        assert_eq!(Batch::from_payload(Bytes::from(json)).events, 1);
    }

    #[test]
    fn damaged_batches_are_errors_not_panics() {
        let stored = vec![rampart_events::store::encode_flow(&flow(1)); 3];
        let payload = pack(&stored, BatchLimits::default())[0].payload.clone();
        for cut in 0..payload.len() {
            assert!(unpack(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = payload.to_vec();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(unpack(&huge), Err(BatchError::Count { .. })));
        let mut unknown = payload.to_vec();
        unknown[4] = 9;
        assert!(matches!(
            unpack(&unknown),
            Err(BatchError::UnknownFormat(9))
        ));
    }
}
