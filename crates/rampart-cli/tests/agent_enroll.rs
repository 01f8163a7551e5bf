//! Enrollment and the agent's mTLS HTTP/2 tunnel, end to end with the real binary:
//! token → `rampart agent enroll` → `rampart device list`; curl through the agent's
//! local proxy (no root) reaches an origin over the tunnel and the gateway's access log
//! names the device, the user and the process; the tunnel refuses clients without a
//! device certificate or with one from another CA; a token works once; revoking a
//! device closes its open tunnel connection.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::origin::Origin;
use support::{eventually, free_port, rampart_bin, run, Rampart};

/// A running gateway with its tunnel on a free port.
fn start_gateway() -> (Rampart, SocketAddr) {
    let tunnel: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Rampart::start_with_args(
        "[proxy]\nallow_loopback_destinations = true\n",
        &["--tunnel-listen", &tunnel.to_string()],
    );
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect(tunnel)
            .is_ok()),
        "tunnel listener never came up:\n{}",
        gw.stderr()
    );
    (gw, tunnel)
}

fn rampart(args: &[&str]) -> Output {
    run(Command::new(rampart_bin()).args(args))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn create_token(gw: &Rampart, user: &str) -> String {
    let data = gw.data_dir();
    let out = rampart(&[
        "device",
        "token",
        "create",
        "--user",
        user,
        "--groups",
        "eng,ops",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "token create failed: {stderr}");
    let token = stdout.trim().to_string();
    assert!(token.starts_with("rmpt_"), "unexpected token {token:?}");
    token
}

/// Agent config in local-proxy mode (no root), no gateway section: enrollment provides it.
fn agent_config(dir: &Path) -> (PathBuf, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n[local_proxy]\nlisten = \"{listen}\"\n",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
    (path, listen)
}

fn enroll(gw: &Rampart, config: &Path, token: &str) -> Output {
    rampart(&[
        "agent",
        "enroll",
        "--server",
        &format!("http://{}", gw.api),
        "--token",
        token,
        "--config",
        config.to_str().unwrap(),
    ])
}

/// `rampart agent run` with `config`, once its local proxy on `proxy` accepts.
fn run_agent(config: &Path, proxy: SocketAddr) -> ChildGuard {
    let agent = ChildGuard(
        Command::new(rampart_bin())
            .args(["agent", "run", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect(proxy)
            .is_ok()),
        "the agent's local proxy never came up on {proxy}"
    );
    agent
}

/// The agent's `enrollment.json` in its state dir.
fn enrollment_of(state: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("enrollment.json")).unwrap()).unwrap()
}

/// A child process killed when the test ends, pass or fail.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn enrolled_agent_tunnels_curl_and_gateway_logs_device_user_and_process() {
    let (gw, tunnel) = start_gateway();
    let origin = Origin::start();
    // A "pinned" origin: curl's flows to its port are tunnel-bypass.
    let pinned = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy) = agent_config(dir.path());
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap()
            + &format!(
                "[[steering.exceptions]]\nname = \"pinned\"\nprocesses = [\"curl\"]\nports = [{}]\naction = \"tunnel-bypass\"\n",
                pinned.port()
            ),
    )
    .unwrap();

    let token = create_token(&gw, "alice");
    let out = enroll(&gw, &config, &token);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "enroll failed: {stdout}{stderr}");
    let state = dir.path().join("state");
    let enrollment = enrollment_of(&state);
    let device = enrollment["device_id"].as_str().unwrap().to_string();
    assert_eq!(enrollment["gateway"], tunnel.to_string());
    assert_eq!(enrollment["user"], "alice");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "device key must be private");

    // The inventory, read locally and through the API with the admin token.
    let data = gw.data_dir();
    let (listed, _) = text(&rampart(&[
        "device",
        "list",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(
        listed.contains(&device) && listed.contains("alice") && listed.contains("local-proxy"),
        "{listed}"
    );
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let out = rampart(&[
        "device",
        "list",
        "--json",
        "--server",
        &format!("http://{}", gw.api),
        "--token",
        admin.trim(),
    ]);
    let (listed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let devices: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(devices[0]["id"], device.as_str());
    let out = rampart(&[
        "device",
        "list",
        "--server",
        &format!("http://{}", gw.api),
        "--token",
        "wrong",
    ]);
    assert!(
        !out.status.success(),
        "the device API must require the admin token"
    );

    // Run the agent and send curl through its local proxy.
    let agent = run_agent(&config, proxy);
    let out = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "-x",
        &format!("http://{proxy}"),
        &origin.url("/hello"),
    ]));
    let (body, stderr) = text(&out);
    assert!(
        out.status.success(),
        "curl through the agent failed: {stderr}"
    );
    assert!(!body.is_empty(), "origin answered nothing");

    let found = eventually(Duration::from_secs(5), || {
        gw.access_log().iter().any(|r| {
            r["device"] == device.as_str()
                && r["user"] == "alice"
                && r["groups"] == serde_json::json!(["eng", "ops"])
                && r["process"]["name"] == "curl"
                && r["process"]["steering"] == "steer"
                && r["target"] == format!("127.0.0.1:{}", origin.port())
        })
    });
    assert!(
        found,
        "no tunnel record with device, user and process:\n{:#?}",
        gw.access_log()
    );

    // tunnel-bypass goes through the same tunnel and is logged by both sides.
    let out = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "-x",
        &format!("http://{proxy}"),
        &pinned.url("/hello"),
    ]));
    assert!(
        out.status.success(),
        "tunnel-bypass flow failed: {}",
        text(&out).1
    );
    let found = eventually(Duration::from_secs(5), || {
        gw.access_log().iter().any(|r| {
            r["device"] == device.as_str()
                && r["process"]["name"] == "curl"
                && r["process"]["steering"] == "tunnel-bypass"
                && r["target"] == format!("127.0.0.1:{}", pinned.port())
        })
    });
    assert!(found, "no tunnel-bypass record:\n{:#?}", gw.access_log());

    let log = std::fs::read_to_string(state.join("agent.log")).unwrap();
    assert!(
        log.contains("Bypassing connection by tunneling from process: curl, host: 127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains(&format!("Tunnel to gateway {tunnel} up")),
        "{log}"
    );
    assert!(
        log.contains("Tunneling connection from process: curl"),
        "{log}"
    );

    let shown = eventually(Duration::from_secs(5), || {
        let (status, _) = text(&rampart(&[
            "agent",
            "status",
            "--config",
            config.to_str().unwrap(),
        ]));
        status.contains(&device)
            && status.contains("tunnel:        up")
            && status.contains("steered 1, bypassed 0, tunnel-bypassed 1")
    });
    assert!(
        shown,
        "agent status does not show the enrolled, connected agent"
    );
    drop(agent);
}

