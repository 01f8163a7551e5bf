//! Transparent mode: connections redirected by the steering table arrive here; the
//! original destination comes from conntrack, the host from SNI or the Host header.

use crate::attribution;
use crate::client_hello::{self, ClientHelloError};
use crate::connector::{original_destination, Destination};
use crate::flow::{FlowContext, Outcome};
use crate::http_head::{self, HeadError};
use crate::relay::relay;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const MAX_SNIFF: usize = 16 * 1024;

/// Accept until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<FlowContext>,
    sniff_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move { handle(stream, peer, ctx, sniff_timeout).await });
                }
                Err(err) => {
                    tracing::warn!(%err, "transparent accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// What the first client bytes say about the destination.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Tls(Option<String>),
    Http(Option<String>),
    /// Not TLS, not HTTP, or the client said nothing in time.
    Opaque,
}

fn classify(buf: &[u8]) -> Option<Sniffed> {
    if buf.is_empty() {
        return None;
    }
    match client_hello::server_name(buf) {
        Ok(name) => return Some(Sniffed::Tls(name)),
        Err(ClientHelloError::Incomplete) => return None,
        Err(ClientHelloError::Malformed(_)) => return Some(Sniffed::Tls(None)),
        Err(ClientHelloError::NotTls) => {}
    }
    match http_head::parse(buf) {
        Ok(head) => Some(Sniffed::Http(http_head::host_of(&head))),
        Err(HeadError::Incomplete) => None,
        Err(HeadError::TooLarge(_)) => Some(Sniffed::Http(None)),
        Err(HeadError::Malformed(_)) => Some(Sniffed::Opaque),
    }
}

/// Read the client's first bytes until they name a host or the timeout passes. The
/// bytes are kept and forwarded first.
async fn sniff(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> Sniffed {
    let deadline = Instant::now() + timeout;
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(found) = classify(buf) {
            return found;
        }
        if buf.len() >= MAX_SNIFF {
            return Sniffed::Opaque;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Opaque,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<FlowContext>,
    sniff_timeout: Duration,
) {
    let original = match original_destination(&stream) {
        Ok(addr) => addr,
        Err(err) => {
            tracing::debug!(%peer, %err, "connection without original destination");
            return;
        }
    };
    // Not redirected (someone connected to the agent port itself): refuse, or the agent
    // would connect to itself forever.
    if stream.local_addr().is_ok_and(|local| local == original) {
        return;
    }
    let mut buf = Vec::with_capacity(2048);
    let sniffed = sniff(&mut stream, &mut buf, sniff_timeout).await;
    let (host, is_http) = match sniffed {
        Sniffed::Tls(name) => (name, false),
        Sniffed::Http(name) => (name, true),
        Sniffed::Opaque => (None, false),
    };
    let process = attribution::attribute(&ctx.attribution, peer, original).await;
    let outcome = ctx.open(Destination::Addr(original), host, process).await;
    let mut upstream = match outcome {
        Outcome::Connected(upstream) => upstream,
        Outcome::Blocked => {
            refuse(
                &mut stream,
                is_http,
                "403 Forbidden",
                "Blocked by the Rampart agent.\n",
            )
            .await;
            return;
        }
        Outcome::Failed(err) => {
            refuse(
                &mut stream,
                is_http,
                err.client_status(),
                &format!("{err}\n"),
            )
            .await;
            return;
        }
    };
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        return;
    }
    // The sniffed bytes are forwarded: free them before a long relay.
    drop(buf);
    relay(&mut stream, &mut upstream).await;
}

/// Answer a plain-HTTP client with a status it can show; other protocols just see the
/// connection close.
async fn refuse(stream: &mut TcpStream, is_http: bool, status: &str, body: &str) {
    if is_http {
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tls_http_and_opaque_first_bytes() {
        let hello = crate::client_hello::tests::client_hello(Some("origin.test"));
        assert_eq!(
            classify(&hello),
            Some(Sniffed::Tls(Some("origin.test".into())))
        );
        assert_eq!(classify(&hello[..10]), None);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
            Some(Sniffed::Http(Some("pypi.org".into())))
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHo"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Sniffed::Opaque));
        assert_eq!(classify(b""), None);
    }
}
