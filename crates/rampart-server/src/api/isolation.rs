//! Isolation routes for administrators (bearer admin token):
//!
//! - `POST /api/v1/devices/{id}/isolate` with `{"reason": "..."}` (body optional)
//! - `POST /api/v1/devices/{id}/release` with `{"reason": "..."}` (body optional)
//! - `GET /api/v1/devices/{id}/isolation`: desired, actual, pending, timestamps
//! - `POST /api/v1/devices/{id}/release-code`: a one-time break-glass code
//! - `GET /api/v1/isolation`: every device's state
//!
//! Isolate and release are idempotent: repeating one answers the current state with
//! `"changed": false` and records nothing new.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::isolation::{IsolationService, IsolationServiceError, IsolationView, Request, Wanted};

#[derive(Clone)]
pub struct IsolationApiState {
    pub service: Arc<IsolationService>,
    pub admin_token: Arc<str>,
}

pub fn router(state: IsolationApiState) -> Router {
    Router::new()
        .route("/api/v1/devices/{id}/isolate", post(isolate))
        .route("/api/v1/devices/{id}/release", post(release))
        .route("/api/v1/devices/{id}/isolation", get(status))
        .route("/api/v1/devices/{id}/release-code", post(release_code))
        .route("/api/v1/isolation", get(all))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn refused(state: &IsolationApiState, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(rampart_events::token::bearer)
        .map(str::trim);
    let ok = given.is_some_and(|t| {
        crate::api::devices::constant_time_eq(t.as_bytes(), state.admin_token.as_bytes())
    });
    (!ok).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "admin bearer token required".into(),
        )
    })
}

fn failed(e: IsolationServiceError) -> Response {
    match e {
        e @ IsolationServiceError::NoDevice(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

async fn change(
    state: IsolationApiState,
    headers: HeaderMap,
    id: String,
    body: axum::body::Bytes,
    wanted: Wanted,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let reason: Reason = if body.iter().all(u8::is_ascii_whitespace) {
        Reason::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        }
    };
    let reason = reason
        .reason
        .map(|r| r.chars().filter(|c| !c.is_control()).take(512).collect());
    let service = state.service.clone();
    let result = tokio::task::spawn_blocking(move || {
        let change = service.set(
            &id,
            wanted,
            Request {
                reason,
                by: "admin".into(),
                trigger_event: None,
            },
        )?;
        Ok::<_, IsolationServiceError>((change.changed, IsolationView::of(&id, &change.record)))
    })
    .await;
    match result {
        Ok(Ok((changed, view))) => {
            let mut value = serde_json::to_value(&view).unwrap_or_default();
            value["changed"] = serde_json::Value::Bool(changed);
            Json(value).into_response()
        }
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn isolate(
    State(state): State<IsolationApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    change(state, headers, id, body, Wanted::Isolated).await
}

async fn release(
    State(state): State<IsolationApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    change(state, headers, id, body, Wanted::Released).await
}

async fn status(
    State(state): State<IsolationApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let service = state.service.clone();
    match tokio::task::spawn_blocking(move || service.view(&id)).await {
        Ok(Ok(view)) => Json(view).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn release_code(
    State(state): State<IsolationApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let service = state.service.clone();
    let device = id.clone();
    match tokio::task::spawn_blocking(move || service.issue_code(&device)).await {
        Ok(Ok(code)) => Json(serde_json::json!({ "device": id, "code": code })).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn all(State(state): State<IsolationApiState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let service = state.service.clone();
    match tokio::task::spawn_blocking(move || service.states()).await {
        Ok(Ok(states)) => {
            let views: Vec<IsolationView> = states
                .iter()
                .map(|(id, r)| IsolationView::of(id, r))
                .collect();
            Json(views).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
