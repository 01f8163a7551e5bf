//! Policy test case files and URLs must parse or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = rampart_policy::parse_cases(text);
    let _ = rampart_policy::split_url(text);
    let _ = rampart_policy::Pattern::parse(text);
    let _ = rampart_policy::normalize_host(text);
});
