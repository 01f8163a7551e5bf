//! Absolute-form HTTP/1.1 forwarding: `GET http://host/path HTTP/1.1` from a
//! proxy client, sent on to the origin (or an upstream proxy) over a pooled
//! connection, bodies streamed both ways.

use std::error::Error as _;

use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::{blocked_response, coaching_gate, error_response, headers, proceed_response, Shared};
use crate::connector::forward::UpstreamConnInfo;
use crate::error::ConnectError;
use crate::flow::Flow;
use crate::policy_stage::{self, FlowFacts};
use crate::response_gate::{self, HeldRequest};
use crate::state::GatewayState;
use crate::upload_gate;
use rampart_policy::EvalPoint;
use rampart_policy::Identity;

pub async fn forward(
    req: Request<Incoming>,
    state: &GatewayState,
    shared: &Shared,
    identity: &Identity,
    mut log: Flow,
) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => {}
        Some(s) if *s == Scheme::HTTPS => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "https:// URLs must be requested through a CONNECT tunnel",
                log,
                Some("bad_request"),
            )
        }
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "this is a proxy: send absolute-form requests (http://host/path) or CONNECT",
                log,
                Some("bad_request"),
            )
        }
    }
    let Some(authority) = uri.authority().cloned() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "request URL has no host",
            log,
            Some("bad_request"),
        );
    };
    let port = authority.port_u16().unwrap_or(80);
    if !state.config.proxy.http_ports.contains(port) {
        let reason = format!(
            "port {port} is not allowed for HTTP (allowed: {})",
            state.config.proxy.http_ports
        );
        return error_response(StatusCode::FORBIDDEN, &reason, log, Some("denied_port"));
    }

    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if uri.path() == crate::coaching::PROCEED_PATH {
        return proceed_response(&shared.coaching, state, identity, host, uri.query(), log);
    }
    let facts = FlowFacts {
        identity,
        process: None,
        host,
        dst_ip: host.parse().ok(),
        port,
        last: EvalPoint::Response,
        also_host: None,
    };
    // A clone of a standard method allocates nothing (the request is consumed below).
    let method = req.method().clone();
    let stage = policy_stage::request_phase(
        &state.policy,
        &facts,
        method.as_str(),
        path,
        &mut log.record,
    );
    if let Some(blocked) = &stage.blocked {
        let target = log.record.target.clone();
        return blocked_response(
            blocked,
            req.headers().get(header::ACCEPT),
            Some(&target),
            log,
        );
    }
    if let Some(coach) = &stage.coach {
        let accept = req.headers().get(header::ACCEPT);
        log = match coaching_gate(coach, &shared.coaching, state, identity, host, accept, log) {
            Ok(log) => log,
            Err(page) => return *page,
        };
    }
    let route = match state.connector.route(&stage.egress) {
        Ok(route) => route,
        Err(e) => return connect_failure(e, log),
    };
    let client = state.client(&route);

    let accept = req.headers().get(header::ACCEPT).cloned();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    set_host(&mut parts.headers, &authority);
    if state.config.proxy.via {
        headers::append_via(&mut parts.headers, &state.via);
    }
    if state.config.proxy.x_forwarded_for {
        headers::append_forwarded_for(&mut parts.headers, log.record.client.ip());
    }
    let held = HeldRequest {
        facts,
        method: method.as_str(),
        path,
        accept,
        url: log.record.target.clone(),
    };
    let (body, mut log) =
        match upload_gate::screen(state, &held, stage.pending, body, &parts.headers, log).await {
            Ok(screened) => screened,
            Err(page) => return page,
        };
    let outgoing = Request::from_parts(parts, body);

    let response_timeout = state.config.limits.response_timeout;
    let response = match tokio::time::timeout(response_timeout, client.request(outgoing)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return client_failure(e, log),
        Err(_) => {
            let reason = format!(
                "the origin did not answer within {}s",
                response_timeout.as_secs()
            );
            return error_response(StatusCode::GATEWAY_TIMEOUT, &reason, log, Some("timeout"));
        }
    };

    if let Some(reason) = headers::conflicting_framing(response.headers()) {
        return error_response(StatusCode::BAD_GATEWAY, reason, log, Some("origin_framing"));
    }
    let (mut parts, body) = response.into_parts();
    if let Some(info) = parts.extensions.get::<UpstreamConnInfo>() {
        log.record.egress = Some(info.egress.0.clone());
        log.record.server = Some(info.peer);
    }
    log.record.status = parts.status.as_u16();
    log.record.content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    headers::strip_hop_by_hop(&mut parts.headers);
    if state.config.proxy.via {
        headers::append_via(&mut parts.headers, &state.via);
    }
    if response_gate::needed(state, stage.pending) {
        let response = Response::from_parts(parts, body);
        return response_gate::respond(state, held, stage.pending, response, log).await;
    }
    Response::from_parts(parts, ProxyBody::origin(body, log))
}

/// RFC 9112 §3.2.2: a proxy replaces Host with the authority of the absolute-form target.
fn set_host(headers: &mut http::HeaderMap, authority: &Authority) {
    let host = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    // Strip userinfo, which must never be forwarded in Host.
    let host = host.rsplit('@').next().unwrap_or(host);
    if let Ok(value) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, value);
    }
}

fn connect_failure(error: ConnectError, log: Flow) -> Response<ProxyBody> {
    tracing::debug!(target = %log.record.target, %error, "connecting for a forwarded request failed");
    error_response(error.status(), &error.to_string(), log, Some(error.kind()))
}

fn client_failure(error: hyper_util::client::legacy::Error, log: Flow) -> Response<ProxyBody> {
    // The connector's own error, if that is what failed, says precisely what went wrong.
    let mut source = error.source();
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<crate::error::ClientBodyError>() {
            return error_response(
                StatusCode::BAD_REQUEST,
                &body.to_string(),
                log,
                Some("client_body"),
            );
        }
        if let Some(connect) = err.downcast_ref::<ConnectError>() {
            let reason = connect.to_string();
            return error_response(connect.status(), &reason, log, Some(connect.kind()));
        }
        source = err.source();
    }
    let reason = if error.is_connect() {
        format!("could not connect to the origin: {error}")
    } else {
        let detail = error
            .source()
            .map(|s| s.to_string())
            .unwrap_or_else(|| error.to_string());
        format!("the origin closed the connection or sent an invalid response: {detail}")
    };
    error_response(StatusCode::BAD_GATEWAY, &reason, log, Some("origin"))
}
