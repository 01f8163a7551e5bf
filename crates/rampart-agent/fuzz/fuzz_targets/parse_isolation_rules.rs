//! Any exception file must parse into rules or into errors that carry a position,
//! never panic; whatever parses must compile into a table batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_agent::isolation::{parse_rules, ruleset, IsolationSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_rules("fuzz.pf", text) {
        Ok(exceptions) => {
            let spec = IsolationSpec {
                server_addrs: vec![[192, 0, 2, 1].into()],
                exceptions,
                ..Default::default()
            };
            let (batch, expected) = ruleset(&spec);
            assert!(batch.contains("table inet rampart_isolate {"));
            assert!(expected.output_rules >= 10);
        }
        Err(errors) => {
            let first = errors.first().expect("a rejected file carries an error");
            assert!(first.line >= 1 && first.col >= 1, "{first}");
            assert!(first.to_string().starts_with("fuzz.pf:"));
        }
    }
});
