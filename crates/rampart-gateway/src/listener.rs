//! The proxy listener's accept loop: connection caps (global and per source),
//! HTTP/1.1 connection settings (header size and time limits against
//! oversized heads and slowloris clients), and graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fd_budget::{self, RateLimitedWarning};
use crate::proxy::{self, Shared};

/// The answer to a connection the descriptor budget cannot hold.
const OVER_BUDGET: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Retry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 38\r\n\r\n\
proxy at its descriptor limit, retry\r\n";

/// Open-connection counters behind the `[limits]` caps.
#[derive(Default)]
pub struct ConnectionCounts {
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by a connection while it is open; releases its slot on drop.
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    source: IpAddr,
}

impl ConnectionCounts {
    fn try_acquire(
        self: &Arc<Self>,
        source: IpAddr,
        max_total: usize,
        max_per_source: usize,
    ) -> Result<ConnectionSlot, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_source.entry(source).or_insert(0);
        if *count >= max_per_source {
            drop(per_source);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections_per_source");
        }
        *count += 1;
        Ok(ConnectionSlot {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_source = self
            .counts
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

fn count_rejected(shared: &Shared, reason: &str) {
    shared
        .metrics
        .connections_rejected
        .get_or_create(&crate::metrics::RejectedLabels {
            listener: "proxy".into(),
            reason: reason.to_string(),
        })
        .inc();
}

/// Binds a listening socket with a deep backlog and SO_REUSEADDR (restarts do
/// not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// What serving one accepted connection needs from the accept loop.
#[derive(Clone)]
struct AcceptContext {
    shared: Arc<Shared>,
    counts: Arc<ConnectionCounts>,
    refused_warning: Arc<RateLimitedWarning>,
    shutdown: CancellationToken,
}

/// Accepts and serves proxy connections until `shutdown` is cancelled, then
/// lets in-flight requests finish for up to `grace`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let context = AcceptContext {
        shared: shared.clone(),
        counts: Arc::new(ConnectionCounts::default()),
        refused_warning: Arc::new(RateLimitedWarning::new()),
        shutdown: shutdown.clone(),
    };
    let accept_warning = RateLimitedWarning::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE and friends (the budget's headroom spent by
                // something outside it): counted, warned about once per
                // interval, and backed off instead of spinning on the ready listener.
                count_rejected(&shared, "accept_error");
                if let Some(held_back) = accept_warning.check() {
                    tracing::warn!(error = %e, held_back, "proxy listener: accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = shared.state.load();
        let behind_balancer = !state.config.proxy.proxy_protocol_from.is_empty();
        drop(state);
        if !behind_balancer {
            if let Some(connection) = admit(stream, peer, &context) {
                connections.spawn(connection);
            }
            continue;
        }
        // Behind a load balancer: the client is known only once its header is
        // read, so caps and admission wait for it, in the connection's own task.
        let context = context.clone();
        connections.spawn(async move {
            let mut stream = stream;
            let state = context.shared.state.load_full();
            let (balancers, timeout) = (
                &state.config.proxy.proxy_protocol_from,
                state.config.limits.header_timeout,
            );
            match crate::proxy_header::arrival(&mut stream, peer, balancers, timeout).await {
                Ok(crate::proxy_header::Arrival::Client(client)) => {
                    drop(state);
                    if let Some(connection) = admit(stream, client, &context) {
                        connection.await;
                    }
                }
                Ok(crate::proxy_header::Arrival::HealthCheck) => {}
                Err(refusal) => refusal.record(&context.shared.metrics, "proxy"),
            }
        });
    }
    drop(listener);
    let grace = shared.state.load().config.limits.shutdown_grace;
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "requests still in flight at the end of the shutdown grace period"
        );
    }
}

/// Admits one connection from `peer` (the client itself, or the client a load
/// balancer's PROXY header named) under the connection caps and the descriptor
/// budget; the returned future serves it. `None`: refused (and counted).
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    context: &AcceptContext,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let AcceptContext {
        shared,
        counts,
        refused_warning,
        shutdown,
    } = context;
    let state = shared.state.load();
    let limits = &state.config.limits;
    let max_connections = limits
        .max_connections
        .unwrap_or_else(|| shared.descriptors.plan().max_connections());
    let slot = match counts.try_acquire(
        peer.ip(),
        max_connections,
        limits.max_connections_per_source,
    ) {
        Ok(slot) => slot,
        Err(cap) => {
            count_rejected(shared, cap);
            tracing::debug!(%peer, cap, "connection refused by cap");
            return None;
        }
    };
    // The client's socket and the origin socket it will need (a tunnel's
    // pipes are taken later, by the CONNECT). Declared before the
    // connection so that they return to the budget after it closes.
    let Some(descriptors) = shared.descriptors.try_take(fd_budget::PROXY_CONNECTION) else {
        count_rejected(shared, "fd_budget");
        if let Some(held_back) = refused_warning.check() {
            tracing::warn!(%peer, held_back,
                "proxy listener: connection refused, the descriptor budget is spent \
                 (raise LimitNOFILE / ulimit -n; see docs/configuration.md)");
        }
        // Never waits: a full send buffer just means the client sees the close.
        let _ = stream.try_write(OVER_BUDGET);
        return None;
    };
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // The read buffer, not the head: one read can overshoot it, so the
        // exact `max_header_bytes` check is `head_limit` on the parsed request.
        // This bound still caps memory and answers heads that never end.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    drop(state);

    let conn_shared = shared.clone();
    let service = service_fn(move |req| proxy::handle(req, peer, conn_shared.clone()));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let metrics = shared.metrics.clone();
    metrics.connections_accepted.inc();
    let shutdown = shutdown.clone();
    Some(async move {
        metrics.connections_active.inc();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                // Finish the request in flight, then close; idle keep-alive
                // connections close at once.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
        metrics.connections_active.dec();
        drop(slot);
        drop(descriptors);
    })
}
