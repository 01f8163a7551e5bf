//! A netlink reply to a sock_diag lookup yields an owner, none or an error,
//! never a panic. `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none sock_diag`
//! from crates/rampart-agent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::sock_diag(data));
