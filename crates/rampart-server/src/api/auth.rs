//! The one gate of the JSON API (`/api/...`, except `POST /api/v1/enroll`, whose
//! credential is the one-time token in its body): a bearer token, from the data dir's
//! `admin.token` or the scoped token store ([`super::tokens`]), checked against the
//! scope the call needs, and every call, allowed or refused, recorded as an audit event
//! (OCSF API Activity, `type = audit`; the same event the console writes for its
//! actions).
//!
//! - `admin`: every call;
//! - `analyst`: reads (`GET`, `HEAD`) only, but not the token list (`/api/v1/tokens`
//!   is admin-only);
//! - `enroll`: `POST /api/v1/devices/tokens` only (one-time enrollment tokens).
//!
//! Behind the gate the routes' own checks see a per-process internal token, never
//! known outside the process: a route mounted without the gate refuses every caller
//! instead of trusting one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use rampart_events::EventSender;
use rand::RngCore;

use super::tokens::{Principal, Scope, TokenStore, ADMIN_FILE_TOKEN};
use crate::console::audit::{Entry, Outcome};

/// The gate's state: who may call, and where audit events go.
#[derive(Clone)]
pub struct ApiAuth {
    inner: Arc<Inner>,
}

struct Inner {
    admin_token: String,
    tokens: TokenStore,
    internal: Arc<str>,
    events: Option<EventSender>,
}

impl ApiAuth {
    /// `admin_token` is the data dir's `admin.token`; scoped tokens are read from the
    /// data dir's token store on every call.
    pub fn new(
        data_dir: &std::path::Path,
        admin_token: String,
        events: Option<EventSender>,
    ) -> ApiAuth {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let internal = format!(
            "rmpi_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        ApiAuth {
            inner: Arc::new(Inner {
                admin_token,
                tokens: TokenStore::new(data_dir),
                internal: internal.into(),
                events,
            }),
        }
    }

    /// The token the routes behind the gate check (`admin_token` of their states).
    pub fn internal_token(&self) -> Arc<str> {
        self.inner.internal.clone()
    }

    /// Puts the gate in front of every route of `router`.
    pub fn guard(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), gate))
    }

    fn identify(&self, given: &str) -> Result<Option<Principal>, super::tokens::TokenError> {
        if rampart_events::token::matches(&self.inner.admin_token, given) {
            return Ok(Some(Principal {
                name: ADMIN_FILE_TOKEN.to_string(),
                scope: Scope::Admin,
            }));
        }
        self.inner.tokens.authenticate(given)
    }
}

/// What a route did, for the audit event of its call (e.g. the token it created): a
/// route puts it in its response's extensions.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// Whether `path` is behind the gate.
fn guarded(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/v1/enroll"
}

/// The narrowest scope that allows `method path` (admin allows everything).
pub fn scope_needed(method: &Method, path: &str) -> Scope {
    // Managing tokens, listing included, is for admins: who holds which scope is
    // not for an analyst to read.
    if path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/") {
        Scope::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Scope::Analyst
    } else if method == Method::POST && path == "/api/v1/devices/tokens" {
        Scope::Enroll
    } else {
        Scope::Admin
    }
}

/// Whether a token of `scope` may make a call that needs `needed`.
pub fn allows(scope: Scope, needed: Scope) -> bool {
    scope == Scope::Admin || scope == needed
}

async fn gate(State(auth): State<ApiAuth>, mut req: Request, next: Next) -> Response {
    if !guarded(req.uri().path()) {
        return next.run(req).await;
    }
    let call = Call {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        source: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".to_string()),
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(rampart_events::token::bearer)
        .map(|t| t.trim().to_string());
    let principal = match given.as_deref().map(|t| auth.identify(t)) {
        None => {
            let resp = unauthorized(
                "missing `Authorization: Bearer TOKEN` (DATA_DIR/admin.token, or a token from `rampart token create`)",
            );
            auth.audit(
                &call,
                None,
                resp.status(),
                Outcome::Failed,
                Some("no token"),
            );
            return resp;
        }
        Some(Ok(None)) => {
            let resp = unauthorized("invalid or revoked bearer token");
            auth.audit(
                &call,
                None,
                resp.status(),
                Outcome::Failed,
                Some("unknown token"),
            );
            return resp;
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "API token store unreadable: every scoped token is refused");
            let resp = json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": format!("token store: {e}") }),
            );
            auth.audit(
                &call,
                None,
                resp.status(),
                Outcome::Failed,
                Some("token store unreadable"),
            );
            return resp;
        }
        Some(Ok(Some(principal))) => principal,
    };
    let needed = scope_needed(&call.method, &call.path);
    if !allows(principal.scope, needed) {
        let message = format!(
            "{} {} needs a token of scope {needed}{}; the token {:?} has scope {}",
            call.method,
            call.path,
            if needed == Scope::Admin {
                ""
            } else {
                " (or admin)"
            },
            principal.name,
            principal.scope
        );
        let resp = json_error(
            StatusCode::FORBIDDEN,
            serde_json::json!({
                "error": message,
                "scope_needed": needed.as_str(),
                "scope": principal.scope.as_str(),
            }),
        );
        auth.audit(
            &call,
            Some(&principal),
            resp.status(),
            Outcome::Denied,
            Some(&format!("needs scope {needed}")),
        );
        return resp;
    }
    // The routes behind the gate check the internal token (see the module comment).
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", auth.inner.internal)) {
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    // Routes that act on the caller's own identity (a token revoking itself) see it.
    req.extensions_mut().insert(principal.clone());
    let resp = next.run(req).await;
    let status = resp.status();
    let outcome = if status.is_success() || status.is_redirection() {
        Outcome::Ok
    } else {
        Outcome::Failed
    };
    let detail = resp.extensions().get::<AuditDetail>().map(|d| d.0.clone());
    auth.audit(&call, Some(&principal), status, outcome, detail.as_deref());
    resp
}

