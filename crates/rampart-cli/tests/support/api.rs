//! Calls on the server's HTTP API and the `rampart` CLI as the API tests make
//! them: curl for the API (a real client, TLS included), the built binary for
//! the CLI.

use std::net::SocketAddr;
use std::process::{Command, Output};

use super::{rampart_bin, run};

/// Fails the test with what to do when curl is missing (CI installs it).
pub fn require_curl() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is missing: run scripts/install-test-deps.sh"
    );
}

/// curl straight to a server (no proxy): its exit code, the HTTP status and the body.
pub fn curl_direct(args: &[&str]) -> (i32, u16, String) {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

/// One plain-HTTP API call with curl, with a bearer token and a JSON body when
/// given: the status and the JSON answer (`Null` when it is not JSON).
pub fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-X", method];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "--data", body]);
    }
    args.push(&url);
    let (exit, status, answer) = curl_direct(&args);
    assert_eq!(exit, 0, "curl {method} {url} failed (exit {exit})");
    (status, serde_json::from_str(&answer).unwrap_or_default())
}

/// Runs `rampart ARGS` and returns what it did (nothing asserted).
pub fn rampart_cli(args: &[&str]) -> Output {
    run(Command::new(rampart_bin()).args(args))
}

/// The trimmed stdout of a command that must have succeeded (its stderr otherwise).
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "rampart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
