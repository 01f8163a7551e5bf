//! Performance targets of issue 6, measured in namespaces (root). Ignored by default:
//! they move gigabytes and are sensitive to other load on the machine. Run with
//! `cargo nextest run -p rampart-agent --test performance --run-ignored only`.

mod support;

use rampart_agent::AgentConfig;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const BULK_BYTES: u64 = 1 << 30;

fn config(test: &str) -> AgentConfig {
    let dir = data_dir(test);
    AgentConfig::from_toml(
        &format!(
            r#"
data_dir = "{dir}"
[steering]
mode = "transparent"
[[steering.exceptions]]
name = "bulk goes direct"
hosts = ["bulk.test"]
action = "bypass"
[gateway]
proxy = "{GATEWAY_ADDR}:3128"
[transparent]
table = "rampart_agent_perf"
"#,
            dir = dir.display()
        ),
        "perf agent.toml",
    )
    .expect("valid config")
}

/// An origin that answers any request on ports 80 (steered) and 8080 (not steered)
/// with `BULK_BYTES` of zeros.
fn start_bulk_origin(topo: &Topology) {
    serve_in(Some(&topo.origin), |ready| async move {
        let steered = TcpListener::bind((ORIGIN_ADDR, 80)).await.expect("bind 80");
        let direct = TcpListener::bind((ORIGIN_ADDR, 8080))
            .await
            .expect("bind 8080");
        ready.send(()).expect("ready");
        tokio::spawn(bulk(direct));
        bulk(steered).await;
    });
}

async fn bulk(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut head = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut head).await;
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {BULK_BYTES}\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![0u8; 256 * 1024];
            let mut left = BULK_BYTES;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
}

fn download_speed(topo: &Topology, port: u16) -> f64 {
    topo.download_speed(&format!("http://{ORIGIN_ADDR}:{port}/"))
}

#[test]
#[ignore = "performance: run explicitly"]
fn bulk_flow_through_the_agent_keeps_most_of_direct_throughput() {
    if !root_or_skip("bulk_flow_through_the_agent_keeps_most_of_direct_throughput") {
        return;
    }
    let topo = Topology::create();
    start_bulk_origin(&topo);
    let agent = start_agent(Some(&topo.endpoint), config("perf-bulk")).expect("agent");
    let mut direct = 0f64;
    let mut through = 0f64;
    for _ in 0..3 {
        direct = direct.max(download_speed(&topo, 8080));
        through = through.max(download_speed(&topo, 80));
    }
    assert!(agent
        .log()
        .contains("Bypassing connection from process: curl, host: bulk.test"));
    let ratio = through / direct;
    println!(
        "bulk flow: direct {:.0} MB/s, through agent {:.0} MB/s, ratio {ratio:.2}",
        direct / 1e6,
        through / 1e6
    );
    agent.stop().expect("clean shutdown");
    assert!(ratio >= 0.7, "agent throughput ratio {ratio:.2} < 0.7");
}

const HOLDING_ORIGIN: &str = r#"
import asyncio, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
async def handle(reader, writer):
    await reader.read(1024)
    await asyncio.sleep(3600)
async def main():
    server = await asyncio.start_server(handle, "10.77.2.2", 80, backlog=2048)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"#;

const MANY_CLIENTS: &str = r#"
import socket, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
socks = []
for i in range(int(sys.argv[1])):
    s = socket.create_connection(("10.77.2.2", 80), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: bulk.test\r\n\r\n")
    socks.append(s)
print("ready", flush=True)
sys.stdin.readline()
"#;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
#[ignore = "performance: run explicitly"]
fn agent_rss_stays_small_with_1000_concurrent_flows() {
    if !root_or_skip("agent_rss_stays_small_with_1000_concurrent_flows") {
        return;
    }
    let topo = Topology::create();
    let mut origin = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.origin,
            "python3",
            "-c",
            HOLDING_ORIGIN,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("origin");
    let mut line = String::new();
    BufReader::new(origin.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("origin ready");
    let agent = start_agent(Some(&topo.endpoint), config("perf-rss")).expect("agent");
    let before = rss_kib();
    let mut clients = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.endpoint,
            "python3",
            "-c",
            MANY_CLIENTS,
            "1000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("clients");
    let mut line = String::new();
    BufReader::new(clients.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("clients ready");
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_secs(1));
    let during = rss_kib();
    let bypassed = agent.log().matches("Bypassing connection").count();
    println!("agent process RSS: {before} KiB idle, {during} KiB with {bypassed} concurrent flows");
    let _ = clients.stdin.take().map(|mut s| s.write_all(b"\n"));
    let _ = clients.wait();
    let _ = origin.kill();
    let _ = origin.wait();
    agent.stop().expect("clean shutdown");
    assert_eq!(bypassed, 1000);
    assert!(during <= 30 * 1024, "RSS {during} KiB > 30 MiB");
}
