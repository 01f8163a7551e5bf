//! Egress through upstream proxies: an ordered group with failover, passive
//! health (down after N consecutive failures, for T seconds) and active checks.
//! HTTPS and tunnels chain with CONNECT; plain HTTP is forwarded absolute-form
//! by the forwarding client over a connection to the chosen proxy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{UpstreamGroupConfig, UpstreamProxyUrl};
use crate::error::ConnectError;

/// Largest CONNECT response head we accept from an upstream proxy.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// One upstream proxy and its health state.
#[derive(Debug)]
pub struct UpstreamProxy {
    pub url: UpstreamProxyUrl,
    consecutive_failures: AtomicU32,
    /// Unix milliseconds until which the proxy is skipped; 0 when up.
    down_until_ms: AtomicU64,
    ever_failed: AtomicBool,
}

impl UpstreamProxy {
    fn new(url: UpstreamProxyUrl) -> Self {
        UpstreamProxy {
            url,
            consecutive_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            ever_failed: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// `Proxy-Authorization` value for this upstream, if it has credentials.
    pub fn authorization(&self) -> Option<String> {
        let user = self.url.username.as_deref()?;
        let pass = self.url.password.as_deref().unwrap_or("");
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }
}

/// A named, ordered list of upstream proxies.
#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: String,
    pub proxies: Vec<UpstreamProxy>,
    failure_threshold: u32,
    down_for: Duration,
    pub health_check_interval: Duration,
    pub health_check_target: Option<String>,
}

impl UpstreamGroup {
    pub fn new(name: &str, config: &UpstreamGroupConfig) -> Self {
        UpstreamGroup {
            name: name.to_string(),
            proxies: config
                .proxies
                .iter()
                .cloned()
                .map(UpstreamProxy::new)
                .collect(),
            failure_threshold: config.failure_threshold.max(1),
            down_for: config.down_for,
            health_check_interval: config.health_check_interval,
            health_check_target: config.health_check_target.clone(),
        }
    }

    /// Proxies in the order to try them: healthy ones in configured order,
    /// then (as a last resort, so the group recovers without waiting) the ones
    /// marked down.
    pub fn candidates(&self) -> impl Iterator<Item = &UpstreamProxy> {
        let up = self.proxies.iter().filter(|p| p.is_up());
        let down = self.proxies.iter().filter(|p| !p.is_up());
        up.chain(down)
    }

    pub fn record_success(&self, proxy: &UpstreamProxy) {
        proxy.consecutive_failures.store(0, Ordering::Relaxed);
        if proxy.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(group = %self.name, proxy = %proxy.url, "upstream proxy is up again");
        }
    }

    pub fn record_failure(&self, proxy: &UpstreamProxy, error: &ConnectError) {
        proxy.ever_failed.store(true, Ordering::Relaxed);
        let failures = proxy.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.failure_threshold {
            let until = now_ms() + self.down_for.as_millis() as u64;
            let was = proxy.down_until_ms.swap(until, Ordering::Relaxed);
            if was <= now_ms() {
                tracing::warn!(group = %self.name, proxy = %proxy.url, %error, failures,
                    down_for = ?self.down_for, "upstream proxy marked down");
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends `CONNECT target` on `stream` (already connected to `proxy`) and waits
/// for a 2xx. Returns any bytes the proxy sent after its response head.
pub async fn connect_handshake(
    stream: &mut TcpStream,
    proxy: &UpstreamProxy,
    target: &str,
) -> Result<Bytes, ConnectError> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(&auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let protocol_error = |detail: String| ConnectError::UpstreamProtocol {
        proxy: proxy.url.to_string(),
        detail,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| protocol_error(format!("writing CONNECT: {e}")))?;

    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(protocol_error("CONNECT response head too large".into()));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| protocol_error(format!("reading CONNECT response: {e}")))?;
        if n == 0 {
            return Err(protocol_error(
                "closed the connection during CONNECT".into(),
            ));
        }
        match parse_connect_reply(&buf) {
            Ok(ConnectReply::Complete { status, head_len }) => {
                if !(200..300).contains(&status) {
                    return Err(ConnectError::UpstreamStatus {
                        proxy: proxy.url.to_string(),
                        status,
                    });
                }
                return Ok(buf.split_off(head_len).freeze());
            }
            Ok(ConnectReply::Partial) => continue,
            Err(e) => return Err(protocol_error(format!("malformed CONNECT response: {e}"))),
        }
    }
}

/// How far an upstream proxy's reply to our CONNECT has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReply {
    /// The head has not ended yet: read more.
    Partial,
    /// A whole head: its status, and where the tunnel's first bytes start.
    Complete { status: u16, head_len: usize },
}

/// Parses the reply head at the start of `buf`. Public (and pure) so the
/// `connect_reply` fuzz target reaches the bytes an upstream proxy controls
/// without a socket. Any headers are ignored: a 2xx reply to CONNECT has no
/// content, whatever Content-Length or Transfer-Encoding it names
/// (RFC 9110 §9.3.6).
pub fn parse_connect_reply(buf: &[u8]) -> Result<ConnectReply, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf)? {
        httparse::Status::Complete(head_len) => Ok(ConnectReply::Complete {
            // httparse only completes a head with a three-digit status.
            status: response.code.unwrap_or(0),
            head_len,
        }),
        httparse::Status::Partial => Ok(ConnectReply::Partial),
    }
}

