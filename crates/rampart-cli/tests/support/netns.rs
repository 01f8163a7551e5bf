//! Network namespaces for end-to-end tests of the agent in transparent mode (adapted
//! from crates/rampart-agent/tests/support): an "endpoint" namespace where the enrolled
//! `rampart agent run` and the real clients (curl, python3 requests) live, and a
//! "servers" namespace with `rampart server` (gateway, API, tunnel listener) and the
//! origins, joined by one veth pair. Nothing ever appears in the host's namespace or
//! leaves the machine; both namespaces (with every nftables table in them) and their
//! `/etc/netns/<name>/hosts` files are deleted on drop, also when a test panics.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_testkit::netns::{
    addr_up, command_in, namespaces_available, spawn_listening, unique_id, veth, Netns,
};
pub use rampart_testkit::netns::{enter_netns, in_netns, ip, reachable};
use rampart_testkit::tls_origin::{openssl_pki, s_server_args};

use super::{device_token, enroll_agent, events_search, eventually, rampart_bin, run, KillOnDrop};

/// The endpoint's address on the veth pair.
pub const ENDPOINT_ADDR: &str = "10.78.0.1";
/// The servers' address (gateway listeners and origins) on the veth pair.
pub const SERVERS_ADDR: &str = "10.78.0.2";

/// Whether the test can create namespaces. Without root it says so loudly; under CI
/// (`CI` set, where tests run as root) a missing privilege or tool fails the test
/// instead of skipping it.
pub fn root_or_skip(test: &str) -> bool {
    if !namespaces_available(test, &["ip", "nft", "curl", "python3", "openssl"]) {
        return false;
    }
    let python_requests = Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    match python_requests {
        true => true,
        false if std::env::var_os("CI").is_some() => panic!("{test}: needs python3-requests"),
        false => {
            eprintln!("SKIPPED {test}: needs python3-requests");
            false
        }
    }
}

/// Two namespaces joined by a veth pair: `endpoint` (10.78.0.1) and `servers`
/// (10.78.0.2). Test host names resolve to the servers' address inside the endpoint
/// namespace through `/etc/netns/<endpoint>/hosts`, which `ip netns exec` mounts over
/// `/etc/hosts` for every process started there.
pub struct NetPair {
    pub endpoint: String,
    pub servers: String,
    // Deleted on drop, the endpoint's hosts file first.
    _namespaces: [Netns; 2],
}

impl NetPair {
    pub fn create(hosts: &[&str]) -> NetPair {
        let id = unique_id();
        let (endpoint, servers) = (format!("rpc{id}ep"), format!("rpc{id}sv"));
        let pair = NetPair {
            _namespaces: [Netns::create(&endpoint), Netns::create(&servers)],
            endpoint,
            servers,
        };
        veth(&pair.endpoint, "tosv", &pair.servers, "toep");
        addr_up(&pair.endpoint, "tosv", &format!("{ENDPOINT_ADDR}/24"));
        addr_up(&pair.servers, "toep", &format!("{SERVERS_ADDR}/24"));
        let etc = pair.etc_dir();
        std::fs::create_dir_all(&etc).expect("create /etc/netns/<endpoint>");
        let mut file = "127.0.0.1 localhost\n::1 localhost\n".to_string();
        for host in hosts {
            file.push_str(&format!("{SERVERS_ADDR} {host}\n"));
        }
        std::fs::write(etc.join("hosts"), file).expect("write the endpoint's hosts file");
        pair
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.endpoint)
    }

    /// A command that runs `program` inside namespace `ns`, with no proxy variables
    /// (transparent steering must catch the clients without them).
    pub fn command(&self, ns: &str, program: &str) -> Command {
        command_in(ns, program)
    }

    /// `python3 -c script` in the servers namespace, returned once something accepts
    /// TCP connections at each of `listening` (within 20 s).
    pub fn python_servers(&self, script: &str, listening: &[SocketAddr]) -> KillOnDrop {
        spawn_listening(
            self.command(&self.servers, "python3").args(["-c", script]),
            &self.servers,
            listening,
        )
    }

    /// Runs `program args` in the endpoint namespace.
    pub fn on_endpoint(&self, program: &str, args: &[&str]) -> Output {
        run(self.command(&self.endpoint, program).args(args))
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // The namespaces themselves go with `_namespaces`.
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// One request as a [`PeerOrigin`] saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub peer: IpAddr,
    pub host: String,
    pub path: String,
}

