//! Fleet pieces for the end-to-end tests (issue 20): gateways of a fleet with
//! the server's CAs, a real HAProxy in front of them (PROXY protocol v2), the
//! fleet store's search, an enrolled device's certificate and a probe of a
//! gateway's agent tunnel with it, and a gateway killed and started again on
//! its own data dir.
//!
//! Included with `#[path = "support/fleet.rs"] mod fleet;` beside `mod support;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    data_dir_of, eventually, free_port, have, http_get_status, rampart_bin, run, KillOnDrop,
    Rampart,
};

/// The address HAProxy connects to the gateways from: the only address whose
/// PROXY headers the gateways believe.
pub const BALANCER: &str = "127.0.0.2";

/// `rampart gateway` `id` in the fleet at `nats`: the fleet's CA and device CA
/// copied from `server_data` (the server's data dir), PROXY headers believed
/// from [`BALANCER`], its own agent tunnel port.
pub fn gateway(nats: &str, id: &str, server_data: &Path) -> Rampart {
    let server_data = server_data.to_path_buf();
    let toml = format!(
        "[proxy]\nproxy_protocol_from = [\"{BALANCER}/32\"]\n\
         [tunnel]\nlisten = \"127.0.0.1:{tunnel}\"\nproxy_protocol_from = [\"{BALANCER}/32\"]\n\
         [fleet]\nnats = \"{nats}\"\ngateway_id = \"{id}\"\n",
        tunnel = free_port()
    );
    Rampart::try_start_gateway_role(&toml, move |command| {
        let data = data_dir_of(command);
        std::fs::create_dir_all(data.join("devices")).expect("gateway data dir");
        for f in ["ca.pem", "ca.key", "devices/ca.pem", "devices/ca.key"] {
            std::fs::copy(server_data.join(f), data.join(f))
                .unwrap_or_else(|e| panic!("copy the fleet's {f}: {e}"));
        }
    })
    .unwrap_or_else(|log| panic!("gateway {id} did not start:\n{log}"))
}

/// The agent tunnel listener of a gateway started by [`gateway`].
pub fn tunnel_addr(gw: &Rampart) -> SocketAddr {
    let text = std::fs::read_to_string(&gw.config_path).expect("the gateway's config");
    let tunnel = text.split("[tunnel]").nth(1).expect("a [tunnel] section");
    tunnel
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = "))
        .map(|v| v.trim_matches('"'))
        .expect("[tunnel] listen")
        .parse()
        .expect("a socket address")
}

/// `kill -9` of a gateway (no drain, no flush: a crash).
pub fn kill9(gw: &mut Rampart) {
    let _ = gw.child.kill();
    let _ = gw.child.wait();
}

/// Starts `rampart gateway` again on the same file and data dir (after
/// [`kill9`]); its log goes on in the same file. Waits until it serves.
pub fn restart(gw: &mut Rampart) {
    kill9(gw);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.dir.path().join("stderr.log"))
        .expect("the gateway's log");
    gw.child = Command::new(rampart_bin())
        .arg("gateway")
        .arg("--config")
        .arg(&gw.config_path)
        .env("RUST_LOG", "info,rampart_gateway=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn rampart gateway");
    let api = gw.api;
    assert!(
        eventually(Duration::from_secs(20), || http_get_status(api, "/healthz")
            == Some(200)),
        "the restarted gateway does not serve:\n{}",
        gw.stderr()
    );
}

