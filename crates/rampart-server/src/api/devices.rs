//! Device routes: `POST /api/v1/enroll` (authenticated by the one-time token in the
//! body), and for administrators (bearer admin token) `GET /api/v1/devices` and
//! `POST /api/v1/devices/tokens`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::devices::{DeviceError, DeviceRegistry, EnrollRequest};

/// Default lifetime of a token created through the API.
const DEFAULT_TOKEN_TTL_SECS: i64 = 24 * 3600;

#[derive(Clone)]
pub struct DevicesState {
    pub registry: Arc<DeviceRegistry>,
    /// The admin bearer token (`<data dir>/admin.token`).
    pub admin_token: Arc<str>,
}

pub fn router(state: DevicesState) -> Router {
    Router::new()
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/devices", get(list))
        .route("/api/v1/devices/tokens", post(create_token))
        .route("/api/v1/devices/{id}/revoke", post(revoke))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn authorized(state: &DevicesState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(rampart_events::token::bearer)
    else {
        return false;
    };
    constant_time_eq(value.trim().as_bytes(), state.admin_token.as_bytes())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn enroll(State(state): State<DevicesState>, body: axum::body::Bytes) -> Response {
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid enroll request: {e}"),
            )
        }
    };
    let registry = state.registry.clone();
    // Signing and file writes block: keep them off the async workers.
    match tokio::task::spawn_blocking(move || registry.enroll(&request)).await {
        Ok(Ok(response)) => {
            tracing::info!(device = %response.device_id, user = ?response.user, "device enrolled");
            (StatusCode::OK, Json(response)).into_response()
        }
        Ok(Err(e @ DeviceError::TokenRefused)) => error(StatusCode::FORBIDDEN, e.to_string()),
        Ok(Err(e @ DeviceError::Csr(_))) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "enrollment failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(State(state): State<DevicesState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "admin bearer token required".into(),
        );
    }
    match state.registry.inventory().list() {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<i64>,
}

async fn create_token(
    State(state): State<DevicesState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "admin bearer token required".into(),
        );
    }
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid token request: {e}"),
            )
        }
    };
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    match state
        .registry
        .tokens()
        .create(request.user.as_deref(), &request.groups, ttl)
    {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e @ DeviceError::InvalidName { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn revoke(
    State(state): State<DevicesState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "admin bearer token required".into(),
        );
    }
    match state.registry.revoke(&id) {
        Ok(true) => {
            tracing::info!(device = %id, "device revoked");
            Json(serde_json::json!({ "revoked": id })).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no device {id:?}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