/// A plain HTTP origin bound in a namespace that records the peer address of every
/// request and answers `origin saw <peer> for <host><path>`: the test can tell a flow
/// the endpoint made directly from one the gateway relayed.
pub struct PeerOrigin {
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl PeerOrigin {
    pub fn start(ns: &str, bind: SocketAddr) -> PeerOrigin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&seen);
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The thread lives as long as the namespace; deleting the namespace does not
        // close the socket, but the test process ends soon after.
        std::thread::spawn(move || {
            enter_netns(&ns);
            let listener = TcpListener::bind(bind).expect("bind the origin");
            let _ = ready_tx.send(());
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&shared);
                std::thread::spawn(move || serve_one(stream, seen));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("origin ready");
        PeerOrigin { seen }
    }

    /// Requests for `host` so far.
    pub fn requests_for(&self, host: &str) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .expect("origin records")
            .iter()
            .filter(|r| r.host == host)
            .cloned()
            .collect()
    }
}

fn serve_one(stream: TcpStream, seen: Arc<Mutex<Vec<SeenRequest>>>) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut host = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("host") {
                host = value.trim().split(':').next().unwrap_or("").to_string();
            }
        }
    }
    let body = format!("origin saw {} for {host}{path}", peer.ip());
    seen.lock().expect("origin records").push(SeenRequest {
        peer: peer.ip(),
        host,
        path,
    });
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

/// `openssl s_server -www` in a namespace with a certificate for `names` from a
/// throwaway CA (`CN=Rampart-Test-Origin-CA`) made for this test only.
pub struct NsTlsOrigin {
    pub ca_pem: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NsTlsOrigin {
    pub fn start(pair: &NetPair, ns: &str, bind: SocketAddr, names: &[&str]) -> NsTlsOrigin {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = openssl_pki(dir.path(), names);
        let mut command = pair.command(ns, "openssl");
        s_server_args(&mut command, &bind.to_string(), &pki);
        let child = command.spawn().expect("openssl s_server");
        let origin = NsTlsOrigin {
            ca_pem: pki.ca_pem,
            child,
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(15), || reachable(ns, bind)),
            "s_server did not start in {ns}"
        );
        origin
    }
}

