//! Policy routes, for administrators (bearer admin token from `<data dir>/admin.token`):
//! - `GET /api/v1/policy/status`: serving revision, when and from where it was
//!   loaded, warnings, reload counts and the last rejected reload with every diagnostic;
//! - `POST /api/v1/policy/reload`: the same reload as SIGHUP; 200 with the status
//!   when applied, 422 with the status (and its `last_error`, with any failed
//!   policy test case) when rejected. `?force=true` (or the body `{"force": true}`)
//!   applies an empty policy, or one without rules replacing one with rules.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use serde::Deserialize;

use crate::reload::{ReloadOptions, Reloader, Trigger};

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
        .and_then(rampart_events::token::bearer)
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

/// `?force=true`, or the same in a JSON body: `{"force": true}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadParams {
    #[serde(default)]
    force: bool,
}

async fn reload(
    State(state): State<PolicyApiState>,
    headers: HeaderMap,
    Query(query): Query<ReloadParams>,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers, &state) {
        return denied;
    }
    let from_body =
        if body.iter().all(u8::is_ascii_whitespace) {
            ReloadParams::default()
        } else {
            match serde_json::from_slice::<ReloadParams>(&body) {
                Ok(params) => params,
                Err(e) => return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({
                        "error": format!("the body must be empty or {{\"force\": true|false}}: {e}")
                    })),
                )
                    .into_response(),
            }
        };
    let options = ReloadOptions {
        force: query.force || from_body.force,
        settled: None,
    };
    if options.force {
        tracing::warn!("policy reload forced through the API: empty policies are accepted");
    }
    let outcome = state.reloader.reload_with(Trigger::Api, options).await;
    let code = match outcome.result {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (code, Json(outcome.status)).into_response()
}
