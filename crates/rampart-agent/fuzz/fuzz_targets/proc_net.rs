//! /proc/net/tcp tables, /proc/<pid>/stat, fd links and passwd text parse
//! without panicking, and a table row that parses is found by its addresses.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none proc_net` from crates/rampart-agent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::proc_net(data));
