//! Direct TCP connections with Happy Eyeballs (RFC 8305): addresses of both
//! families interleaved, a new attempt started every 250 ms or as soon as the
//! previous one fails, the first to succeed wins.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::ConnectError;

/// RFC 8305 §5 recommends 250 ms between connection attempts.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders addresses for Happy Eyeballs: alternate families, starting with the
/// family of the first address the resolver returned.
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let first_is_v6 = first.is_ipv6();
    let (mut primary, mut secondary): (Vec<_>, Vec<_>) = addrs
        .iter()
        .copied()
        .partition(|a| a.is_ipv6() == first_is_v6);
    primary.reverse();
    secondary.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    loop {
        match (primary.pop(), secondary.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connects to the first reachable address, bounded by `timeout` overall.
pub async fn connect_happy_eyeballs(
    addrs: &[SocketAddr],
    source: Option<IpAddr>,
    timeout: Duration,
    target: &str,
) -> Result<TcpStream, ConnectError> {
    let ordered: Vec<SocketAddr> = interleave(addrs)
        .into_iter()
        .filter(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
        .collect();
    if ordered.is_empty() {
        return Err(ConnectError::Unreachable {
            target: target.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address of the source address's family",
            ),
        });
    }
    match tokio::time::timeout(timeout, race(&ordered, source)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            target: target.to_string(),
        }),
    }
}

async fn race(ordered: &[SocketAddr], source: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
    let mut pending = ordered.iter().copied();
    let mut attempts = FuturesUnordered::new();
    let mut last_error = None;
    if let Some(addr) = pending.next() {
        attempts.push(attempt(addr, source));
    }
    loop {
        let delay = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::pin!(delay);
        tokio::select! {
            result = attempts.next(), if !attempts.is_empty() => match result {
                Some(Ok(stream)) => return Ok(stream),
                Some(Err(err)) => {
                    last_error = Some(err);
                    // A failed attempt starts the next one at once (RFC 8305 §5).
                    if let Some(addr) = pending.next() {
                        attempts.push(attempt(addr, source));
                    } else if attempts.is_empty() {
                        break;
                    }
                }
                None => break,
            },
            _ = &mut delay, if pending.len() > 0 => {
                if let Some(addr) = pending.next() {
                    attempts.push(attempt(addr, source));
                }
            }
        }
    }
    Err(last_error.unwrap_or(ConnectError::Timeout {
        target: "origin".into(),
    }))
}

async fn attempt(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ConnectError::from_io(e, addr))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| ConnectError::Unreachable {
                target: format!("{addr} from source address {source}"),
                source: e,
            })?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| ConnectError::from_io(e, addr))?;
    // Proxied request/response heads are small writes; Nagle only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_alternates_families_starting_with_the_first() {
        let addrs: Vec<SocketAddr> = [
            "[::1]:1",
            "[::2]:1",
            "10.0.0.1:1",
            "10.0.0.2:1",
            "10.0.0.3:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let out: Vec<String> = interleave(&addrs).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            out,
            [
                "[::1]:1",
                "10.0.0.1:1",
                "[::2]:1",
                "10.0.0.2:1",
                "10.0.0.3:1"
            ]
        );
    }

    #[tokio::test]
    async fn falls_back_to_the_next_address_when_the_first_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A port we just closed: connecting to it is refused immediately.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let stream = connect_happy_eyeballs(&[closed, good], None, Duration::from_secs(2), "t")
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn refused_single_address_is_reported_as_refused() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = connect_happy_eyeballs(&[closed], None, Duration::from_secs(2), "t")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "refused");
    }
}
