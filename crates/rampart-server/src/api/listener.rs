//! The API listener's accept loop, with limits of its own so that a flood on
//! the API (its `/healthz` needs no token, and agents may need to reach it to
//! enroll) never takes descriptors, memory or CPU from the proxy:
//! - a connection budget separate from the proxy's `[limits]`, in total and per
//!   client address; a connection over it gets a best-effort `503` and is closed
//!   at once, counted in `rampart_connections_rejected_total{listener="api",reason}`;
//! - a header timeout (slowloris: a half-sent request head holds a descriptor only
//!   that long), a longer wait for the next request on a kept-alive connection,
//!   and an idle timeout (no byte either way while a request is served):
//!   `activity.rs`;
//! - caps on the request head (`431`) and body (`413`).
//!
//! Warnings about refusals and accept errors are rate-limited: a flood is one
//! log line every few seconds with a count, never a line per connection.
//!
//! With TLS (`super::tls`) the handshake must finish within the header timeout, and a
//! failed handshake only closes its connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rampart_gateway::metrics::RejectedLabels;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::activity::{Activity, Tracked, TrackedBody, Waits};
use crate::config::ApiConfig;

/// The answer to a connection over the budget, written without waiting (a
/// client that does not read it only sees the close).
const OVER_BUDGET: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Retry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\r\n\
too many connections to the API\r\n";

/// At most one warning per this interval and kind; the others are counted in it.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The API listener's counters on `/metrics`: its refusals go into the
/// gateway's `rampart_connections_rejected_total` family, `listener="api"`.
#[derive(Clone, Default)]
pub struct ApiListenerMetrics {
    rejected: Family<RejectedLabels, Counter>,
}

impl ApiListenerMetrics {
    /// Counts into `family` (the gateway's, see `GatewayHandle::rejected_connections`).
    pub fn new(family: Family<RejectedLabels, Counter>) -> Self {
        ApiListenerMetrics { rejected: family }
    }

    fn rejected(&self, reason: Refusal) {
        self.rejected
            .get_or_create(&RejectedLabels {
                listener: "api".into(),
                reason: reason.as_str().into(),
            })
            .inc();
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    MaxConnections,
    MaxConnectionsPerSource,
}

impl Refusal {
    /// The key whose value was reached, as the metric's `reason`.
    fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerSource => "max_connections_per_source",
        }
    }
}

/// Open API connections, in total and per source.
#[derive(Default)]
struct Budget {
    open: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// A connection's place in the [`Budget`]; given back on drop.
struct Slot {
    budget: Arc<Budget>,
    source: IpAddr,
}

impl Budget {
    fn try_acquire(self: &Arc<Self>, source: IpAddr, limits: &ApiConfig) -> Result<Slot, Refusal> {
        let mut open = lock(&self.open);
        if open.total >= limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        let count = open.per_source.entry(source).or_insert(0);
        if *count >= limits.max_connections_per_source {
            return Err(Refusal::MaxConnectionsPerSource);
        }
        *count += 1;
        open.total += 1;
        Ok(Slot {
            budget: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.budget.open);
        open.total -= 1;
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// One warning per [`WARN_EVERY`], carrying how many were held back.
struct RateLimitedWarning {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedWarning {
    fn new() -> Self {
        RateLimitedWarning {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when a warning may be logged now.
    fn check(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown`, then lets
/// requests in flight finish for up to `grace`. HTTPS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ApiConfig,
    metrics: ApiListenerMetrics,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let budget = Arc::new(Budget::default());
    let refused_warning = RateLimitedWarning::new();
    let accept_warning = RateLimitedWarning::new();
    let limits = Arc::new(limits);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning on the ready listener.
                if let Some(held_back) = accept_warning.check() {
                    tracing::warn!(error = %e, held_back, "API listener: accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match budget.try_acquire(peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics.rejected(reason);
                if let Some(held_back) = refused_warning.check() {
                    tracing::warn!(%peer, reason = reason.as_str(), held_back,
                        "API listener: connection refused, [api] {} reached", reason.as_str());
                }
                // Never waits: a full send buffer just means the client sees the close.
                let _ = stream.try_write(OVER_BUDGET);
                continue;
            }
        };
        let router = router.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, router, &limits, tls, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "API requests still in flight at the end of the shutdown grace period"
        );
    }
}

/// One API connection: the TLS handshake when `tls` is given, then
/// [`serve_http`].
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: &ApiConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let tracked = Tracked::new(stream, activity.clone());
    let Some(acceptor) = tls else {
        return serve_http(tracked, activity, peer, router, limits, shutdown).await;
    };
    // A client that never completes the handshake holds its slot only this long.
    let handshake = tokio::time::timeout(limits.header_timeout.0, acceptor.accept(tracked));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "API TLS handshake timed out");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    serve_http(stream, activity, peer, router, limits, shutdown).await;
}

/// HTTP/1.1 on one connection with the head limits, the body cap per request, and
/// the idle timeout around it all.
async fn serve_http<S>(
    stream: S,
    activity: Activity,
    peer: SocketAddr,
    router: Router,
    limits: &ApiConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let max_body = limits.max_body_bytes;
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let activity = in_service.clone();
        async move {
            activity.serving();
            let too_large = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > max_body as u64);
            if too_large {
                return Ok::<_, Infallible>(payload_too_large(max_body));
            }
            // A chunked body is cut off at the cap as it streams (axum answers 413).
            let mut req = req.map(|body| axum::body::Body::new(Limited::new(body, max_body)));
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = router.oneshot(req).await?;
            Ok(response.map(|body| axum::body::Body::new(TrackedBody::new(body, activity))))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The waits for a head and between requests are `Activity`'s (hyper's
        // one timeout covered both, so polling clients lost requests).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let waits = Waits {
        header: limits.header_timeout.0,
        keepalive: limits.keepalive_timeout.0,
        idle: limits.idle_timeout.0,
    };
    let mut draining = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = tokio::time::sleep(activity.until_next_check(&waits)) => {
                if let Some(what) = activity.expired(&waits) {
                    tracing::debug!(%peer, "API connection closed: {what}");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                // Finish the request in flight; idle keep-alive connections close now.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
    }
}

fn payload_too_large(max_body: usize) -> axum::response::Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONNECTION, "close")],
        format!("request body larger than {max_body} bytes ([api] max_body_bytes)\n"),
    )
        .into_response()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> ApiConfig {
        ApiConfig {
            max_connections: total,
            max_connections_per_source: per_source,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn budget_caps_per_source_then_in_total_and_gives_slots_back() {
        let budget = Arc::new(Budget::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let l = limits(3, 2);
        let s1 = budget.try_acquire(a, &l).unwrap();
        let _s2 = budget.try_acquire(a, &l).unwrap();
        assert_eq!(
            budget.try_acquire(a, &l).err(),
            Some(Refusal::MaxConnectionsPerSource)
        );
        let _s3 = budget.try_acquire(b, &l).unwrap();
        assert_eq!(
            budget.try_acquire(b, &l).err(),
            Some(Refusal::MaxConnections)
        );
        drop(s1);
        assert!(budget.try_acquire(a, &l).is_ok());
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_held_back() {
        let w = RateLimitedWarning::new();
        assert_eq!(w.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(w.check(), None);
        }
        lock(&w.state).0 = Some(Instant::now() - WARN_EVERY);
        assert_eq!(w.check(), Some(1000));
    }
}
