//! The query parser never panics, errors point inside the input (or just past
//! it), and every query it accepts evaluates on an OCSF event and on a stored
//! flow record (the store's path) without panicking, to the same answer.
//! `cargo +nightly fuzz run query` from crates/rampart-events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_events::{FlowEvent, FlowKind, FlowSummary, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rampart_events::query::parse(text) {
        Ok(q) => {
            let mut summary = FlowSummary::new(rampart_events::new_flow_id(), 1_763_900_000_000);
            summary.user = Some("Alice".into());
            summary.groups = vec!["eng".into(), "Ops".into()];
            summary.url = Some("https://a.example/x?y=1".into());
            summary.status = Some(403);
            let flow = FlowEvent::new(FlowKind::Http, summary);
            let event = flow.event();
            assert_eq!(q.matches(&event), q.matches(&Record::Flow(flow)), "{text}");
        }
        Err(e) => {
            assert!(e.column >= 1);
            assert!(e.column <= text.chars().count() + 1 || e.message.contains("longer than"));
        }
    }
});
