//! A client certificate's DER yields a device identity or a precise error,
//! never a panic. `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none device_identity`
//! from crates/rampart-gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_gateway::fuzzing::device_identity(data));
