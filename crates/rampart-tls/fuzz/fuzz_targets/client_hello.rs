//! Fuzz the ClientHello parser: it must never panic, and whatever it accepts must be
//! internally consistent.
//!
//! Run: `cd crates/rampart-tls/fuzz && cargo +nightly fuzz run client_hello`
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_tls::client_hello::{parse_client_hello, ClientHelloError, PEEK_LIMIT};

fuzz_target!(|data: &[u8]| {
    match parse_client_hello(data) {
        Ok(hello) => {
            // The records carrying the hello lie within the input.
            assert!(hello.wire_len <= data.len());
            assert!(hello.wire_len <= PEEK_LIMIT);
            if let Some(name) = &hello.server_name {
                assert!(!name.is_empty() && name.is_ascii());
            }
            assert!(hello.alpn.iter().all(|p| !p.is_empty()));
            // Parsing only the bytes it claims to need gives the same result.
            assert_eq!(parse_client_hello(&data[..hello.wire_len]).ok(), Some(hello));
        }
        Err(ClientHelloError::NeedMoreData { have }) => assert_eq!(have, data.len()),
        Err(_) => {}
    }
});
