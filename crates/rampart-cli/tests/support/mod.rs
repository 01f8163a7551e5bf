//! Shared harness for end-to-end tests: start the real `rampart` binary on
//! loopback with ephemeral ports, a real HTTP origin, and run real clients.
//! Every process started here is killed when its handle drops.
// Each test binary uses the part it needs (re-exports included).
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod enrolled_agent;
pub mod netns;
pub mod squid;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The generic pieces live in rampart-testkit, shared with every crate's tests;
// they are re-exported here under the names the CLI tests have always used.
pub use rampart_testkit::{
    curl, curl_status, eventually, free_port, have, http_get_body, http_get_status, raw_exchange,
    raw_exchange_until_close, run, KillOnDrop,
};

/// The loopback HTTP origin (`/hello`, `/echo`, `/bytes/N`...).
pub mod origin {
    pub use rampart_testkit::origin::Origin;
}

/// `openssl s_server` with a throwaway CA.
pub mod tls_origin {
    pub use rampart_testkit::tls_origin::TlsOrigin;
}

/// The data dir of a server the harness is about to spawn (`data` beside the
/// `--config` file it wrote), for a `prepare` closure that puts files there.
pub fn data_dir_of(command: &Command) -> PathBuf {
    let args: Vec<_> = command.get_args().collect();
    let config = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("the harness passes --config");
    config.parent().expect("config dir").join("data")
}

pub fn rampart_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rampart")
}

/// A running `rampart server`.
pub struct Rampart {
    pub child: Child,
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
    tunnel_port: u16,
}

impl Rampart {
    /// Starts `rampart server --config <file>` where the file is `extra_toml`
    /// plus listeners on free ports and a temporary data dir.
    pub fn start(extra_toml: &str) -> Rampart {
        Self::start_with_args(extra_toml, &[])
    }

    pub fn start_with_args(extra_toml: &str, args: &[&str]) -> Rampart {
        Self::try_start(extra_toml, args)
            .unwrap_or_else(|log| panic!("rampart did not become ready:\n{log}"))
    }

    /// Like `start`, but returns the server's stderr if it exits or never becomes ready.
    pub fn try_start(extra_toml: &str, args: &[&str]) -> Result<Rampart, String> {
        Self::try_start_with(extra_toml, args, |_| {})
    }

    /// Like `try_start_with`, but starts again on fresh ports when another
    /// process took one of the picked ports in between (possible on a busy
    /// machine running many tests at once; never hides any other failure).
    fn start_retrying_taken_ports(
        role: &str,
        extra_toml: &str,
        args: &[&str],
        prepare: &dyn Fn(&mut Command),
    ) -> Result<Rampart, String> {
        let mut attempt = 0;
        loop {
            match Self::try_start_once(role, extra_toml, args, prepare) {
                Err(log) if log.contains("Address already in use") && attempt < 4 => attempt += 1,
                other => return other,
            }
        }
    }

    /// Like `try_start`, with a last look at the command before it is spawned
    /// (resource limits through `pre_exec`, environment).
    pub fn try_start_with(
        extra_toml: &str,
        args: &[&str],
        prepare: impl Fn(&mut Command),
    ) -> Result<Rampart, String> {
        Self::start_retrying_taken_ports("server", extra_toml, args, &prepare)
    }

    /// `rampart gateway` (the fleet role) instead of `rampart server`; `prepare`
    /// as in [`Rampart::try_start_with`] (e.g. to put the fleet's CA in place).
    pub fn try_start_gateway_role(
        extra_toml: &str,
        prepare: impl Fn(&mut Command),
    ) -> Result<Rampart, String> {
        Self::start_retrying_taken_ports("gateway", extra_toml, &[], &prepare)
    }

