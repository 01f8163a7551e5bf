//! Policy routes, for administrators (bearer admin token from `<data dir>/admin.token`):
//! - `GET /api/v1/policy/status`: serving revision, when and from where it was
//!   loaded, warnings, reload counts and the last rejected reload with every diagnostic;
//! - `POST /api/v1/policy/reload`: the same reload as SIGHUP; 200 with the status
//!   when applied, 422 with the status (and its `last_error`) when rejected.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::reload::{Reloader, Trigger};

#[derive(Clone)]
pub struct PolicyApiState {
    pub reloader: Arc<Reloader>,
    /// The admin bearer token.
    pub admin_token: Arc<str>,
}

pub fn router(state: PolicyApiState) -> Router {
    Router::new()
        .route("/api/v1/policy/status", get(status))
        .route("/api/v1/policy/reload", post(reload))
        .with_state(state)
}

fn unauthorized(headers: &HeaderMap, state: &PolicyApiState) -> Option<Response> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let message = match given {
        Some(t) if rampart_events::token::matches(&state.admin_token, t) => return None,
        Some(_) => "invalid bearer token",
        None => "missing `Authorization: Bearer TOKEN` (the token is in DATA_DIR/admin.token)",
    };
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": message })),
        )
            .into_response(),
    )
}

async fn status(State(state): State<PolicyApiState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers, &state) {
        return denied;
    }
    Json(state.reloader.status()).into_response()
}

async fn reload(State(state): State<PolicyApiState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers, &state) {
        return denied;
    }
    let outcome = state.reloader.reload(Trigger::Api).await;
    let code = match outcome.result {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (code, Json(outcome.status)).into_response()
}
