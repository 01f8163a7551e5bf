//! The running policy: revision and reload status, the explain form (the same
//! text as `rampart policy explain`), and reload for admins.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use rampart_policy::{split_url, ConnectionFacts, Identity, Process, RequestFacts};
use serde::Deserialize;

use super::auth::{CsrfForm, Viewer};
use super::layout;
use super::ConsoleState;
use crate::reload::{ReloadOptions, Trigger};

#[derive(Debug, Default, Deserialize)]
pub struct ExplainParams {
    #[serde(default)]
    url: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    process: String,
    #[serde(default)]
    method: String,
    /// Set by the reload form's redirect.
    reloaded: Option<String>,
}

fn some(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The explanation, or why the URL could not be read.
fn explain(state: &ConsoleState, p: &ExplainParams) -> Result<String, String> {
    let url = split_url(p.url.trim()).map_err(|e| format!("url: {e}"))?;
    let policy = state.inner.gateway.policy();
    let identity = Identity {
        user: some(&p.user),
        groups: p.group.split(',').filter_map(some).collect(),
        device: some(&p.device),
        source_ip: None,
    };
    let process = some(&p.process).map(|name| Process { name, path: None });
    let method = some(&p.method).unwrap_or_else(|| "GET".to_string());
    let request = RequestFacts {
        connection: ConnectionFacts {
            identity: &identity,
            process: process.as_ref(),
            host: Some(&url.host),
            dst_ip: None,
            port: url.port,
        },
        method: &method,
        path: &url.path,
    };
    Ok(policy.explain(&request).to_string())
}

pub async fn policy_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(p): Query<ExplainParams>,
) -> Response {
    let status = state.inner.reloader.status();
    let explained = some(&p.url).map(|_| explain(&state, &p));
    let body = html! {
        h1 { "Policy" }
        @if let Some(r) = &p.reloaded { p.ok role="status" { "Reload: " (r) } }
        dl.kv {
            dt { "Revision" } dd { code { (status.revision) } }
            dt { "Loaded" } dd { (status.loaded_at) }
            dt { "Source" } dd { (status.source.as_ref().map(|s| s.display().to_string()).unwrap_or_else(|| "built-in default".to_string())) }
            dt { "Rules" } dd { (status.rules) }
            dt { "Warnings" } dd { (status.warnings) }
            dt { "Reloads" } dd { (status.reloads_ok) " applied, " (status.reloads_rejected) " rejected" }
            @if let Some(err) = &status.last_error {
                dt { "Last rejected reload" } dd.bad { pre { (serde_json::to_string_pretty(err).unwrap_or_default()) } }
            }
        }
        @if viewer.is_admin() {
            form method="post" action="/policy/reload" {
                input type="hidden" name="csrf" value=(viewer.session.csrf);
                button type="submit" id="reload" { "Reload policy" }
            }
        }
        h2 { "Explain a decision" }
        form.grid method="get" action="/policy" {
            label { "URL" input name="url" value=(p.url) required placeholder="https://example.com/path"; }
            label { "User" input name="user" value=(p.user); }
            label { "Groups (comma-separated)" input name="group" value=(p.group); }
            label { "Device" input name="device" value=(p.device); }
            label { "Process" input name="process" value=(p.process); }
            label { "Method" input name="method" value=(p.method) placeholder="GET"; }
            button type="submit" { "Explain" }
        }
        @match &explained {
            Some(Ok(text)) => pre.explain { (text) },
            Some(Err(e)) => p.error role="alert" { (e) },
            None => {},
        }
    };
    layout::page("Policy", &viewer, "/policy", body).into_response()
}

/// Admin only: the same reload as SIGHUP, audited.
pub async fn reload(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(denied) = viewer.check_csrf(form.csrf.as_deref()) {
        return denied.into_response();
    }
    if let Err(denied) = viewer.require_admin() {
        state.inner.audit.record(
            &viewer.session.user,
            viewer.session.role,
            "policy.reload",
            "policy",
            "denied",
            &viewer.source,
        );
        return denied.into_response();
    }
    let outcome = state
        .inner
        .reloader
        .reload_with(Trigger::Api, ReloadOptions::default())
        .await;
    let result = match &outcome.result {
        Ok(()) => "applied".to_string(),
        Err(e) => format!("rejected: {e}"),
    };
    state.inner.audit.record(
        &viewer.session.user,
        viewer.session.role,
        "policy.reload",
        &outcome.status.revision,
        &result,
        &viewer.source,
    );
    let to = format!("/policy?reloaded={}", super::auth::urlencode(&result));
    (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, to)]).into_response()
}
