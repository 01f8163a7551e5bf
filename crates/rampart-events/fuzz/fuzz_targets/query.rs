//! The query parser never panics, errors point inside the input (or just past
//! it), and every query it accepts compiles to SQL whose placeholders match its
//! parameters. `cargo +nightly fuzz run query` from crates/rampart-events.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rampart_events::query::parse(text) {
        Ok(q) => {
            let sql = rampart_events::query::compile(&q);
            assert_eq!(sql.sql.matches('?').count(), sql.params.len());
        }
        Err(e) => {
            assert!(e.column >= 1);
            assert!(e.column <= text.chars().count() + 1 || e.message.contains("longer than"));
        }
    }
});
