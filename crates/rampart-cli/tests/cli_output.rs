//! One-shot commands behave like Unix tools when their reader goes away.

mod support;

use std::process::Command;

#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    // The reader (`true`) has exited before rampart prints: every write hits a closed pipe.
    let script = format!(
        "{{ sleep 0.3; {bin} policy explain {policy} --url https://www.example.com/; }} | true",
        bin = support::rampart_bin()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