/// Runs active health checks for `group` until the returned handle is dropped
/// or aborted. A check is a CONNECT through the proxy to the configured
/// target or, without one, a request the proxy must answer itself: a proxy
/// that accepts connections and never answers is down (a TCP connect alone
/// would find it healthy).
pub fn spawn_health_checks(
    group: Arc<UpstreamGroup>,
    resolver: crate::resolver::Resolver,
    timeout: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if group.health_check_interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(group.health_check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for proxy in &group.proxies {
                let result = check_once(proxy, &group, &resolver, timeout).await;
                match result {
                    Ok(()) => group.record_success(proxy),
                    Err(e) => {
                        tracing::debug!(group = %group.name, proxy = %proxy.url, error = %e, "health check failed");
                        group.record_failure(proxy, &e);
                    }
                }
            }
        }
    }))
}

async fn check_once(
    proxy: &UpstreamProxy,
    group: &UpstreamGroup,
    resolver: &crate::resolver::Resolver,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let ips = resolver.resolve(&proxy.url.host).await?;
    let addrs: Vec<_> = ips
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, proxy.url.port))
        .collect();
    let mut stream =
        super::direct::connect_happy_eyeballs(&addrs, None, timeout, &proxy.url.authority())
            .await?;
    let timed_out = |_| ConnectError::Timeout {
        target: proxy.url.authority(),
    };
    match &group.health_check_target {
        Some(target) => {
            tokio::time::timeout(timeout, connect_handshake(&mut stream, proxy, target))
                .await
                .map_err(timed_out)??;
        }
        None => tokio::time::timeout(timeout, answers_http(&mut stream, proxy))
            .await
            .map_err(timed_out)??,
    }
    Ok(())
}

/// Whether the proxy answers a request of its own: `OPTIONS *` (RFC 9110
/// §9.3.7: about the server itself, so it is never forwarded anywhere). Any
/// status line counts, an error status too: the proxy is alive and parsing.
async fn answers_http(stream: &mut TcpStream, proxy: &UpstreamProxy) -> Result<(), ConnectError> {
    let authority = proxy.url.authority();
    let failed = |detail: String| ConnectError::UpstreamProtocol {
        proxy: authority.clone(),
        detail,
    };
    let request = format!("OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(format!("health check request not sent: {e}")))?;
    let mut reply = [0u8; 12];
    let mut got = 0;
    while got < reply.len() {
        let n = stream
            .read(&mut reply[got..])
            .await
            .map_err(|e| failed(format!("health check reply not read: {e}")))?;
        if n == 0 {
            return Err(failed("closed the health check without an answer".into()));
        }
        got += n;
    }
    // "HTTP/1.1 400" is 12 bytes: the version and a three-digit status.
    let status_line = std::str::from_utf8(&reply).unwrap_or_default();
    let valid = status_line.starts_with("HTTP/1.")
        && status_line[9..12].bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(failed(format!(
            "health check answered with something other than HTTP: {:?}",
            String::from_utf8_lossy(&reply)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reply_is_partial_until_the_blank_line_and_keeps_tunnel_bytes_out() {
        let reply = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 p\r\n\r\n\x16\x03\x01";
        for cut in 0..reply.len() - 3 {
            assert_eq!(
                parse_connect_reply(&reply[..cut]),
                Ok(ConnectReply::Partial)
            );
        }
        assert_eq!(
            parse_connect_reply(reply),
            Ok(ConnectReply::Complete {
                status: 200,
                head_len: reply.len() - 3
            })
        );
    }

    #[test]
    fn connect_reply_garbage_is_an_error() {
        assert!(parse_connect_reply(b"\x16\x03\x01\x00\x05hello").is_err());
        assert!(parse_connect_reply(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }
}
