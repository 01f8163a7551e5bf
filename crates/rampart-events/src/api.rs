//! The event search API, mounted by the server on its API listener:
//!
//! - `GET /api/v1/events?q=&from=&to=&since=&limit=&cursor=`: newest first, keyset pagination
//! - `GET /api/v1/events/{id}`
//! - `GET /api/v1/alerts?q=&from=&to=&since=&limit=&cursor=`
//! - `GET /api/v1/alerts/{id}/timeline?window=5m`
//!
//! Every route needs `Authorization: Bearer TOKEN` (the admin token of the data dir).
//! Documented in `docs/openapi.yaml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path as UrlPath, Query as UrlQuery, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::error::EventsError;
use crate::event::Event;
use crate::query::parse;
use crate::store::{db_path, Cursor, ReaderPool, SearchRequest, StoreReader};
use crate::time_range::{parse_instant, parse_span};
use crate::token;

/// Largest page the API returns.
pub const MAX_LIMIT: usize = 1000;

/// What the routes need: where the store is and the token to expect.
#[derive(Clone)]
pub struct EventsApiState {
    inner: Arc<Inner>,
}

struct Inner {
    token: String,
    readers: ReaderPool,
}

impl EventsApiState {
    /// State for the store in `data_dir`, creating the admin token there on first start.
    pub fn new(data_dir: &Path) -> Result<EventsApiState, EventsError> {
        let token = token::load_or_create(data_dir)?;
        Ok(EventsApiState::with_token(db_path(data_dir), token))
    }

    /// State with an explicit database path and token.
    pub fn with_token(db: PathBuf, token: String) -> EventsApiState {
        EventsApiState {
            inner: Arc::new(Inner {
                token,
                readers: ReaderPool::new(db, 8),
            }),
        }
    }

    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// Run `f` with a pooled reader on the blocking thread pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreReader) -> Result<T, EventsError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)
    }
}

/// The events and alerts routes, all behind bearer-token authentication.
pub fn router(state: EventsApiState) -> Router {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{id}", get(get_event))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{id}/timeline", get(alert_timeline))
        .with_state(state)
}

/// An error response: `{"error": "...", "column": N?}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    column: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            column: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<EventsError> for ApiError {
    fn from(e: EventsError) -> ApiError {
        match &e {
            EventsError::Query(q) => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                column: Some(q.column),
            },
            EventsError::BadCursor(_) => ApiError::bad_request(e.to_string()),
            EventsError::NoDevice(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            EventsError::NoStore(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "events API");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(c) = self.column {
            body["column"] = c.into();
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"rampart\""),
            );
        }
        resp
    }
}

/// Proof that the request carried the admin token.
pub struct Authorized;

impl FromRequestParts<EventsApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &EventsApiState,
    ) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::token::bearer)
            .map(str::trim);
        match given {
            Some(t) if token::matches(state.token(), t) => Ok(Authorized),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid bearer token",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer TOKEN` (the token is in DATA_DIR/admin.token)",
            )),
        }
    }
}

/// Query string of the list routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Query language text.
    #[serde(default)]
    pub q: String,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    /// Alternative to `from`: a span back from now (`15m`).
    pub since: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

fn search_request(p: &ListParams, forced: Option<&str>) -> Result<SearchRequest, ApiError> {
    let mut query = parse(&p.q).map_err(|e| ApiError::from(EventsError::Query(e)))?;
    if let Some(extra) = forced {
        let extra = parse(extra).map_err(|e| ApiError::internal(e.to_string()))?;
        query.expr = match (extra.expr, query.expr) {
            (Some(a), Some(b)) => Some(crate::query::Expr::And(Box::new(a), Box::new(b))),
            (a, b) => a.or(b),
        };
    }
    let mut from_ms = p
        .from
        .as_deref()
        .map(parse_instant)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("from: {e}")))?;
    if let Some(since) = &p.since {
        let span = parse_span(since).map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
        from_ms = Some(crate::now_ms() - span.as_millis() as i64);
    }
    let to_ms =
        p.to.as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("to: {e}")))?;
    let cursor = p
        .cursor
        .as_deref()
        .map(Cursor::parse)
        .transpose()
        .map_err(ApiError::from)?;
    Ok(SearchRequest {
        query,
        from_ms,
        to_ms,
        limit: p.limit.unwrap_or(100).clamp(1, MAX_LIMIT),
        cursor,
    })
}

async fn list(
    state: EventsApiState,
    req: SearchRequest,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state.with_reader(move |r| r.search(&req)).await?;
    Ok(Json(
        json!({ "events": page.events, "next_cursor": page.next_cursor }),
    ))
}

async fn list_events(
    _: Authorized,
    State(state): State<EventsApiState>,
    UrlQuery(p): UrlQuery<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = search_request(&p, None)?;
    list(state, req).await
}

async fn list_alerts(
    _: Authorized,
    State(state): State<EventsApiState>,
    UrlQuery(p): UrlQuery<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = search_request(&p, Some("type = alert"))?;
    list(state, req).await
}

async fn get_event(
    _: Authorized,
    State(state): State<EventsApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Event>, ApiError> {
    let wanted = id.clone();
    match state.with_reader(move |r| r.get(&wanted)).await? {
        Some(e) => Ok(Json(e)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event {id}"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineParams {
    /// Span either side of the alert (default 5m).
    pub window: Option<String>,
}

async fn alert_timeline(
    _: Authorized,
    State(state): State<EventsApiState>,
    UrlPath(id): UrlPath<String>,
    UrlQuery(p): UrlQuery<TimelineParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = parse_span(p.window.as_deref().unwrap_or("5m"))
        .map_err(|e| ApiError::bad_request(format!("window: {e}")))?;
    let window_ms = window.as_millis() as i64;
    let wanted = id.clone();
    let found = state
        .with_reader(move |r| r.alert_timeline(&wanted, window_ms))
        .await?;
    let Some((alert, events)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no alert {id}"),
        ));
    };
    if alert.finding_info.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("event {id} is not an alert"),
        ));
    }
    Ok(Json(json!({
        "alert": alert,
        "device": alert.device_name(),
        "window_ms": window_ms,
        "events": events,
    })))
}
