//! One flow through the gateway — a forwarded request, a request inside a
//! decrypted tunnel, or a tunnel — and its last phase.
//!
//! The data path's phases, in order, each one function:
//! - **admit** ([`crate::proxy::admit`]): source ACL, head size, loop check,
//!   proxy authentication; gives the flow its identity;
//! - **connection** ([`crate::policy_stage::connection_phase`]): a CONNECT
//!   target (host, port) against the policy: access, egress, decryption;
//! - **decrypt** ([`crate::intercept::Tunnel::run`]): the ClientHello read, the
//!   SNI checked against the CONNECT target, TLS with both sides;
//! - **request** ([`crate::policy_stage::request_phase`]): each request's URL
//!   and method, on the proxy listener, inside decrypted tunnels and on agent
//!   flows alike;
//! - **response** ([`crate::response_gate`], [`crate::policy_stage::response_phase`]):
//!   the response's head and first bytes, its file type and what inspection found;
//! - **finish** ([`Flow::finish`]): the access line, the metrics and the event,
//!   from the flow's record, once.
//!
//! A flow carries its record from admission on: every phase writes its
//! decision, reason and counters into it, and `finish` turns that one record
//! into both outputs. The configuration generation (`GatewayState`) a flow
//! started with is loaded once by its caller and kept for the whole flow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::access_log::{AccessLog, FlowRecord};
use crate::metrics::Metrics;

/// One flow's record and where it goes when the flow ends: written by
/// [`Flow::finish`] — after the last response byte, or when the tunnel closes —
/// or, for a flow that ended otherwise (the client went away mid-body), when
/// the value is dropped. Never twice.
pub struct Flow {
    pub record: FlowRecord,
    started: Instant,
    request_bytes: Option<Arc<AtomicU64>>,
    sink: AccessLog,
    metrics: Arc<Metrics>,
    events: Option<rampart_events::EventSender>,
    finished: bool,
}

impl Flow {
    pub fn new(
        record: FlowRecord,
        sink: AccessLog,
        metrics: Arc<Metrics>,
        events: Option<rampart_events::EventSender>,
    ) -> Self {
        Flow {
            record,
            started: Instant::now(),
            request_bytes: None,
            sink,
            metrics,
            events,
            finished: false,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counter the request body wrapper adds to.
    pub fn request_counter(&mut self) -> Arc<AtomicU64> {
        self.request_bytes
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }

    /// The finish phase: the flow's duration and request bytes go into its
    /// record, which is counted in the metrics, handed to the event pipeline
    /// (its journal writes it within about a millisecond) and written as the
    /// access line. Called as soon as the flow is known to be complete, so
    /// the event is on its way no later than the answer's last bytes.
    pub fn finish(mut self) {
        self.write();
    }

    fn write(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(counter) = &self.request_bytes {
            self.record.bytes_from_client = counter.load(Ordering::Relaxed);
        }
        self.record.duration_ms = self.started.elapsed();
        self.metrics.record_flow(&self.record);
        // Both outputs are written here, on the flow's own thread, from the
        // one record: the event in its stored form (queued for the journal)
        // and the access line (into the log's pending buffer). Neither wakes
        // a thread; the record's strings are freed where they were made.
        if let Some(events) = &self.events {
            crate::flow_events::emit(&self.record, events);
        }
        self.sink.log(&self.record);
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.write();
    }
}
