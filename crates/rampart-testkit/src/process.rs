//! Running the external programs a test drives, and waiting for what they do.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs a command and returns its output; panics naming the command when it
/// cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `script` with `sh` in `dir`; panics with its output when it fails.
pub fn sh(dir: &Path, script: &str) {
    let out = run(Command::new("sh").arg("-c").arg(script).current_dir(dir));
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether an external program is installed.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Fails the test with the fix when a tool it drives is missing.
pub fn require(tools: &[&str]) {
    for tool in tools {
        assert!(
            have(tool),
            "{tool} is missing: run scripts/install-test-deps.sh (as root)"
        );
    }
}

/// Waits until `f` returns true, polling for up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The async form of [`eventually`] for tests on a tokio runtime: polls `check`
/// every 20 ms and panics, naming `what`, if it is still false after `timeout`.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stdout of a finished command as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed when the test ends, pass or fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the first stdout line of `child`, `PORT <n>`, within `timeout`: how a
/// server that bound port 0 says where it listens (no race for a free port).
/// Kills the child and panics with `log` when it never says.
pub fn read_announced_port(child: &mut Child, what: &str, timeout: Duration, log: &Path) -> u16 {
    use std::io::{BufRead, BufReader};
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("{what}: spawn it with a piped stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(timeout).unwrap_or_default();
    match line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
    {
        Some(port) => port,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not start ({line:?}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }
    }
}
