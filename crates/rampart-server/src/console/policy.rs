//! The running policy: revision and reload status, its rules per stage, the result
//! of its own test cases (`[policy] tests`, as `rampart policy test` runs them), the
//! explain form (the same text as `rampart policy explain`), and reload for admins.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use rampart_policy::{
    parse_cases, split_url, CaseResult, ConnectionFacts, Identity, Policy, Process, RequestFacts,
    RuleRow, Stage,
};
use serde::Deserialize;

use super::audit::{Entry, Outcome};
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

/// The policy's own test cases run against the serving policy: `None` without
/// `[policy] tests`, an error text when the file cannot be read.
fn run_tests(policy: &Policy, path: &std::path::Path) -> Result<Vec<CaseResult>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cases = parse_cases(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cases.cases.iter().map(|c| policy.run_case(c)).collect())
}

fn rules_section(policy: &Policy) -> Markup {
    let rows = policy.rule_table();
    let defaults = policy.stage_defaults();
    html! {
        h2 { "Rules" }
        p.muted { "Each stage tries its rules in order; the first that matches decides. "
            "\"Decided at\" is the earliest point of a flow where every condition is known." }
        @for stage in Stage::ALL {
            @let of_stage: Vec<&RuleRow> = rows.iter().filter(|r| r.stage == stage).collect();
            section.stage id=(format!("stage-{}", stage.as_str())) {
                h3 { (stage.as_str()) " (" (of_stage.len()) " rules)" }
                @if !of_stage.is_empty() {
                    table.rules {
                        thead { tr { th { "Rule" } th { "Conditions" } th { "Unless" } th { "Action" } th { "Decided at" } th { "Where" } } }
                        tbody {
                            @for r in &of_stage {
                                tr class=(if r.disabled { "muted" } else { "" }) {
                                    td { strong { (r.name) } br; code.muted { (r.id) }
                                        @if r.disabled { " (disabled)" } @if r.built_in { " (built in)" } }
                                    td { @if r.when.is_empty() { span.muted { "always" } } @else { @for c in &r.when { (c) br; } } }
                                    td { @for c in &r.unless { (c) br; } }
                                    td { (r.action) @if !r.log { span.muted { " (not logged)" } } }
                                    td { (r.decided_at.to_string()) }
                                    td.muted { (r.location.to_string()) }
                                }
                            }
                        }
                    }
                }
                @for d in defaults.iter().filter(|d| d.stage == stage) {
                    p.muted { "Default: " (d.action) @if !d.log { " (not logged)" } }
                }
            }
        }
    }
}

fn tests_section(tests: Option<(std::path::PathBuf, Result<Vec<CaseResult>, String>)>) -> Markup {
    html! {
        h2 { "Test cases" }
        @match tests {
            None => p.muted { "No test cases: name a cases file in " code { "[policy] tests" }
                " (the format of " code { "rampart policy test" } ") and every start and reload runs them." },
            Some((path, Err(e))) => p.error role="alert" { "The test cases of " (path.display()) " cannot run: " (e) },
            Some((path, Ok(results))) => {
                @let failed = results.iter().filter(|r| !r.passed()).count();
                p id="test-summary" class=(if failed == 0 { "ok" } else { "bad" }) {
                    (results.len() - failed) " passed, " (failed) " failed — " (path.display()) ", against the serving revision"
                }
                table.tests {
                    thead { tr { th { "Result" } th { "Case" } th { "Why it failed" } } }
                    tbody {
                        @for r in &results {
                            tr {
                                @if r.passed() { td.pass { "pass" } } @else { td.fail { "FAIL" } }
                                td { (r.name) }
                                td { @for f in &r.failures { (f) br; } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn policy_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(p): Query<ExplainParams>,
) -> Response {
    let status = state.inner.reloader.status();
    let explained = some(&p.url).map(|_| explain(&state, &p));
    let policy = state.inner.gateway.policy();
    let tests_path = state.inner.policy_tests.clone();
    let for_tests = policy.clone();
    let tests = match tests_path {
        Some(path) => {
            let result = tokio::task::spawn_blocking({
                let path = path.clone();
                move || run_tests(&for_tests, &path)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            Some((path, result))
        }
        None => None,
    };
    let body = html! {
        h1 { "Policy" }
        @if let Some(r) = &p.reloaded { p.ok role="status" { "Reload: " (r) } }
        dl.kv {
            dt { "Revision" } dd { code id="revision" { (status.revision) } }
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
        (tests_section(tests))
        (rules_section(&policy))
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
    let entry = Entry::of(&viewer, "policy.reload", "policy", "/policy/reload");
    if let Err(denied) = viewer.require_admin() {
        state.inner.audit.record(entry.denied());
        return denied.into_response();
    }
    let outcome = state
        .inner
        .reloader
        .reload_with(Trigger::Api, ReloadOptions::default())
        .await;
    let (result, error) = match &outcome.result {
        Ok(()) => ("applied".to_string(), None),
        Err(e) => (format!("rejected: {e}"), Some(e.to_string())),
    };
    state.inner.audit.record(Entry {
        target: &outcome.status.revision,
        outcome: if error.is_some() {
            Outcome::Failed
        } else {
            Outcome::Ok
        },
        detail: Some(error.as_deref().unwrap_or("applied")),
        revision: Some(&outcome.status.revision),
        ..entry
    });
    let to = format!("/policy?reloaded={}", super::auth::urlencode(&result));
    (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, to)]).into_response()
}
