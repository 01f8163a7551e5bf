//! The HTTP proxy service: one call per request on a client connection.
//! Phases, in order (see `crate::flow`): admit ([`admit`]) → CONNECT tunnel
//! (connection phase, then decrypt or splice) or absolute-form forwarding
//! (request and response phases) → finish (when the flow ends).

pub mod body;
mod connect;
mod forward;
pub mod headers;

pub(crate) use connect::{tunnel_with, ConnectOptions};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, FlowRecord};
use crate::admission::Denied;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::state::GatewayState;
use body::ProxyBody;
use rampart_policy::Identity;

/// What every connection of the listener shares.
pub struct Shared {
    pub state: ArcSwap<GatewayState>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// The event pipeline; `None` when the process records no events (tests of the gateway alone).
    pub events: Option<rampart_events::EventSender>,
    /// Tunnels outlive the hyper connection that upgraded them; shutdown waits for them here.
    pub tunnels: TaskTracker,
    /// Proceed links and allowances of `user-alert` rules; outlives reloads.
    pub coaching: Arc<crate::coaching::Coaching>,
    /// Failed-login limits, verified-credential cache and the Argon2 bound; outlive reloads.
    pub logins: Arc<crate::admission::Logins>,
    /// The data path's descriptor budget (proxy and agent flows); fixed at start.
    pub descriptors: crate::fd_budget::FdBudget,
}

/// Handles one request from `client`.
pub async fn handle(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut req = req;
    if req.method() == Method::CONNECT
        && req
            .uri()
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
    {
        // RFC 9110 §9.3.6: a CONNECT target is host:port, nothing more. The
        // credentials are dropped before anything logs them, and the target
        // left behind is answered with 400.
        *req.uri_mut() = http::Uri::from_static("/");
    }
    crate::url_redact::strip_userinfo(req.uri_mut());
    let state = shared.state.load_full();
    if req.method() == Method::OPTIONS
        && req.uri() == "*"
        && state.admission.source_allowed(client.ip())
    {
        // `OPTIONS *` is about this server itself (RFC 9110 §9.3.7): a
        // downstream proxy's health check. Answered, never forwarded, and not
        // a flow: nothing goes anywhere, so nothing is recorded.
        return Ok(Response::new(ProxyBody::empty(None)));
    }
    let target = if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| req.uri().to_string())
    } else {
        absolute_target(req.uri())
    };
    let mut log = Flow::new(
        FlowRecord::new(client, req.method().as_str(), target),
        shared.access_log.clone(),
        shared.metrics.clone(),
        shared.events.clone(),
    );

    let identity = match admit(&req, client, &state, &shared, &mut log).await {
        Ok(identity) => identity,
        Err(refusal) => return Ok(refusal.respond(log)),
    };

    let response = if req.method() == Method::CONNECT {
        connect::tunnel(req, &state, &shared, &identity, log).await
    } else {
        forward::forward(req, &state, &shared, &identity, log).await
    };
    Ok(response)
}

/// Why the admit phase refused a request.
pub enum Refusal {
    HeadTooLarge(usize),
    SourceNotAllowed,
    Loop,
    Authentication(Denied),
}

impl Refusal {
    fn respond(self, log: Flow) -> Response<ProxyBody> {
        match self {
            Refusal::HeadTooLarge(max_head) => error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("request head larger than max_header_bytes ({max_head} bytes)"),
                log,
                Some("header_too_large"),
            ),
            Refusal::SourceNotAllowed => deny(
                StatusCode::FORBIDDEN,
                "access denied: source address not allowed",
                log,
            ),
            Refusal::Loop => deny(
                StatusCode::LOOP_DETECTED,
                "forwarding loop detected (Via)",
                log,
            ),
            Refusal::Authentication(denied) => auth_required(denied, log),
        }
    }
}

/// The admit phase (see `crate::flow`): the head's size, the source ACL, loop
/// protection and proxy authentication. Gives the flow its identity, with the
/// groups its record carries (those of the user list and of the policy's
/// `[identities]`).
pub async fn admit(
    req: &Request<Incoming>,
    client: SocketAddr,
    state: &GatewayState,
    shared: &Shared,
    log: &mut Flow,
) -> Result<Identity, Refusal> {
    let max_head = state.config.limits.max_header_bytes;
    if crate::head_limit::head_size(req) > max_head {
        return Err(Refusal::HeadTooLarge(max_head));
    }
    if !state.admission.source_allowed(client.ip()) {
        return Err(Refusal::SourceNotAllowed);
    }
    if headers::is_loop(req.headers(), &state.loop_token) {
        return Err(Refusal::Loop);
    }
    let user = state
        .admission
        .authenticate(
            &shared.logins,
            client.ip(),
            req.headers().get(header::PROXY_AUTHORIZATION),
        )
        .await
        .map_err(Refusal::Authentication)?;
    log.record.user = user.as_ref().map(|u| Arc::from(u.name.as_str()));
    if let Some(u) = &user {
        log.record.groups =
            crate::policy_stage::record_groups(&state.policy, Some(&u.name), &u.groups);
    }
    Ok(Identity {
        user: user.as_ref().map(|u| u.name.clone()),
        groups: user.map(|u| u.groups.clone()).unwrap_or_default(),
        device: None,
        source_ip: Some(crate::admission::canonical_ip(client.ip())),
    })
}

