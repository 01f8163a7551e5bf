//! Test harness: network namespaces created by the test itself, servers and the agent
//! running inside them, and real clients (`curl`, `python3`) started with
//! `ip netns exec`.
#![allow(dead_code, unused_imports)]

use rampart_agent::{AgentBuilder, AgentConfig, AgentError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use rampart_testkit::netns::enter_netns;
use rampart_testkit::netns::{addr_up, namespaces_available, unique_id, veth, Netns};
pub use rampart_testkit::process::stdout;

/// Whether the test can create namespaces; says why it skips otherwise (and fails
/// under CI, where the tests run as root with the tools installed).
pub fn root_or_skip(test: &str) -> bool {
    namespaces_available(test, &["ip", "nft", "curl", "python3"])
}

pub const ENDPOINT_TO_GATEWAY: &str = "10.77.1.1";
pub const GATEWAY_ADDR: &str = "10.77.1.2";
pub const ENDPOINT_TO_ORIGIN: &str = "10.77.2.1";
pub const ORIGIN_ADDR: &str = "10.77.2.2";

/// Three namespaces: endpoint ↔ gateway (10.77.1.0/24), endpoint ↔ origin
/// (10.77.2.0/24). Deleted on drop, also when the test panics.
pub struct Topology {
    pub endpoint: String,
    pub gateway: String,
    pub origin: String,
    _namespaces: [Netns; 3],
}

impl Topology {
    pub fn create() -> Self {
        let id = unique_id();
        let names = ["ep", "gw", "or"].map(|role| format!("rpa{id}{role}"));
        let _namespaces = names.clone().map(|name| Netns::create(&name));
        let [endpoint, gateway, origin] = names;
        let topo = Topology {
            endpoint,
            gateway,
            origin,
            _namespaces,
        };
        for (peer_ns, ep_addr, peer_addr) in [
            (&topo.gateway, ENDPOINT_TO_GATEWAY, GATEWAY_ADDR),
            (&topo.origin, ENDPOINT_TO_ORIGIN, ORIGIN_ADDR),
        ] {
            let ep_if = format!("to{}", &peer_ns[peer_ns.len() - 2..]);
            veth(&topo.endpoint, &ep_if, peer_ns, "toep");
            addr_up(&topo.endpoint, &ep_if, &format!("{ep_addr}/24"));
            addr_up(peer_ns, "toep", &format!("{peer_addr}/24"));
        }
        topo
    }

    /// Run a command inside a namespace.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// `curl -s -m 5 ARGS` from the endpoint namespace (steered like any program
    /// there): its stdout.
    pub fn curl(&self, args: &[&str]) -> String {
        let mut all = vec!["-s", "-m", "5"];
        all.extend_from_slice(args);
        stdout(&self.exec(&self.endpoint, "curl", &all))
    }

    /// Bytes per second of one download of `url` from the endpoint namespace
    /// (`Host: bulk.test`, up to 60 s), as curl measures it.
    #[allow(dead_code)] // used by the measurement tests only
    pub fn download_speed(&self, url: &str) -> f64 {
        let out = self.exec(
            &self.endpoint,
            "curl",
            &[
                "-s",
                "-m",
                "60",
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download}",
                "-H",
                "Host: bulk.test",
                url,
            ],
        );
        stdout(&out).trim().parse().expect("curl's download speed")
    }

    /// The HTTP status [`Topology::curl`] gets (`-o /dev/null -w %{http_code}`).
    pub fn curl_status(&self, args: &[&str]) -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        self.curl(&all)
    }

    /// `nft` inside a namespace, asserting success; returns stdout.
    pub fn nft(&self, ns: &str, args: &[&str]) -> String {
        let out = self.exec(ns, "nft", args);
        assert!(
            out.status.success(),
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn nft_script(&self, ns: &str, script: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        assert!(
            child.wait().expect("wait").success(),
            "nft script failed:\n{script}"
        );
    }
}

/// Run `make()`'s future forever on a thread inside `ns` (or the test's own namespace);
/// returns the value it sends when ready.
pub fn serve_in<F, Fut, R>(ns: Option<&str>, make: F) -> R
where
    F: FnOnce(mpsc::Sender<R>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
    R: Send + 'static,
{
    let ns = ns.map(str::to_string);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            enter_netns(ns);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(make(tx));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server ready")
}

/// What the test gateway saw in one CONNECT request.
#[derive(Debug, Clone)]
pub struct GatewayRecord {
    pub target: String,
    pub headers: HashMap<String, String>,
}

impl GatewayRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A stand-in for the gateway's proxy listener: records each CONNECT with its
/// metadata headers, then answers plain HTTP inside the tunnel with `via-gateway`.
pub fn start_gateway(topo: &Topology, port: u16) -> Arc<Mutex<Vec<GatewayRecord>>> {
    let bind = SocketAddr::new(GATEWAY_ADDR.parse().expect("ip"), port);
    start_gateway_at(Some(&topo.gateway), bind).1
}

/// The stand-in gateway bound to `bind` in `ns`; returns its address and records.
pub fn start_gateway_at(
    ns: Option<&str>,
    bind: SocketAddr,
) -> (SocketAddr, Arc<Mutex<Vec<GatewayRecord>>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&records);
    let addr = serve_in(ns, move |ready| async move {
        let listener = TcpListener::bind(bind).await.expect("bind gateway");
        ready
            .send(listener.local_addr().expect("addr"))
            .expect("ready");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let records = Arc::clone(&shared);
            tokio::spawn(gateway_conn(stream, records));
        }
    });
    (addr, records)
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

async fn gateway_conn(mut stream: TcpStream, records: Arc<Mutex<Vec<GatewayRecord>>>) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    records
        .lock()
        .expect("records")
        .push(GatewayRecord { target, headers });
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Inside the tunnel: answer an HTTP request, close on anything else (TLS).
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.ok() != Some(1) || first[0] == 0x16 {
        return;
    }
    if read_head(&mut stream).await.is_some() {
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nvia-gateway",
            )
            .await;
    }
}