#[test]
fn enrollment_token_works_once() {
    let (gw, _) = start_gateway();
    let token = create_token(&gw, "bob");
    let first = tempfile::tempdir().unwrap();
    let (config, _) = agent_config(first.path());
    assert!(enroll(&gw, &config, &token).status.success());
    let second = tempfile::tempdir().unwrap();
    let (config, _) = agent_config(second.path());
    let out = enroll(&gw, &config, &token);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a reused token must be refused");
    assert!(
        stderr.contains("403") && stderr.contains("already used"),
        "{stderr}"
    );
    assert!(!second.path().join("state/enrollment.json").exists());
}

/// `curl --http2` against the tunnel with the given client credentials; returns the
/// HTTP status curl saw (0 when the TLS session was refused).
fn tunnel_status(tunnel: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--http2",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .arg("--cacert")
    .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{tunnel}/"));
    let (stdout, _) = text(&run(&mut cmd));
    stdout.trim().parse().unwrap_or(0)
}

#[test]
fn tunnel_refuses_clients_without_a_device_certificate_from_another_ca_or_revoked() {
    let (gw, tunnel) = start_gateway();
    let ca = gw.data_dir().join("devices/ca.pem");
    let dir = tempfile::tempdir().unwrap();

    // Positive control: the enrolled device's own key gets through TLS to HTTP/2
    // (a plain GET is not a CONNECT, hence 405).
    let (config, _) = agent_config(dir.path());
    assert!(enroll(&gw, &config, &create_token(&gw, "carol"))
        .status
        .success());
    let state = dir.path().join("state");
    let device = (state.join("device.pem"), state.join("device.key"));
    assert_eq!(
        tunnel_status(tunnel, &ca, Some((&device.0, &device.1))),
        405
    );

    assert_eq!(
        tunnel_status(tunnel, &ca, None),
        0,
        "no client certificate must be refused"
    );

    let (other_cert, other_key) = (dir.path().join("other.pem"), dir.path().join("other.key"));
    let out = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=intruder",
        "-addext",
        "subjectAltName=URI:rampart://device/dev-intruder",
        "-keyout",
        other_key.to_str().unwrap(),
        "-out",
        other_cert.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "openssl: {}", text(&out).1);
    assert_eq!(
        tunnel_status(tunnel, &ca, Some((&other_cert, &other_key))),
        0,
        "a certificate from another CA must be refused"
    );

    // Revoked: the same certificate that got through above is now refused.
    let enrollment = enrollment_of(&state);
    let id = enrollment["device_id"].as_str().unwrap();
    let out = rampart(&[
        "device",
        "revoke",
        id,
        "--data-dir",
        gw.data_dir().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "revoke failed: {}", text(&out).1);
    assert_eq!(
        tunnel_status(tunnel, &ca, Some((&device.0, &device.1))),
        0,
        "a revoked device must be refused"
    );
    assert!(
        !gw.access_log()
            .iter()
            .any(|r| r["device"] == "dev-intruder"),
        "the intruder reached the data path"
    );
}

