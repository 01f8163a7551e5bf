//! Helpers shared by Rampart's end-to-end tests and benches, in every crate:
//! free ports, external processes, loopback origins (plain, TLS, Python), test
//! CAs, network namespaces, real clients (curl, raw HTTP), NATS and PostgreSQL.

pub mod curl;
pub mod http;
pub mod https_origin;
pub mod nats;
pub mod netns;
pub mod origin;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod python_origin;
pub mod tls_origin;

pub use curl::{curl, curl_status, Curl, CurlReply};
pub use http::{http_get_body, http_get_status, raw_exchange, raw_exchange_until_close};
pub use process::{eventually, eventually_async, have, require, run, sh, KillOnDrop};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port that is free now, for a server that another process will
/// bind (rampart, squid, nats-server, postgres...).
///
/// Picked *below* the kernel's ephemeral range (`ip_local_port_range`, 32768 and
/// up by default). A port from `bind(:0)` comes from that range, which is where
/// every outgoing connection's local port comes from too: between releasing
/// the port and the server binding it, any test's client connection could take
/// it ("Address already in use" in CI). Below the range only another test's
/// pick can collide, and the walk start differs per process and call.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(131);
        let port = LOW + (seed.wrapping_add(step) % SPAN);
        let port = port as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Every low port taken: fall back to the kernel's choice.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_picks_are_bindable_and_outside_the_ephemeral_range() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port();
            assert!((20_000..32_000).contains(&p), "{p}");
            seen.insert(p);
        }
        assert!(seen.len() >= 45, "picks should spread: {}", seen.len());
    }
}
