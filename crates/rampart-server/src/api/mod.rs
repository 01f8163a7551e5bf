//! The API listener: health, Prometheus metrics, and the versioned `/api/v1`
//! routes of each concern (mounted here as they are built).

mod activity;
pub mod auth;
pub mod events;
pub mod isolation;
pub mod listener;
pub mod policy;
pub mod tls;
pub mod tokens;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub mod devices;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rampart_gateway::GatewayHandle;
use std::sync::atomic::AtomicU64;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub gateway: GatewayHandle,
    pub pipeline_stats: Arc<rampart_events::PipelineStats>,
    pub event_gauges: EventGauges,
    /// Cancelled on SIGTERM: `/healthz` answers 503 so load balancers stop
    /// sending new connections while requests in flight finish.
    pub draining: tokio_util::sync::CancellationToken,
}

/// Event pipeline counters on `/metrics`: queued, spilled to disk, dropped
/// (only when the disk itself fails) and stored.
#[derive(Clone, Default)]
pub struct EventGauges {
    queued: Gauge<u64, AtomicU64>,
    spilled: Gauge<u64, AtomicU64>,
    dropped: Gauge<u64, AtomicU64>,
    stored: Gauge<u64, AtomicU64>,
}

impl EventGauges {
    pub fn register(registry: &mut Registry) -> Self {
        let g = EventGauges::default();
        let r = registry.sub_registry_with_prefix("rampart_events");
        r.register(
            "queued",
            "Events waiting in memory for the store",
            g.queued.clone(),
        );
        r.register(
            "spilled",
            "Events spilled to the on-disk spool because the queue was full",
            g.spilled.clone(),
        );
        r.register(
            "dropped",
            "Events lost because the disk failed",
            g.dropped.clone(),
        );
        r.register("stored", "Events written to the store", g.stored.clone());
        g
    }

    fn refresh(&self, stats: &rampart_events::PipelineStats) {
        let s = stats.snapshot();
        self.queued.set(s.queued);
        self.spilled.set(s.spilled);
        self.dropped.set(s.dropped);
        self.stored.set(s.stored);
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<ApiState>) -> impl IntoResponse {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    (StatusCode::OK, "ok\n")
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    state.gateway.refresh_metrics();
    state.event_gauges.refresh(&state.pipeline_stats);
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}
