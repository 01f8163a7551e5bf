//! The first bytes of a steered TLS connection yield a lower-cased SNI, none,
//! or why not, never a panic.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none client_hello` from crates/rampart-agent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::client_hello(data));