impl Drop for NsTlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rampart server` running inside a namespace on fixed ports of the servers'
/// address (the namespace is the test's own: nothing else can hold them), so it can be
/// stopped and started again on the same addresses with the same data dir.
pub struct NsServer {
    pub ns: String,
    pub api: SocketAddr,
    pub proxy: SocketAddr,
    pub tunnel: SocketAddr,
    pub config_path: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    starts: u32,
}

impl NsServer {
    /// Writes `rampart.toml` (listeners, data dir, then `extra_toml`) in `dir` and starts
    /// the server in `pair.servers`.
    pub fn start(pair: &NetPair, dir: &Path, extra_toml: &str) -> NsServer {
        let api: SocketAddr = format!("{SERVERS_ADDR}:8080").parse().expect("addr");
        let proxy: SocketAddr = format!("{SERVERS_ADDR}:3128").parse().expect("addr");
        let tunnel: SocketAddr = format!("{SERVERS_ADDR}:3129").parse().expect("addr");
        let config_path = dir.join("rampart.toml");
        // Top-level keys first, then the listener tables, then the test's tables.
        let (top, tables): (Vec<&str>, Vec<&str>) = {
            let mut in_table = false;
            extra_toml.lines().partition(|l| {
                if l.trim_start().starts_with('[') {
                    in_table = true;
                }
                !in_table
            })
        };
        // The test's own `[tunnel]` table (if any) gets the listen address.
        let mut tables =
            tables
                .join("\n")
                .replacen("[proxy]", &format!("[proxy]\nlisten = \"{proxy}\""), 1);
        let tunnel_table = if tables.contains("[tunnel]") {
            tables = tables.replacen("[tunnel]", &format!("[tunnel]\nlisten = \"{tunnel}\""), 1);
            String::new()
        } else {
            format!("[tunnel]\nlisten = \"{tunnel}\"\n")
        };
        let config = format!(
            "data_dir = {:?}\n{}\n[api]\nlisten = \"{api}\"\ntls = \"off\"\n{tunnel_table}{tables}\n",
            dir.join("data").display().to_string(),
            top.join("\n"),
        );
        assert!(
            config.contains("[proxy]\nlisten"),
            "extra_toml must have a [proxy] table"
        );
        std::fs::write(&config_path, config).expect("write rampart.toml");
        let mut server = NsServer {
            ns: pair.servers.clone(),
            api,
            proxy,
            tunnel,
            config_path,
            child: None,
            dir: dir.to_path_buf(),
            starts: 0,
        };
        server.spawn(pair);
        server
    }

    fn spawn(&mut self, pair: &NetPair) {
        self.starts += 1;
        let stderr = std::fs::File::create(self.stderr_path()).expect("stderr file");
        let child = pair
            .command(&self.ns, rampart_bin())
            .arg("server")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,rampart_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rampart server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("rampart server exited with {status}:\n{}", self.stderr());
            }
            let (ns, api, proxy, tunnel) = (self.ns.clone(), self.api, self.proxy, self.tunnel);
            let ready = in_netns(&ns, move || {
                super::http_get_status(api, "/healthz") == Some(200)
                    && TcpStream::connect_timeout(&proxy, Duration::from_secs(1)).is_ok()
                    && TcpStream::connect_timeout(&tunnel, Duration::from_secs(1)).is_ok()
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rampart server not ready within 60 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (the agent's tunnel connection drops with it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again with the same configuration and data dir.
    pub fn restart(&mut self, pair: &NetPair) {
        self.kill();
        self.spawn(pair);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("server-stderr-{}.log", self.starts))
    }

    /// Everything the server wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("server-stderr-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Access log records (JSON lines).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.data_dir().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `rampart events search QUERY --data-dir` (last hour) as JSON objects.
    pub fn search(&self, query: &str) -> Vec<serde_json::Value> {
        events_search(
            &self.data_dir(),
            &[query, "--format", "json", "--since", "1h"],
        )
    }

    /// The gateway's interception CA (`rampart ca export`).
    pub fn interception_ca(&self) -> PathBuf {
        let out_path = self.dir.join("interception-ca.pem");
        let out = run(Command::new(rampart_bin())
            .args(["ca", "export", "--data-dir"])
            .arg(self.data_dir())
            .arg("--out")
            .arg(&out_path));
        assert!(
            out.status.success(),
            "ca export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_path
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An enrolled `rampart agent run` in transparent mode inside the endpoint namespace.
/// Stopped with SIGTERM on drop, so it deletes its own nftables table (the namespace
/// goes right after).
pub struct NsAgent {
    pub device: String,
    pub state: PathBuf,
    pub config: PathBuf,
    child: Child,
}

impl NsAgent {
    /// Creates a one-time token for `user` / `groups` on the server's data dir,
    /// enrolls from the endpoint namespace over the server's API, and runs the agent
    /// there with `extra_toml` appended to its configuration. Returns once the agent
    /// steers and has applied the server's configuration.
    pub fn enroll_and_run(
        pair: &NetPair,
        server: &NsServer,
        dir: &Path,
        user: &str,
        groups: &str,
        extra_toml: &str,
    ) -> NsAgent {
        Self::enroll_and_run_steering(pair, server, dir, user, groups, "", extra_toml)
    }

    /// As [`NsAgent::enroll_and_run`], with `steering_toml` added to the agent's
    /// `[steering]` table (e.g. `steer_all = true`).
    pub fn enroll_and_run_steering(
        pair: &NetPair,
        server: &NsServer,
        dir: &Path,
        user: &str,
        groups: &str,
        steering_toml: &str,
        extra_toml: &str,
    ) -> NsAgent {
        let token = device_token(&server.data_dir(), user, Some(groups));
        let state = dir.join("agent-state");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[steering]\nmode = \"transparent\"\n{steering_toml}\n[transparent]\nport = 3131\n{extra_toml}",
                state.display().to_string()
            ),
        )
        .expect("write agent.toml");
        let device = enroll_agent(
            pair.command(&pair.endpoint, rampart_bin()),
            &format!("http://{}", server.api),
            &token,
            &config,
            &state,
        );
        let stderr = std::fs::File::create(dir.join("agent-stderr.log")).expect("stderr file");
        let child = pair
            .command(&pair.endpoint, rampart_bin())
            .args(["agent", "run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rampart agent run");
        let mut agent = NsAgent {
            device,
            state,
            config,
            child,
        };
        let ready = eventually(Duration::from_secs(60), || {
            let log = agent.log();
            log.contains("Agent started in transparent")
                && log.contains("Agent config updated to revision")
        });
        if !ready {
            let exited = agent.child.try_wait().ok().flatten();
            panic!(
                "the agent did not start steering with the server's config (exit: {exited:?}):\n{}\nstderr:\n{}",
                agent.log(),
                std::fs::read_to_string(dir.join("agent-stderr.log")).unwrap_or_default()
            );
        }
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process is still the one started (never restarted).
    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `rampart agent update`: (success, stdout + stderr).
    pub fn update(&self) -> (bool, String) {
        let out = run(Command::new(rampart_bin())
            .args(["agent", "update", "--config"])
            .arg(&self.config));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