    /// `rampart gateway` in the fleet at `nats` as `id`, with the fleet's CA
    /// (`ca.pem`, `ca.key`) copied from `ca_dir` (a server's data dir).
    pub fn start_fleet_gateway(nats: &str, id: &str, ca_dir: &Path) -> Rampart {
        let ca_dir = ca_dir.to_path_buf();
        Self::try_start_gateway_role(
            &format!("[fleet]\nnats = \"{nats}\"\ngateway_id = \"{id}\"\n"),
            move |command| {
                let data = data_dir_of(command);
                std::fs::create_dir_all(&data).expect("gateway data dir");
                for f in ["ca.pem", "ca.key"] {
                    std::fs::copy(ca_dir.join(f), data.join(f)).expect("copy the fleet CA");
                }
            },
        )
        .unwrap_or_else(|log| panic!("gateway {id} did not start:\n{log}"))
    }

    fn try_start_once(
        role: &str,
        extra_toml: &str,
        args: &[&str],
        prepare: &dyn Fn(&mut Command),
    ) -> Result<Rampart, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        // A `--proxy-listen` flag wins over the file, as in the product.
        let flag_proxy = args
            .iter()
            .position(|a| *a == "--proxy-listen")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let proxy: SocketAddr =
            flag_proxy.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("rampart.toml");
        let data_dir = dir.path().join("data");
        let tunnel_port = free_port();
        let config = compose_config(extra_toml, &data_dir, proxy, api, tunnel_port);
        std::fs::write(&config_path, config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(rampart_bin());
        command
            .arg(role)
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "info,rampart_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        prepare(&mut command);
        let child = command.spawn().expect("spawn rampart");
        let mut r = Rampart {
            child,
            proxy,
            api,
            dir,
            config_path,
            stderr_path,
            tunnel_port,
        };
        r.wait_ready()?;
        Ok(r)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.stderr());
            }
            if http_get_status(self.api, "/healthz") == Some(200)
                && TcpStream::connect(self.proxy).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.stderr())
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Access log lines parsed as JSON (waits briefly for the writer thread).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(self.data_dir().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad access log line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits (up to 15 s: the log is written on a timer) for an access-log record
    /// matching `pred`; panics with the whole log if none comes.
    pub fn find_record(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let mut found = None;
        eventually(Duration::from_secs(15), || {
            found = self.access_log().into_iter().find(|r| pred(r));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no matching record in {:#?}", self.access_log()))
    }

    /// `rampart events search QUERY --format FORMAT` (`json` or `ocsf`) against this
    /// gateway's store, one document per line.
    pub fn search_events(&self, query: &str, format: &str) -> Vec<serde_json::Value> {
        events_search(&self.data_dir(), &[query, "--format", format])
    }

    /// Waits up to 15 s for the stored audit events to satisfy `done` and
    /// returns them; fails the test naming `what`, with every audit event
    /// found, when they never do.
    pub fn wait_for_audit(
        &self,
        what: &str,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut audit = Vec::new();
        let ok = eventually(Duration::from_secs(15), || {
            audit = self.search_events("type = audit", "json");
            done(&audit)
        });
        assert!(
            ok,
            "{what}; audit events found:\n{}",
            audit
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        audit
    }

    /// The gateway's interception CA, exported with `rampart ca export`.
    pub fn gateway_ca(&self) -> PathBuf {
        let out = self.dir.path().join("gateway-ca.pem");
        let status = Command::new(rampart_bin())
            .args(["ca", "export", "--data-dir"])
            .arg(self.data_dir())
            .arg("--out")
            .arg(&out)
            .status()
            .expect("rampart ca export");
        assert!(status.success());
        out
    }

    /// An admin API call with the token from the data dir and a JSON `body`
    /// (may be empty): (status, JSON answer or `Null`).
    pub fn admin_api(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let token = std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("the server's admin.token");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            api = self.api,
            token = token.trim(),
            len = body.len()
        );
        let answer = raw_exchange(self.api, request.as_bytes(), Duration::from_secs(30));
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json = answer
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub fn metrics(&self) -> String {
        http_get_body(self.api, "/metrics").unwrap_or_default()
    }

    pub fn rewrite_config(&self, extra_toml: &str) {
        let config = compose_config(
            extra_toml,
            &self.data_dir(),
            self.proxy,
            self.api,
            self.tunnel_port,
        );
        std::fs::write(&self.config_path, config).expect("write config");
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; returns its exit status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Peak resident memory of the server so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Rampart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn compose_config(
    extra_toml: &str,
    data_dir: &Path,
    proxy: SocketAddr,
    api: SocketAddr,
    tunnel_port: u16,
) -> String {
    // Sections the test gives win; listeners and data dir are always ours.
    let mut out = format!("data_dir = {:?}\n", data_dir.display().to_string());
    let has_proxy_section = extra_toml.contains("[proxy]");
    let has_api_section = extra_toml.contains("[api]");
    let mut body = extra_toml.to_string();
    if has_proxy_section {
        body = body.replacen("[proxy]", &format!("[proxy]\nlisten = \"{proxy}\""), 1);
    }
    if has_api_section {
        body = body.replacen("[api]", &format!("[api]\nlisten = \"{api}\""), 1);
    }
    let mut preamble = String::new();
    if !has_proxy_section {
        preamble.push_str(&format!("[proxy]\nlisten = \"{proxy}\"\n"));
    }
    if !has_api_section {
        preamble.push_str(&format!("[api]\nlisten = \"{api}\"\n"));
    }
    // Every server gets its own agent tunnel port (tests run in parallel),
    // the same one when a test rewrites its configuration.
    if !extra_toml.contains("[tunnel]") {
        preamble.push_str(&format!("[tunnel]\nlisten = \"127.0.0.1:{tunnel_port}\"\n"));
    }
    // Top-level keys of the test's TOML must come before any table.
    let (top, tables) = split_top_level(&body);
    out.push_str(&top);
    out.push_str(&preamble);
    out.push_str(&tables);
    out
}

fn split_top_level(toml: &str) -> (String, String) {
    let mut top = String::new();
    let mut rest = String::new();
    let mut in_table = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            in_table = true;
        }
        let target = if in_table { &mut rest } else { &mut top };
        target.push_str(line);
        target.push('\n');
    }
    (top, rest)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `rampart events search ARGS --data-dir DATA_DIR` (a `json` or `ocsf` format among
/// the args), one document per line; the command must succeed.
pub fn events_search(data_dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(Command::new(rampart_bin())
        .args(["events", "search"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir));
    assert!(
        out.status.success(),
        "events search {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect()
}

/// `rampart device token create --user USER [--groups GROUPS]` on a server's data
/// dir: the one-time enrollment token.
pub fn device_token(data_dir: &Path, user: &str, groups: Option<&str>) -> String {
    let mut command = Command::new(rampart_bin());
    command.args(["device", "token", "create", "--user", user]);
    if let Some(groups) = groups {
        command.args(["--groups", groups]);
    }
    let out = run(command.arg("--data-dir").arg(data_dir));
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `rampart agent enroll --server SERVER --token TOKEN --config CONFIG`, run by
/// `rampart` (a plain `Command::new(rampart_bin())`, or one inside a namespace);
/// returns the device id the agent wrote to `STATE/enrollment.json`.
pub fn enroll_agent(
    mut rampart: Command,
    server: &str,
    token: &str,
    config: &Path,
    state: &Path,
) -> String {
    let out = run(rampart
        .args([
            "agent", "enroll", "--server", server, "--token", token, "--config",
        ])
        .arg(config));
    assert!(
        out.status.success(),
        "agent enroll: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let enrollment: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("enrollment.json")).expect("enrollment.json"),
    )
    .expect("enrollment JSON");
    enrollment["device_id"]
        .as_str()
        .expect("device_id")
        .to_string()
}

/// An Argon2 hash for `[[proxy.users]]`, made by the real `rampart hash-password`.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(rampart_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn rampart hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(out.status.success(), "hash-password failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}