/// An echo server on loopback that serves one connection at a time, for a flow that
/// stays open until something else ends it.
fn start_echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
    addr
}

#[test]
fn revoking_a_device_closes_its_open_tunnel_connection_and_flows() {
    let (gw, tunnel) = start_gateway();
    let echo = start_echo_server();
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy) = agent_config(dir.path());
    assert!(enroll(&gw, &config, &create_token(&gw, "mallory"))
        .status
        .success());
    let state = dir.path().join("state");
    let enrollment = enrollment_of(&state);
    let device = enrollment["device_id"].as_str().unwrap().to_string();
    let _agent = run_agent(&config, proxy);

    // A long-lived flow through the tunnel: a client that opens a CONNECT tunnel
    // through the agent's local proxy to the echo server and keeps it open.
    use std::io::{Read, Write};
    let mut flow = TcpStream::connect(proxy).unwrap();
    flow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(flow, "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            flow.read(&mut byte).unwrap(),
            1,
            "the agent closed the CONNECT"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    flow.write_all(b"before revocation").unwrap();
    let mut echoed = [0u8; 17];
    flow.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"before revocation");

    // Revoke through the server's API: the open connection is closed at once, with
    // the flow on it, without restarting anything.
    let admin = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let revoked_at = std::time::Instant::now();
    let out = rampart(&[
        "device",
        "revoke",
        &device,
        "--server",
        &format!("http://{}", gw.api),
        "--token",
        admin.trim(),
    ]);
    assert!(out.status.success(), "revoke: {}", text(&out).1);
    // `device list` shows it revoked (the REVOKED column has the time), found through
    // the server's configuration like every local read.
    let listed = rampart(&[
        "device",
        "list",
        "--config",
        gw.config_path.to_str().unwrap(),
    ]);
    let (table, _) = text(&listed);
    let row = table
        .lines()
        .find(|l| l.starts_with(device.as_str()))
        .unwrap_or_else(|| panic!("{device} not listed:\n{table}"));
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("REVOKED")
            && !row.trim_end().ends_with(" -"),
        "the revoked device is not shown revoked:\n{table}"
    );
    flow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = [0u8; 64];
    match flow.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "the flow of a revoked device is still open ({other:?}):\n{}\nagent.log:\n{}",
            gw.stderr(),
            std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
        ),
    }
    let ended = revoked_at.elapsed();
    assert!(
        ended < Duration::from_secs(5),
        "the flow ended {ended:?} after the revocation"
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .stderr()
            .contains("agent tunnel closed: device revoked")),
        "{}",
        gw.stderr()
    );
    // Nothing lost: the cut flow is still logged, with the device, its byte counts
    // and why it ended.
    assert!(
        eventually(Duration::from_secs(5), || gw.access_log().iter().any(|r| {
            r["device"] == device.as_str()
                && r["target"] == echo.to_string()
                && r["bytes_from_client"] == 17
                && r["bytes_to_client"] == 17
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("tunnel ended with an error"))
        })),
        "no record of the cut flow:\n{:#?}",
        gw.access_log()
    );
    // The next flow makes the agent dial again: the handshake refuses the device with
    // a certificate_revoked alert, which the agent log names, and the flow fails
    // closed although the fail mode is open (the default): a revoked device never
    // goes direct.
    let mut next = TcpStream::connect(proxy).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(next, "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").unwrap();
    let mut answer = [0u8; 12];
    next.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 403");
    let agent_log = || std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
    // A failed dial, not a tunnel that came up and went down: the agent counts the
    // tunnel up only once the gateway answered a PING on it.
    let refused = format!(
        "WARN Tunnel to gateway {tunnel} unavailable: gateway {tunnel} refused this device: \
         its certificate is revoked (tunnel refused: received fatal alert: CertificateRevoked)"
    );
    assert!(
        eventually(Duration::from_secs(10), || agent_log().contains(&refused)),
        "{}",
        agent_log()
    );
    assert_eq!(
        agent_log()
            .matches(&format!("Tunnel to gateway {tunnel} up"))
            .count(),
        1,
        "{}",
        agent_log()
    );
    assert!(
        agent_log()
            .lines()
            .any(|l| l.ends_with("(device revoked, fail-closed)")),
        "{}",
        agent_log()
    );
    assert!(
        !agent_log().contains("(gateway unreachable, fail-open)"),
        "a revoked device went direct:\n{}",
        agent_log()
    );
}

