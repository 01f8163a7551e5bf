//! A local application's request head parses to a head that ends inside the
//! input (or a precise error), and the host and target it names split into a
//! non-empty host and a non-zero port, never a panic.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none http_head` from crates/rampart-agent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::http_head(data));