/// An origin web server on `ORIGIN_ADDR:80` answering `origin saw <client address>`,
/// and a UDP echo on port 443 (QUIC stand-in) and 8443.
pub fn start_origin(topo: &Topology) {
    serve_in(Some(&topo.origin), |ready| async move {
        let udp = UdpSocket::bind((ORIGIN_ADDR, 443))
            .await
            .expect("bind udp 443");
        let udp_other = UdpSocket::bind((ORIGIN_ADDR, 8443))
            .await
            .expect("bind udp 8443");
        tokio::spawn(udp_echo(udp));
        tokio::spawn(udp_echo(udp_other));
        let listener = TcpListener::bind((ORIGIN_ADDR, 80))
            .await
            .expect("bind origin");
        ready.send(()).expect("ready");
        serve_origin(listener).await;
    })
}

/// The HTTP origin alone, bound to `bind` in `ns`; returns its address.
pub fn start_origin_at(ns: Option<&str>, bind: SocketAddr) -> SocketAddr {
    serve_in(ns, move |ready| async move {
        let listener = TcpListener::bind(bind).await.expect("bind origin");
        ready
            .send(listener.local_addr().expect("addr"))
            .expect("ready");
        serve_origin(listener).await;
    })
}

async fn serve_origin(listener: TcpListener) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if read_head(&mut stream).await.is_some() {
                let body = format!("origin saw {}", peer.ip());
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
    }
}

async fn udp_echo(socket: UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], peer).await;
    }
}

/// The agent running on its own thread inside a namespace; stopped (and its table
/// removed) on drop.
pub struct AgentHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), AgentError>>>,
    pub listen: Vec<SocketAddr>,
    pub log_path: PathBuf,
}

impl AgentHandle {
    /// Stop the agent and report how its shutdown went.
    pub fn stop(mut self) -> Result<(), AgentError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), AgentError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("agent thread"),
            None => Ok(()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        let _ = self.finish();
        // Test data directories live in the temp dir; remove them with the agent.
        if let Some(dir) = self.log_path.parent() {
            if dir.starts_with(std::env::temp_dir()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Start the agent inside `ns` (or in the test's own namespace with `None`).
pub fn start_agent(ns: Option<&str>, config: AgentConfig) -> Result<AgentHandle, AgentError> {
    let ns = ns.map(str::to_string);
    let log_path = config.log_path();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        if let Some(ns) = &ns {
            enter_netns(ns);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let agent = match AgentBuilder::new(config).start().await {
                Ok(agent) => agent,
                Err(err) => {
                    let _ = ready_tx.send(Err(err.to_string()));
                    return Err(err);
                }
            };
            let _ = ready_tx.send(Ok(agent.listen_addrs().to_vec()));
            let _ = stop_rx.await;
            agent.shutdown().await
        })
    });
    match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(listen)) => Ok(AgentHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
            listen,
            log_path,
        }),
        Ok(Err(_)) => Err(thread
            .join()
            .expect("agent thread")
            .expect_err("agent failed")),
        Err(_) => panic!("the agent neither started nor failed within 20 s"),
    }
}

/// A fresh data directory for one test.
pub fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-agent-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
