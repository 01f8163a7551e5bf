//! Any line of the overflow spool replays to a record ready for the store, or
//! an error that skips it, never a panic.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none spool_line` from crates/rampart-events.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_events::fuzzing::spool_line(data));
