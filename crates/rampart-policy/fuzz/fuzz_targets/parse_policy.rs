//! Any text given to the policy compiler must yield a policy or diagnostics, never a
//! panic; a compiled policy must evaluate and explain any host without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rampart_policy::{ConnectionFacts, Identity, Policy, Process, RequestFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Category paths resolve under a directory that does not exist: no file I/O.
    let base = Path::new("/nonexistent/rampart-fuzz");
    match Policy::from_str(text, "fuzz.toml", base) {
        Ok((policy, warnings)) => {
            for w in &warnings {
                let _ = w.to_string();
            }
            let id = Identity { user: Some("alice".into()), groups: vec!["eng".into()], ..Default::default() };
            let process = Process { name: "python3".into(), path: Some("/usr/bin/python3".into()) };
            // Use a line of the input as a host too, to reach odd host shapes.
            let host = text.lines().next().unwrap_or("example.com");
            for h in [host, "a.b.example.com", "xn--bcher-kva.example", "192.0.2.1"] {
                let conn = ConnectionFacts { identity: &id, process: Some(&process), host: Some(h), dst_ip: None, port: 443 };
                let req = RequestFacts { connection: conn, method: "POST", path: "/a/b?c" };
                let _ = policy.evaluate_connection(&conn);
                let _ = policy.evaluate_request(&req);
                let _ = policy.explain(&req).to_string();
            }
        }
        Err(err) => {
            assert!(err.errors().next().is_some(), "a rejected policy must carry an error");
            let _ = err.to_string();
        }
    }
});
