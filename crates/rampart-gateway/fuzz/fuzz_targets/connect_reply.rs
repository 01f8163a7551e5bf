//! An upstream proxy's reply to CONNECT parses to partial, complete (inside the
//! input) or an error, never a panic.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none connect_reply` from crates/rampart-gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_gateway::fuzzing::connect_reply(data));