#[test]
fn enrolled_agent_fails_open_while_the_tunnel_is_down_and_reconnects() {
    let (mut gw, tunnel) = start_gateway();
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy) = agent_config(dir.path());
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap()
            + "[gateway]\nfail_mode = \"open\"\nconnect_timeout = \"2s\"\n",
    )
    .unwrap();
    assert!(enroll(&gw, &config, &create_token(&gw, "dave"))
        .status
        .success());
    let _agent = run_agent(&config, proxy);
    let curl = || {
        let out = run(Command::new("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            "-x",
            &format!("http://{proxy}"),
            &origin.url("/hello"),
        ]));
        text(&out).0.trim().to_string()
    };
    assert_eq!(curl(), "200", "through the tunnel");

    gw.signal(nix::sys::signal::Signal::SIGKILL);
    gw.wait_exit(Duration::from_secs(5));
    assert!(
        TcpStream::connect(tunnel).is_err(),
        "gateway still listening"
    );
    assert_eq!(curl(), "200", "fail-open must reach the origin directly");

    let state = dir.path().join("state");
    let logged = eventually(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
        log.contains(&format!("Tunnel to gateway {tunnel} down"))
            && log.contains("from process: curl, host: 127.0.0.1 (gateway unreachable, fail-open)")
    });
    assert!(
        logged,
        "agent log lacks tunnel-down and fail-open lines:\n{}",
        std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
    );

    // The gateway comes back on the same data dir (same device CA) and address: the
    // agent re-dials after its back-off and flows are tunneled again.
    let data = gw.data_dir();
    let mut restarted = ChildGuard(
        Command::new(rampart_bin())
            .args(["server", "--data-dir", data.to_str().unwrap()])
            .args(["--tunnel-listen", &tunnel.to_string()])
            .args(["--proxy-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--allow-loopback-destinations")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(eventually(Duration::from_secs(10), || TcpStream::connect(
        tunnel
    )
    .is_ok()));
    let reconnected = eventually(Duration::from_secs(20), || {
        curl();
        let log = std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
        log.matches(&format!("Tunnel to gateway {tunnel} up"))
            .count()
            >= 2
    });
    assert!(
        reconnected,
        "agent never re-dialled the gateway:\n{}",
        std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
    );
    let _ = restarted.0.kill();
}
