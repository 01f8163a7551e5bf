//! The x-rampart-* headers an agent sends on a tunnel stream become a bounded
//! process record (or none) without panicking.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none tunnel_metadata` from crates/rampart-gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_gateway::fuzzing::tunnel_metadata(data));
