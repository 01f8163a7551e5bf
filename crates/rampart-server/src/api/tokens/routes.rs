//! The token routes, for `admin` tokens only (the gate in [`crate::api::auth`] refuses
//! `analyst` and `enroll` tokens with 403, and a call without a valid token with 401):
//!
//! - `GET /api/v1/tokens`: every token (id, name, scope, created, revoked), never a
//!   secret or a hash;
//! - `POST /api/v1/tokens` with `{"scope": "analyst", "name": "soc"}` (`name`
//!   optional): `201` with the token and its secret, shown this once;
//! - `POST /api/v1/tokens/{id}/revoke` (an id `tok_...` or a name): `200` with the
//!   token and `"changed": true`; again: `200`, `"changed": false` and the first
//!   revocation time; an unknown token `404`.
//!
//! Refused with `409`: revoking the data dir's `admin.token` (rotate the file
//! instead), and a token revoking itself. A remote operator may hold a single admin
//! token; refusing it its own revocation keeps a slip from locking them out, and a
//! leaked token is still revoked at once by any other admin token or by
//! `rampart token revoke` on the server's machine.
//!
//! The gate records each call as an audit event naming the calling token; these
//! routes add what they did ([`AuditDetail`]): the token created or revoked.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::{Principal, Scope, TokenError, TokenList, TokenStore};
use crate::api::auth::AuditDetail;

#[derive(Clone)]
pub struct TokensApiState {
    pub store: Arc<TokenStore>,
    /// The gate's internal token: a route mounted without the gate refuses every caller.
    pub admin_token: Arc<str>,
}

impl TokensApiState {
    pub fn new(data_dir: &std::path::Path, admin_token: Arc<str>) -> TokensApiState {
        TokensApiState {
            store: Arc::new(TokenStore::new(data_dir)),
            admin_token,
        }
    }
}

pub fn router(state: TokensApiState) -> Router {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}/revoke", post(revoke))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The caller, when the gate let the call through (an admin token); `None` when the
/// route was reached any other way.
fn caller(
    state: &TokensApiState,
    headers: &HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Option<Principal> {
    let internal = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(rampart_events::token::bearer)
        .map(str::trim)
        .is_some_and(|t| {
            crate::api::devices::constant_time_eq(t.as_bytes(), state.admin_token.as_bytes())
        });
    match principal {
        Some(Extension(principal)) if internal && principal.scope == Scope::Admin => {
            Some(principal)
        }
        _ => None,
    }
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "admin bearer token required".into(),
    )
}

/// The answer to a store error: what the client did wrong, or 500.
fn failed(e: TokenError) -> Response {
    match e {
        e @ (TokenError::UnknownScope(_)
        | TokenError::InvalidName(_)
        | TokenError::ReservedName) => error(StatusCode::BAD_REQUEST, e.to_string()),
        e @ (TokenError::NameTaken(_) | TokenError::AdminFile) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        e @ TokenError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        e => {
            tracing::error!(error = %e, "API token store");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// A store call off the async workers (file I/O, fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TokenError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(failed),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn with_audit(mut response: Response, detail: String) -> Response {
    response.extensions_mut().insert(AuditDetail(detail));
    response
}

async fn list(
    State(state): State<TokensApiState>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Response {
    if caller(&state, &headers, principal).is_none() {
        return unauthorized();
    }
    let store = state.store.clone();
    match blocking(move || store.list()).await {
        Ok(tokens) => {
            // The data dir's admin.token always exists on a running server.
            Json(TokenList {
                tokens: tokens.iter().map(|t| t.view()).collect(),
                admin_token_file: true,
            })
            .into_response()
        }
        Err(refused) => refused,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    scope: String,
    #[serde(default)]
    name: Option<String>,
}

async fn create(
    State(state): State<TokensApiState>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    if caller(&state, &headers, principal).is_none() {
        return unauthorized();
    }
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid token request: {e}; send {{\"scope\": \"admin|analyst|enroll\", \"name\": \"...\"}}"
                ),
            )
        }
    };
    let scope = match Scope::parse(&request.scope) {
        Ok(scope) => scope,
        Err(e) => return failed(e),
    };
    let store = state.store.clone();
    match blocking(move || store.create(scope, request.name.as_deref())).await {
        Ok((record, secret)) => {
            tracing::info!(id = %record.id, name = %record.name, %scope, "API token created");
            let mut body = serde_json::to_value(record.view()).unwrap_or_default();
            body["token"] = serde_json::Value::String(secret);
            with_audit(
                (StatusCode::CREATED, Json(body)).into_response(),
                format!(
                    "created token {} (name {}, scope {})",
                    record.id, record.name, record.scope
                ),
            )
        }
        Err(refused) => refused,
    }
}

async fn revoke(
    State(state): State<TokensApiState>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    let Some(principal) = caller(&state, &headers, principal) else {
        return unauthorized();
    };
    let store = state.store.clone();
    let result = blocking(move || {
        let target = store.find(&id)?;
        // Names of valid tokens are unique, and the caller's token is valid.
        if target.name == principal.name && !target.is_revoked() {
            return Ok(Err(target));
        }
        store.revoke(&target.id).map(Ok)
    })
    .await;
    match result {
        Ok(Ok(revocation)) => {
            let record = &revocation.record;
            if revocation.changed {
                tracing::info!(id = %record.id, name = %record.name, "API token revoked");
            }
            let mut body = serde_json::to_value(record.view()).unwrap_or_default();
            body["changed"] = serde_json::Value::Bool(revocation.changed);
            let what = if revocation.changed {
                "revoked"
            } else {
                "already revoked"
            };
            with_audit(
                Json(body).into_response(),
                format!(
                    "{what} token {} (name {}, scope {})",
                    record.id, record.name, record.scope
                ),
            )
        }
        Ok(Err(itself)) => error(
            StatusCode::CONFLICT,
            format!(
                "token {} ({}) cannot revoke itself: revoke it with another admin token, or with `rampart token revoke {}` on the server's machine",
                itself.name, itself.id, itself.id
            ),
        ),
        Err(refused) => refused,
    }
}