/// The request target as the log shows it: `Uri`'s `Display` without the
/// formatting machinery, which is measurable at tens of thousands of requests/s.
fn absolute_target(uri: &http::Uri) -> String {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return uri.to_string();
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut target =
        String::with_capacity(scheme.len() + 3 + authority.as_str().len() + path.len());
    target.push_str(scheme);
    target.push_str("://");
    target.push_str(authority.as_str());
    target.push_str(path);
    target
}

/// A response of the proxy's own: short reason in a text/plain body.
pub fn error_response(
    status: StatusCode,
    reason: &str,
    mut log: Flow,
    metrics_kind: Option<&str>,
) -> Response<ProxyBody> {
    log.record.status = status.as_u16();
    log.record.error = Some(reason.to_string());
    if let Some(kind) = metrics_kind {
        log.metrics().error(kind);
    }
    let body = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ProxyBody::full(body, Some(log)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The response to a request an access rule blocked: an HTML page for
/// browsers, plain text for other clients, naming the rule and the flow id.
pub fn blocked_response(
    blocked: &crate::policy_stage::Blocked,
    accept: Option<&HeaderValue>,
    url: Option<&str>,
    mut log: Flow,
) -> Response<ProxyBody> {
    let page = rampart_tls::block_page::BlockPage::policy(
        &blocked.rule,
        blocked.category.as_deref(),
        url,
        &log.record.id.to_string(),
    );
    let rendered = page.render(accept.and_then(|v| v.to_str().ok()));
    log.record.status = rendered.status;
    log.record.error = Some(format!("blocked by rule \"{}\"", blocked.rule));
    log.metrics().error("blocked");
    let mut response = Response::new(ProxyBody::full(rendered.body, Some(log)));
    *response.status_mut() = StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::FORBIDDEN);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rendered.content_type),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A `user-alert` rule matched: the request passes (recorded as proceeded)
/// when the user has an allowance for the host, otherwise the answer is the
/// coaching page with a proceed link on the same origin as the request
/// (`log.record.target`, an absolute URL): plain HTTP or a decrypted tunnel.
pub fn coaching_gate(
    coach: &crate::policy_stage::Blocked,
    coaching: &crate::coaching::Coaching,
    state: &GatewayState,
    identity: &Identity,
    host: &str,
    accept: Option<&HeaderValue>,
    mut log: Flow,
) -> Result<Flow, Box<Response<ProxyBody>>> {
    let subject = crate::coaching::subject(identity);
    if coaching.allowed(&subject, host) {
        if let Some(policy) = log.record.policy.as_mut() {
            policy.proceeded = true;
        }
        return Ok(log);
    }
    let url = log.record.target.clone();
    let token = coaching.issue(&subject, host, &url, state.config.coaching.link_lifetime);
    let proceed_url = format!(
        "{}{}?token={token}",
        crate::coaching::origin_of(&url),
        crate::coaching::PROCEED_PATH
    );
    let event_id = log.record.id.to_string();
    let page = crate::coaching::CoachingPage {
        rule: &coach.rule,
        category: coach.category.as_deref(),
        url: &url,
        event_id: &event_id,
        proceed_url: &proceed_url,
    };
    let (content_type, body) = page.render(accept.and_then(|v| v.to_str().ok()));
    log.record.status = StatusCode::FORBIDDEN.as_u16();
    log.record.error = Some(format!("coaching page of rule \"{}\"", coach.rule));
    log.metrics().error("coached");
    Err(Box::new(own_page(
        StatusCode::FORBIDDEN,
        content_type,
        body,
        log,
    )))
}

/// The proxy's answer to a proceed link (`http://HOST/.rampart/proceed?token=T`):
/// a redirect back to the coached URL with the allowance granted, or 403 with
/// the reason the link is refused.
pub fn proceed_response(
    coaching: &crate::coaching::Coaching,
    state: &GatewayState,
    identity: &Identity,
    host: &str,
    query: Option<&str>,
    mut log: Flow,
) -> Response<ProxyBody> {
    let subject = crate::coaching::subject(identity);
    let redeemed = match crate::coaching::token_of(query) {
        Some(token) => coaching.redeem(token, &subject, host, state.config.coaching.allowance),
        None => Err(crate::coaching::ProceedError::Malformed),
    };
    // The token is single-use and bound to this subject; still keep it out of logs.
    if let Some((before, _)) = log.record.target.split_once("token=") {
        log.record.target = format!("{before}token=REDACTED");
    }
    match redeemed {
        Ok(url) => match HeaderValue::from_str(&url) {
            Ok(location) => {
                log.record.status = StatusCode::SEE_OTHER.as_u16();
                let body = format!("Proceeding to {url}\n");
                let mut response = own_page(
                    StatusCode::SEE_OTHER,
                    "text/plain; charset=utf-8",
                    body,
                    log,
                );
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => error_response(
                StatusCode::BAD_REQUEST,
                "the coached URL cannot be redirected to",
                log,
                Some("bad_request"),
            ),
        },
        Err(e) => error_response(StatusCode::FORBIDDEN, &e.to_string(), log, Some("denied")),
    }
}

fn own_page(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    log: Flow,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body, Some(log)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn deny(status: StatusCode, reason: &str, log: Flow) -> Response<ProxyBody> {
    error_response(status, reason, log, Some("denied"))
}

fn auth_required(denied: Denied, log: Flow) -> Response<ProxyBody> {
    let mut response = error_response(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        denied.failure.reason(),
        log,
        Some("auth"),
    );
    response.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rampart\", Bearer realm=\"rampart\""),
    );
    if let Some(secs) = denied.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
