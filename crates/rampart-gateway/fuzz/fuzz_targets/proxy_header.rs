//! A load balancer's PROXY header (v1 or v2), arriving in segments of any size, is
//! read to its exact end or refused, never past it, and never with a panic.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none proxy_header` from crates/rampart-gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_gateway::fuzzing::proxy_header(data));
