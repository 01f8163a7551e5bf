//! Local proxy mode: an HTTP proxy on 127.0.0.1 (CONNECT and absolute-form requests)
//! for applications configured with HTTP(S)_PROXY. Needs no privileges.

use crate::attribution;
use crate::connector::Destination;
use crate::flow::{FlowContext, Outcome};
use crate::http_head::{self, HeadError, RequestHead};
use crate::relay::relay;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<FlowContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move { handle(stream, peer, ctx).await });
                }
                Err(err) => {
                    tracing::warn!(%err, "local proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<RequestHead, HeadError> {
    loop {
        match http_head::parse(buf) {
            Err(HeadError::Incomplete) => {}
            other => return other,
        }
        // Straight into `buf`: no scratch array in every flow's task.
        buf.reserve(1024);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Incomplete);
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn destination(host: &str, port: u16) -> Destination {
    match host.parse::<IpAddr>() {
        Ok(ip) => Destination::Addr(SocketAddr::new(ip, port)),
        Err(_) => Destination::Name(host.to_string(), port),
    }
}

/// The request head to send upstream for an absolute-form request: origin-form target,
/// proxy headers removed, one request per connection (the next request on a kept-alive
/// client connection may name another host and must be decided on its own).
fn origin_form_head(head: &RequestHead, path: &str) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, path);
    for (name, value) in &head.headers {
        let hop = [
            "proxy-connection",
            "proxy-authorization",
            "connection",
            "keep-alive",
        ];
        if hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<FlowContext>) {
    let mut buf = Vec::with_capacity(2048);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Incomplete)) | Err(_) => return,
        Ok(Err(err)) => {
            respond(&mut stream, "400 Bad Request", &format!("{err}\n")).await;
            return;
        }
    };
    let is_connect = head.method.eq_ignore_ascii_case("CONNECT");
    let target = if is_connect {
        http_head::split_authority(&head.target, 443).map(|(h, p)| (h, p, None))
    } else {
        http_head::split_absolute(&head.target).map(|(h, p, path)| (h, p, Some(path)))
    };
    let (host, port, path) = match target {
        Ok(parts) => parts,
        Err(err) => {
            respond(&mut stream, "400 Bad Request", &format!("{err}\n")).await;
            return;
        }
    };
    let Ok(listen) = stream.local_addr() else {
        return;
    };
    let process = attribution::attribute(&ctx.attribution, peer, listen).await;
    let process_name = process.name.clone();
    let outcome = ctx
        .open(destination(&host, port), Some(host.clone()), process)
        .await;
    let mut upstream = match outcome {
        Outcome::Connected(upstream) => upstream,
        Outcome::Blocked => {
            let body = format!(
                "Blocked by the Rampart agent: process {process_name} may not connect to {host}.\n"
            );
            respond(&mut stream, "403 Forbidden", &body).await;
            return;
        }
        Outcome::Failed(err) => {
            respond(&mut stream, err.client_status(), &format!("{err}\n")).await;
            return;
        }
    };
    let rest = &buf[head.len..];
    let first = match path {
        None => {
            if stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            rest.to_vec()
        }
        Some(path) => {
            let mut first = origin_form_head(&head, &path);
            first.extend_from_slice(rest);
            first
        }
    };
    // Nothing of the request head is needed any more: free it before a long relay.
    drop((buf, head));
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        return;
    }
    drop(first);
    relay(&mut stream, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_is_rewritten_without_proxy_headers() {
        let head = http_head::parse(
            b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n",
        )
        .expect("head");
        let out = String::from_utf8(origin_form_head(&head, "/x?y")).expect("utf8");
        assert_eq!(
            out,
            "GET /x?y HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn ip_literals_become_address_destinations() {
        assert_eq!(
            destination("10.0.0.1", 80),
            Destination::Addr("10.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(
            destination("example.com", 443),
            Destination::Name("example.com".into(), 443)
        );
    }
}
