//! The pooled client that forwards plain-HTTP requests. One client (and so one
//! connection pool) per egress route, because hyper pools by origin authority:
//! sharing a pool between routes would send a request out the wrong way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected as HyperConnected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{Connector, EgressRoute, EgressUsed};
use std::net::SocketAddr;

/// Which egress and peer served a forwarded request; hyper puts it into the
/// response's extensions.
#[derive(Debug, Clone)]
pub struct UpstreamConnInfo {
    pub egress: EgressUsed,
    pub peer: SocketAddr,
}
use crate::error::ConnectError;

/// The request body type the forwarding client sends.
pub type ForwardBody = crate::proxy::body::MeteredBody;
pub type ForwardClient = Client<RouteConnector, ForwardBody>;

/// Builds the pooled forwarding client for one route.
pub fn client(
    connector: Arc<Connector>,
    route: EgressRoute,
    idle_timeout: Duration,
) -> ForwardClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(256)
        // The gateway sets Host itself (RFC 9112 §3.2.2).
        .set_host(false)
        .build(RouteConnector { connector, route })
}

/// A `tower::Service<Uri>` that opens connections along one egress route.
#[derive(Clone)]
pub struct RouteConnector {
    connector: Arc<Connector>,
    route: EgressRoute,
}

impl tower::Service<Uri> for RouteConnector {
    type Response = EgressStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.connector.clone();
        let route = self.route.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let (connected, proxied) = connector.open_for_forwarding(&route, &host, port).await?;
            Ok(EgressStream {
                io: TokioIo::new(connected.stream),
                proxied,
                info: UpstreamConnInfo {
                    egress: connected.egress,
                    peer: connected.peer,
                },
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A connection to an origin or an upstream proxy, remembering which.
    pub struct EgressStream {
        #[pin]
        io: TokioIo<TcpStream>,
        proxied: bool,
        info: UpstreamConnInfo,
    }
}

impl Connection for EgressStream {
    fn connected(&self) -> HyperConnected {
        // `proxy(true)` keeps the request-target in absolute form for the
        // upstream proxy; `extra` puts the egress into each response's extensions.
        HyperConnected::new()
            .proxy(self.proxied)
            .extra(self.info.clone())
    }
}

impl Read for EgressStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl Write for EgressStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