/// The request line of one API call, for its audit event.
struct Call {
    method: Method,
    path: String,
    query: Option<String>,
    source: String,
}

impl Call {
    /// The device a `/api/v1/devices/{id}/...` call acts on.
    fn device(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/api/v1/devices/")?;
        let id = rest.split('/').next()?;
        (!id.is_empty() && id != "tokens").then_some(id)
    }

    /// OCSF API Activity: 1 Create, 2 Read, 3 Update, 4 Delete.
    fn activity(&self) -> (u32, &'static str) {
        match self.method {
            Method::GET | Method::HEAD => (2, "Read"),
            Method::DELETE => (4, "Delete"),
            Method::POST
                if self.path == "/api/v1/devices/tokens" || self.path == "/api/v1/tokens" =>
            {
                (1, "Create")
            }
            _ => (3, "Update"),
        }
    }
}

impl ApiAuth {
    fn audit(
        &self,
        call: &Call,
        principal: Option<&Principal>,
        status: StatusCode,
        outcome: Outcome,
        detail: Option<&str>,
    ) {
        let user = principal.map_or("-", |p| p.name.as_str());
        let scope = principal.map_or("none", |p| p.scope.as_str());
        let entry = Entry {
            user,
            role: None,
            action: "api",
            target: &call.path,
            outcome,
            source: &call.source,
            path: &call.path,
            status: status.as_u16(),
            device: call.device(),
            detail,
            revision: None,
        };
        tracing::info!(target: "rampart::audit", user, scope, method = %call.method,
            path = %call.path, status = status.as_u16(), outcome = outcome.as_str(), "API call");
        let Some(events) = &self.inner.events else {
            return;
        };
        let mut event = entry.event(rampart_events::now_ms());
        let (activity_id, activity_name) = call.activity();
        event.activity_id = activity_id;
        event.activity_name = activity_name.to_string();
        event.type_uid = u64::from(event.class_uid) * 100 + u64::from(activity_id);
        event.type_name = format!("{}: {activity_name}", event.class_name);
        event.metadata.log_provider = Some("api".to_string());
        if let Some(request) = event.http_request.as_mut() {
            request.http_method = Some(call.method.to_string());
            if let (Some(url), Some(query)) = (request.url.as_mut(), &call.query) {
                url.url_string = format!("{}?{query}", call.path);
            }
        }
        let mut message = format!(
            "api: {user} ({scope}) {} {} → {} {}",
            call.method,
            call.path,
            status.as_u16(),
            outcome.as_str()
        );
        if let Some(detail) = detail {
            message.push_str(" — ");
            message.push_str(detail);
        }
        event.message = Some(message);
        events.send(event);
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "error": message }),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"rampart\""),
    );
    resp
}

fn json_error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysts_read_enroll_tokens_create_enrollment_tokens_admins_do_everything() {
        let get = |p: &str| scope_needed(&Method::GET, p);
        let post = |p: &str| scope_needed(&Method::POST, p);
        assert_eq!(get("/api/v1/events"), Scope::Analyst);
        assert_eq!(post("/api/v1/policy/reload"), Scope::Admin);
        assert_eq!(post("/api/v1/devices/tokens"), Scope::Enroll);
        assert_eq!(post("/api/v1/devices/laptop/isolate"), Scope::Admin);
        assert_eq!(get("/api/v1/tokens"), Scope::Admin);
        assert_eq!(post("/api/v1/tokens/tok_1/revoke"), Scope::Admin);
        assert!(allows(Scope::Admin, Scope::Enroll));
        assert!(allows(Scope::Analyst, Scope::Analyst));
        assert!(!allows(Scope::Analyst, Scope::Admin));
        assert!(!allows(Scope::Enroll, Scope::Analyst));
        assert!(!allows(Scope::Analyst, Scope::Enroll));
    }

    #[test]
    fn the_gate_covers_the_api_but_not_enrollment_health_or_console() {
        assert!(guarded("/api/v1/events"));
        assert!(guarded("/api/v1/nothing-here"));
        assert!(!guarded("/api/v1/enroll"));
        assert!(!guarded("/healthz"));
        assert!(!guarded("/metrics"));
        assert!(!guarded("/events"));
    }
}
