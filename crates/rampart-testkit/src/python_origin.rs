//! Origins written as small Python programs (standard library only): started
//! with `python3 -c SCRIPT ARGS...`, they bind port 0 and print `PORT <n>` on
//! their first line, so there is no race for a free port.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{read_announced_port, require};

/// A running Python server; killed on drop.
pub struct PythonServer {
    pub port: u16,
    log: Option<PathBuf>,
    child: Child,
}

impl PythonServer {
    /// Runs `script` with `args`; its stderr goes to `log` (when given). Waits
    /// up to 30 s for the port it announces.
    pub fn start<S: AsRef<OsStr>>(
        what: &str,
        script: &str,
        args: impl IntoIterator<Item = S>,
        log: Option<&Path>,
    ) -> PythonServer {
        require(&["python3"]);
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("{what}: create {}: {e}", path.display())),
            ),
            None => Stdio::null(),
        };
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 for {what}: {e}"));
        let port = read_announced_port(
            &mut child,
            what,
            Duration::from_secs(30),
            log.unwrap_or(Path::new("/dev/null")),
        );
        PythonServer {
            port,
            log: log.map(Path::to_path_buf),
            child,
        }
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
