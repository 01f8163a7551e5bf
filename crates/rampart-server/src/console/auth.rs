//! Login, logout, the session extractor and the CSRF check.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::audit::{Entry, Outcome};
use super::layout;
use super::session::{random_token, Session, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use super::users::Role;
use super::ConsoleState;

/// A request with a live session. Without one, pages redirect to `/login`.
pub struct Viewer {
    pub session: Session,
    pub session_id: String,
    pub source: String,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.session.role == Role::Admin
    }

    /// 403 unless the form carried this session's CSRF token.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), Denied> {
        match given {
            Some(t) if rampart_events::token::matches(&self.session.csrf, t) => Ok(()),
            _ => Err(Denied(
                "missing or wrong CSRF token: reload the page and try again",
            )),
        }
    }

    /// 403 unless the user is an admin.
    pub fn require_admin(&self) -> Result<(), Denied> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Denied("this action needs the admin role"))
        }
    }
}

/// A refused action (403), small enough to return in a `Result`.
pub struct Denied(&'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        forbidden(self.0)
    }
}

pub fn forbidden(message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        layout::bare("Forbidden", html! { h1 { "Forbidden" } p { (message) } }),
    )
        .into_response()
}

/// `name=value` of one cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn source_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Response> {
        let session_id = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string);
        let found = session_id
            .as_deref()
            .and_then(|id| state.inner.sessions.get(id));
        if let (Some(id), Some(session)) = (session_id, found) {
            // A removed account or changed role takes effect on the next request.
            match state.inner.users.role_of(&session.user) {
                Some(role) if role == session.role => {
                    return Ok(Viewer {
                        session,
                        session_id: id,
                        source: source_of(parts),
                    })
                }
                _ => state.inner.sessions.remove(&id),
            }
        }
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let target = format!("/login?next={}", urlencode(next));
        Err(Redirect::to(&target).into_response())
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Only local paths: `next` must never send a user to another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

fn cookie_header(
    state: &ConsoleState,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if state.inner.secure_cookies {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<ConsoleState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_form(&state, q.next.as_deref(), None, StatusCode::OK)
}

fn login_form(
    state: &ConsoleState,
    next: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let csrf = random_token();
    let body = html! {
        main.login {
            h1 { "Rampart" }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(safe_next(next));
                @if let Some(e) = error { p.error role="alert" { (e) } }
                label { "User" input name="username" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        }
    };
    let mut resp = (status, layout::bare("Log in", body)).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(state, LOGIN_CSRF_COOKIE, &csrf, Some(3600)),
    );
    resp
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Double submit: the form's token must equal the cookie set with the form.
    let cookie_token = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if form.csrf.is_empty() || !rampart_events::token::matches(cookie_token, &form.csrf) {
        return forbidden("missing or wrong CSRF token: reload the login page and try again");
    }
    let source = peer.ip().to_string();
    let user = form.username.trim().to_string();
    if let Some(wait) = state.inner.limiter.blocked(&source, &user) {
        state.inner.audit.record(Entry {
            user: &user,
            role: None,
            action: "login",
            target: "console",
            outcome: Outcome::Failed,
            source: &source,
            path: "/login",
            status: 429,
            device: None,
            detail: Some("too many failed logins: refused without checking the password"),
            revision: None,
        });
        let mut resp = login_form(
            &state,
            form.next.as_deref(),
            Some(&format!("Too many failed logins: try again in {wait} s.")),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let users = state.inner.users.clone();
    let (name, password) = (user.clone(), form.password);
    // Argon2 takes tens of milliseconds of CPU: off the async workers.
    let role = tokio::task::spawn_blocking(move || users.verify(&name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        state.inner.limiter.failed(&source, &user);
        state.inner.audit.record(Entry {
            user: &user,
            role: None,
            action: "login",
            target: "console",
            outcome: Outcome::Failed,
            source: &source,
            path: "/login",
            status: 401,
            device: None,
            detail: Some("wrong user name or password"),
            revision: None,
        });
        return login_form(
            &state,
            form.next.as_deref(),
            Some("Wrong user name or password."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let id = state.inner.sessions.create(&user, role);
    state.inner.audit.record(Entry {
        user: &user,
        role: Some(role),
        action: "login",
        target: "console",
        outcome: Outcome::Ok,
        source: &source,
        path: "/login",
        status: 303,
        device: None,
        detail: None,
        revision: None,
    });
    let mut resp = Redirect::to(safe_next(form.next.as_deref())).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(&state, SESSION_COOKIE, &id, None),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(&state, LOGIN_CSRF_COOKIE, "", Some(0)),
    );
    resp
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

pub async fn logout(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(denied) = viewer.check_csrf(form.csrf.as_deref()) {
        return denied.into_response();
    }
    state.inner.sessions.remove(&viewer.session_id);
    state
        .inner
        .audit
        .record(Entry::of(&viewer, "logout", "console", "/logout"));
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(&state, SESSION_COOKIE, "", Some(0)),
    );
    resp
}