/// A running `haproxy -db` balancing over gateways' proxy listeners; killed
/// on drop.
pub struct Haproxy {
    _child: KillOnDrop,
    pub proxy: SocketAddr,
    admin_socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Round robin over `gateways` with `send-proxy-v2` from [`BALANCER`],
    /// health checks on each one's `/healthz` every 200 ms (down after 2
    /// failures), a refused connect retried on another gateway.
    pub fn start(gateways: &[&Rampart]) -> Haproxy {
        assert!(
            have("haproxy"),
            "haproxy is not installed: apt-get install -y haproxy (scripts/install-test-deps.sh)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_socket = dir.path().join("admin.sock");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "global\n    stats socket {sock} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             \x20   retries 3\n    option redispatch 1\n\
             frontend proxy\n    bind {proxy}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    source {BALANCER}\n\
             \x20   option httpchk GET /healthz\n    http-check expect status 200\n\
             \x20   default-server send-proxy-v2 check inter 200ms fall 2 rise 2\n",
            sock = admin_socket.display(),
        );
        for (i, gw) in gateways.iter().enumerate() {
            config.push_str(&format!(
                "    server gw{i} {} check port {}\n",
                gw.proxy,
                gw.api.port()
            ));
        }
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, &config).expect("haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let haproxy = Haproxy {
            _child: KillOnDrop(child),
            proxy,
            admin_socket,
            dir,
        };
        let up = eventually(Duration::from_secs(10), || {
            (0..gateways.len()).all(|i| haproxy.server_status(&format!("gw{i}")) == "UP")
        });
        assert!(
            up,
            "haproxy did not come up with every gateway UP:\n{config}\n{}",
            haproxy.log()
        );
        haproxy
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// HAProxy's view of one server (`UP`, `DOWN`...), from `show stat`.
    pub fn server_status(&self, server: &str) -> String {
        let Ok(mut socket) = UnixStream::connect(&self.admin_socket) else {
            return String::new();
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        if socket.write_all(b"show stat\n").is_err() {
            return String::new();
        }
        let mut csv = String::new();
        let _ = socket.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return String::new();
        };
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let Some(status) = columns.iter().position(|c| *c == "status") else {
            return String::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"gateways") && f.get(1) == Some(&server))
            .and_then(|f| f.get(status).map(|s| s.to_string()))
            .unwrap_or_default()
    }
}

/// `rampart events search --fleet-store URL QUERY --format ocsf`: the OCSF
/// documents of the fleet store, oldest first.
pub fn fleet_search(store: &str, query: &str) -> Vec<serde_json::Value> {
    let out = run(Command::new(rampart_bin()).args([
        "events",
        "search",
        "--fleet-store",
        store,
        "--since",
        "1h",
        "--limit",
        "100000",
        "--format",
        "ocsf",
        query,
    ]));
    assert!(
        out.status.success(),
        "events search --fleet-store failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The fleet store's events whose URL holds `marker`.
pub fn fleet_events_with(store: &str, marker: &str) -> Vec<serde_json::Value> {
    fleet_search(store, "")
        .into_iter()
        .filter(|e| {
            e["http_request"]["url"]["url_string"]
                .as_str()
                .is_some_and(|u| u.contains(marker))
        })
        .collect()
}

/// `rampart fleet status --format json`: (exit code, one object per gateway).
pub fn fleet_status(nats: &str) -> (i32, Vec<serde_json::Value>) {
    let out =
        run(Command::new(rampart_bin())
            .args(["fleet", "status", "--nats", nats, "--format", "json"]));
    let entries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), entries)
}

/// A device enrolled on a server (`rampart agent enroll`), not running: its
/// certificate, key and the device CA, to speak to agent tunnels with.
pub struct Device {
    pub id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Device {
    pub fn enroll(server: &Rampart, user: &str) -> Device {
        let data = server.data_dir();
        let out = run(Command::new(rampart_bin()).args([
            "device",
            "token",
            "create",
            "--user",
            user,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ]));
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n[local_proxy]\nlisten = \"127.0.0.1:{}\"\n",
                state.display().to_string(),
                free_port()
            ),
        )
        .expect("agent.toml");
        let out = run(Command::new(rampart_bin()).args([
            "agent",
            "enroll",
            "--server",
            &format!("http://{}", server.api),
            "--token",
            &token,
            "--config",
            config.to_str().expect("utf-8 path"),
        ]));
        assert!(
            out.status.success(),
            "enroll failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let enrollment: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(state.join("enrollment.json")).expect("enrollment.json"),
        )
        .expect("enrollment JSON");
        Device {
            id: enrollment["device_id"]
                .as_str()
                .expect("device_id")
                .to_string(),
            cert: state.join("device.pem"),
            key: state.join("device.key"),
            ca: state.join("gateway-ca.pem"),
            _dir: dir,
        }
    }

    /// An HTTP/2 request over mutual TLS to the agent tunnel at `tunnel`, as
    /// the agent makes them: `Ok(status)` when the gateway admitted the
    /// device (405: the gateway role answers no agent API calls), `Err(curl's
    /// error)` when the handshake was refused.
    pub fn probe_tunnel(&self, tunnel: SocketAddr) -> Result<u16, String> {
        let out = run(Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg("--cacert")
            .arg(&self.ca)
            .arg(format!("https://127.0.0.1:{}/", tunnel.port())));
        let code: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if out.status.success() && code != 0 {
            Ok(code)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }
}
