//! Raw HTTP/1.1 exchanges over a plain TCP socket: health checks, metrics, and
//! requests a real client would refuse to send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The status of `GET path` at `addr`, or `None` when nothing answered.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let raw = http_get_raw(addr, path)?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path` at `addr`.
pub fn http_get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let raw = http_get_raw(addr, path)?;
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn http_get_raw(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Sends raw bytes to `addr` and returns the first response (head plus its
/// Content-Length body), or what came back before close or timeout.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = send(addr, bytes, timeout);
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if response_complete(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Sends raw bytes and returns everything until the peer closes (or timeout).
pub fn raw_exchange_until_close(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = send(addr, bytes, timeout);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Connects to `addr`, writes `bytes`, and gives reads `timeout`.
fn send(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout))
        .expect("a non-zero read timeout");
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    s
}

fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(n) => body.len() >= n,
        None => false,
    }
}
