//! Whatever a damaged or hostile data dir holds, the store's decoders of
//! segments, documents, stored forms, postings and varints return a record or
//! an error, never a panic or an allocation the input cannot justify; what
//! they decode reads and renders as a search would.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none store_decode` from crates/rampart-events.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rampart_events::fuzzing::store_decode(data));
