//! The real `curl` as the test client, through a proxy or straight to a server.

use std::path::Path;
use std::process::Command;

use crate::process::run;

/// What curl did: its exit code (0, or curl's error number), stdout and stderr.
#[derive(Debug)]
pub struct CurlReply {
    pub exit: i32,
    pub body: String,
    pub stderr: String,
}

impl CurlReply {
    /// Splits the `\n%{http_code}` that [`Curl::with_status`] appends off the body.
    pub fn status_and_body(&self) -> (u16, &str) {
        let (body, code) = self.body.rsplit_once('\n').unwrap_or(("", &self.body));
        (code.trim().parse().unwrap_or(0), body)
    }
}

/// One curl invocation: `-sS --max-time 60`, and the options a test adds.
#[derive(Debug, Clone)]
pub struct Curl {
    args: Vec<String>,
}

impl Default for Curl {
    fn default() -> Self {
        Curl::new()
    }
}

impl Curl {
    pub fn new() -> Curl {
        Curl {
            args: ["-sS", "--max-time", "60"].map(String::from).to_vec(),
        }
    }

    /// Through the HTTP proxy at `proxy` (`-x`).
    pub fn through(proxy: &str) -> Curl {
        Curl::new().args(["-x", proxy])
    }

    /// Trusts only `ca` for the server's certificate (`--cacert`).
    pub fn cacert(self, ca: &Path) -> Curl {
        self.arg("--cacert").arg(ca.display().to_string())
    }

    /// A request header (`-H "Name: value"`).
    pub fn header(self, header: &str) -> Curl {
        self.args(["-H", header])
    }

    /// Appends `\n<status>` to the body (`-w`); see [`CurlReply::status_and_body`].
    pub fn with_status(self) -> Curl {
        self.args(["-w", "\n%{http_code}"])
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Curl {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Curl {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs curl on `urls` (and any URLs already among the arguments).
    pub fn run(&self, urls: &[&str]) -> CurlReply {
        let out = run(Command::new("curl").args(&self.args).args(urls));
        CurlReply {
            exit: out.status.code().unwrap_or(-1),
            body: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// `curl` through `proxy` with the given extra arguments; returns (exit code,
/// stdout, stderr).
pub fn curl(proxy: &str, args: &[&str]) -> (i32, String, String) {
    let reply = Curl::through(proxy).args(args.iter().copied()).run(&[]);
    (reply.exit, reply.body, reply.stderr)
}

/// The HTTP status curl reports for a request through `proxy` (0 when none).
pub fn curl_status(proxy: &str, url: &str, extra: &[&str]) -> u16 {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let (_, out, _) = curl(proxy, &args);
    out.trim().parse().unwrap_or(0)
}
