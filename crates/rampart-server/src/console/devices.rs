//! Devices: the list by state (online, offline, isolated, revoked) and one device's
//! page — identity, isolation (desired and what the agent reported), the timeline,
//! and for admins isolate and release. Isolate and release go through the same
//! [`IsolationService`](crate::isolation::IsolationService) as the API and the CLI.

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use rampart_events::render::table_time;
use rampart_events::EventsError;
use serde::Deserialize;

use super::audit::{Entry, Outcome};
use super::auth::{urlencode, Viewer};
use super::events::{results_table, search_href, Shown};
use super::layout;
use super::{ConsoleState, DeviceServices};
use crate::devices::DeviceRecord;
use crate::isolation::{IsolationServiceError, IsolationView, Request, Wanted};

/// Half the width of the device page's timeline.
const WINDOW_MS: i64 = 5 * 60_000;
/// Longest reason kept (the API keeps as much).
const REASON_MAX: usize = 512;

/// Whether the agent is connected: the first column of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Online,
    Offline,
    Revoked,
}

impl Presence {
    fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Revoked => "revoked",
        }
    }
}

/// One device with what the list and the page show about it.
pub(super) struct DeviceRow {
    record: DeviceRecord,
    presence: Presence,
    isolation: IsolationView,
}

impl DeviceRow {
    /// Isolated, or asked to be and not yet released.
    fn isolated(&self) -> bool {
        self.isolation.desired == Wanted::Isolated.as_str()
    }

    fn matches(&self, filter: &str) -> bool {
        match filter {
            "isolated" => self.isolated(),
            "" | "all" => true,
            other => self.presence.as_str() == other,
        }
    }
}

fn not_available(viewer: &Viewer) -> Response {
    let body = html! {
        h1 { "Devices" }
        p { "This server runs no agent tunnel, so it has no devices: devices enroll with the all-in-one "
            code { "rampart server" } " (see docs/agent.md)." }
    };
    (
        StatusCode::NOT_FOUND,
        layout::page("Devices", viewer, "/devices", body),
    )
        .into_response()
}

/// Every device with its presence and isolation state.
pub(super) async fn load_rows(state: &ConsoleState) -> Option<Result<Vec<DeviceRow>, String>> {
    let services = state.devices()?;
    let registry = services.registry.clone();
    let isolation = services.isolation.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let records = registry.inventory().list().map_err(|e| e.to_string())?;
        let states = isolation.states().map_err(|e| e.to_string())?;
        let connected = registry.connected();
        Ok::<_, String>(
            records
                .into_iter()
                .map(|record| {
                    let presence = if record.revoked_at.is_some() {
                        Presence::Revoked
                    } else if connected.contains(&record.id) {
                        Presence::Online
                    } else {
                        Presence::Offline
                    };
                    let isolation = match states.get(&record.id) {
                        Some(r) => IsolationView::of(&record.id, r),
                        None => never_isolated(&record.id),
                    };
                    DeviceRow {
                        record,
                        presence,
                        isolation,
                    }
                })
                .collect(),
        )
    })
    .await
    .map_err(|e| e.to_string());
    Some(rows.and_then(|r| r))
}

/// What the isolation API answers for a device never isolated.
fn never_isolated(device: &str) -> IsolationView {
    IsolationView {
        device: device.to_string(),
        desired: Wanted::Released.as_str().to_string(),
        actual: "unknown".to_string(),
        state: "released".to_string(),
        pending: false,
        generation: 0,
        reason: None,
        by: "-".to_string(),
        since: String::new(),
        trigger_event: None,
        confirmed_at: None,
        confirm_latency_ms: None,
        reported_at: None,
        detail: None,
        self_test_error: None,
        break_glass_code: false,
    }
}

/// The overview's device figures: (online, isolated, revoked, all).
pub(super) fn state_counts(rows: &[DeviceRow]) -> [(&'static str, usize); 4] {
    ["online", "isolated", "revoked", "all"]
        .map(|f| (f, rows.iter().filter(|r| r.matches(f)).count()))
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    state: String,
}

const FILTERS: [&str; 5] = ["all", "online", "offline", "isolated", "revoked"];

pub async fn list_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(p): Query<ListParams>,
) -> Response {
    let Some(rows) = load_rows(&state).await else {
        return not_available(&viewer);
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let body = html! { h1 { "Devices" } p.error role="alert" { "Reading the device inventory failed: " (e) } };
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                layout::page("Devices", &viewer, "/devices", body),
            )
                .into_response();
        }
    };
    let filter = FILTERS.into_iter().find(|f| *f == p.state).unwrap_or("all");
    let count = |f: &str| rows.iter().filter(|r| r.matches(f)).count();
    let body = html! {
        h1 { "Devices" }
        nav.totals aria-label="Device states" {
            @for f in FILTERS {
                @let href = format!("/devices?state={f}");
                @if f == filter {
                    a.total href=(href) aria-current="true" { strong { (count(f)) } " " (f) }
                } @else {
                    a.total href=(href) { strong { (count(f)) } " " (f) }
                }
            }
        }
        @if rows.is_empty() {
            p { "No device has enrolled yet. Create an enrollment token with "
                code { "rampart device token create --user NAME" } " and enroll an agent with it." }
        } @else {
            table.devices {
                thead { tr { th { "Device" } th { "State" } th { "Isolation" } th { "User" } th { "Hostname" } th { "Agent" } th { "Last seen (UTC)" } } }
                tbody {
                    @for r in rows.iter().filter(|r| r.matches(filter)) {
                        tr {
                            td { a href=(format!("/devices/{}", urlencode(&r.record.id))) { (r.record.id) } }
                            td { span class=(format!("state {}", r.presence.as_str())) { (r.presence.as_str()) } }
                            td { span class=(if r.isolated() { "bad" } else { "" }) { (r.isolation.state) } }
                            td { (r.record.user.as_deref().unwrap_or("-")) }
                            td { (r.record.hostname) }
                            td { (r.record.agent_version) }
                            td { (r.record.last_seen) }
                        }
                    }
                }
            }
        }
    };
    let body = html! {
        (body)
        @if viewer.is_admin() { (token_form(&viewer)) }
    };
    layout::page("Devices", &viewer, "/devices", body).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct DeviceParams {
    /// The middle of the timeline, milliseconds since the epoch; default now.
    at: Option<i64>,
    /// Set by the isolate/release redirect.
    done: Option<String>,
}

fn isolation_form(viewer: &Viewer, device: &str, isolated: bool) -> Markup {
    let (verb, action, warning) = if isolated {
        ("Release", "release", "The device gets its network back.")
    } else {
        (
            "Isolate",
            "isolate",
            "The device loses every connection except to Rampart and the exceptions of [isolation].",
        )
    };
    html! {
        form.isolation method="post" action=(format!("/devices/{}/{action}", urlencode(device)))
            data-confirm=(format!("{verb} {device}? {warning}")) {
            h2 { (verb) " this device" }
            input type="hidden" name="csrf" value=(viewer.session.csrf);
            label { "Reason (kept in the audit trail)"
                input name="reason" required maxlength=(REASON_MAX) placeholder="e.g. beaconing to a known C2 host, ticket SEC-123";
            }
            label.check { input type="checkbox" name="confirm" value="yes" required; " " (warning) " I confirm." }
            button type="submit" id=(action) { (verb) " device" }
        }
    }
}

pub async fn device_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<DeviceParams>,
) -> Response {
    let Some(rows) = load_rows(&state).await else {
        return not_available(&viewer);
    };
    let row = match rows {
        Ok(rows) => rows.into_iter().find(|r| r.record.id == id),
        Err(e) => {
            let body = html! { h1 { "Device" } p.error role="alert" { "Reading the device inventory failed: " (e) } };
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                layout::page("Device", &viewer, "/devices", body),
            )
                .into_response();
        }
    };
    let Some(row) = row else {
        let body = html! { h1 { "No such device" } p { "No enrolled device has the id " code { (id) } "." } p { a href="/devices" { "← Devices" } } };
        return (
            StatusCode::NOT_FOUND,
            layout::page("Device", &viewer, "/devices", body),
        )
            .into_response();
    };
    let at = p.at.unwrap_or_else(rampart_events::now_ms);
    let device = id.clone();
    let timeline = match state
        .with_reader(move |r| r.timeline(&device, at - WINDOW_MS, at + WINDOW_MS, 1000))
        .await
    {
        Ok(events) => Ok(events),
        Err(EventsError::NoStore(_)) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    };
    let d = &row.record;
    let iso = &row.isolation;
    let body = html! {
        h1 { "Device " (d.id) }
        p { a href="/devices" { "← Devices" } " · " a href=(search_href(&format!("device = \"{}\"", d.id.replace('"', "\\\"")), "7d")) { "all events of this device (7 days)" } }
        @if let Some(done) = &p.done { p.ok role="status" { (done) } }
        div.columns {
            section {
                h2 { "Identity" }
                dl.kv {
                    dt { "State" } dd { span class=(format!("state {}", row.presence.as_str())) { (row.presence.as_str()) } }
                    dt { "User" } dd { (d.user.as_deref().unwrap_or("-")) }
                    dt { "Groups" } dd { (if d.groups.is_empty() { "-".to_string() } else { d.groups.join(", ") }) }
                    dt { "Hostname" } dd { (d.hostname) }
                    dt { "Agent version" } dd { (d.agent_version) }
                    dt { "Steering mode" } dd { (d.steering_mode) }
                    dt { "Enrolled" } dd { (d.enrolled_at) }
                    dt { "Last seen" } dd { (d.last_seen) }
                    @if let Some(r) = &d.revoked_at { dt { "Revoked" } dd.bad { (r) } }
                }
            }
            section {
                h2 { "Isolation" }
                dl.kv.isolation {
                    dt { "State" } dd id="isolation-state" class=(if row.isolated() { "bad" } else { "" }) { (iso.state) }
                    dt { "Desired" } dd id="isolation-desired" { (iso.desired) }
                    dt { "Reported by the agent" } dd { (iso.actual) @if let Some(t) = &iso.reported_at { " at " (t) } }
                    @if iso.pending { dt { "Pending" } dd { "the agent has not confirmed generation " (iso.generation) " yet" } }
                    @if iso.generation > 0 {
                        dt { "Asked by" } dd { (iso.by) " at " (iso.since) }
                        dt { "Reason" } dd { (iso.reason.as_deref().unwrap_or("-")) }
                    }
                    @if let Some(t) = &iso.trigger_event { dt { "Triggering event" } dd { a href=(format!("/events/{}", urlencode(t))) { (t) } } }
                    @if let Some(c) = &iso.confirmed_at { dt { "Confirmed" } dd { (c) @if let Some(ms) = iso.confirm_latency_ms { " (" (ms) " ms after the request)" } } }
                    @if let Some(e) = &iso.self_test_error { dt { "Self-test" } dd.bad { (e) } }
                    @if let Some(e) = &iso.detail { dt { "Agent detail" } dd { (e) } }
                    @if iso.break_glass_code { dt { "Break-glass code" } dd { "issued, unused" } }
                }
                @if viewer.is_admin() {
                    (isolation_form(&viewer, &d.id, row.isolated()))
                    @if d.revoked_at.is_none() { (revoke_form(&viewer, &d.id)) }
                }
            }
        }
        h2 { "Timeline" }
        form.search method="get" action=(format!("/devices/{}", urlencode(&d.id))) {
            label { "Around (ms since the epoch)" input name="at" value=(at) inputmode="numeric"; }
            button type="submit" { "Show" }
        }
        @match &timeline {
            Ok(events) => {
                p.muted { (events.len()) " events from " (table_time(at - WINDOW_MS)) " to " (table_time(at + WINDOW_MS)) " UTC, oldest first" }
                @if !events.is_empty() { (results_table(events, "24h", &Shown::DEFAULT, None)) }
            }
            Err(e) => p.error role="alert" { "Reading the timeline failed: " (e) },
        }
    };
    layout::page("Device", &viewer, "/devices", body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct IsolationForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

pub async fn isolate(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<IsolationForm>,
) -> Response {
    change(state, viewer, id, form, Wanted::Isolated).await
}

pub async fn release(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<IsolationForm>,
) -> Response {
    change(state, viewer, id, form, Wanted::Released).await
}

fn bad_request(viewer: &Viewer, device: &str, message: &str) -> Response {
    let body = html! {
        h1 { "Not done" }
        p.error role="alert" { (message) }
        p { a href=(format!("/devices/{}", urlencode(device))) { "← Back to " (device) } }
    };
    (
        StatusCode::BAD_REQUEST,
        layout::page("Not done", viewer, "/devices", body),
    )
        .into_response()
}

/// A guarded device action once its guard let it through: the device, the
/// console user asking and the cleaned reason.
struct Ask {
    device: String,
    by: String,
    reason: String,
}

/// What a device action answers: the line the device page shows, or the status
/// and why it failed.
type ActionResult = Result<String, (StatusCode, String)>;

/// The guard of every admin action on a device (`verb` is its path segment,
/// `action` its audit name): the form's CSRF token, the admin role (a refusal is
/// audited), the ticked confirmation and a reason (`400` without). Then `act`
/// runs on the blocking pool; either way the audit trail gets the outcome, and
/// the admin lands back on the device page or on a page saying what failed.
async fn guarded(
    state: ConsoleState,
    viewer: Viewer,
    id: String,
    form: IsolationForm,
    (action, verb): (&'static str, &'static str),
    act: impl FnOnce(DeviceServices, Ask) -> ActionResult + Send + 'static,
) -> Response {
    if let Err(denied) = viewer.check_csrf(form.csrf.as_deref()) {
        return denied.into_response();
    }
    let path = format!("/devices/{id}/{verb}");
    let reason = clean_reason(&form.reason);
    let entry = Entry {
        device: Some(&id),
        detail: Some(&reason),
        ..Entry::of(&viewer, action, &id, &path)
    };
    if let Err(denied) = viewer.require_admin() {
        state.inner.audit.record(entry.denied());
        return denied.into_response();
    }
    if form.confirm != "yes" {
        return bad_request(
            &viewer,
            &id,
            &format!("Tick the confirmation box to {verb} {id}."),
        );
    }
    if reason.is_empty() {
        return bad_request(
            &viewer,
            &id,
            &format!("Give a reason to {verb} {id}: it is kept in the audit trail."),
        );
    }
    let Some(services) = state.devices() else {
        return not_available(&viewer);
    };
    let services = DeviceServices {
        registry: services.registry.clone(),
        isolation: services.isolation.clone(),
    };
    let ask = Ask {
        device: id.clone(),
        by: viewer.session.user.clone(),
        reason: reason.clone(),
    };
    let result = tokio::task::spawn_blocking(move || act(services, ask))
        .await
        .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())));
    let (status, message) = match result {
        Ok(done) => {
            state.inner.audit.record(entry);
            let to = format!("/devices/{}?done={}", urlencode(&id), urlencode(&done));
            return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
        }
        Err(failure) => failure,
    };
    state.inner.audit.record(Entry {
        outcome: Outcome::Failed,
        status: status.as_u16(),
        detail: Some(&message),
        ..entry
    });
    let body =
        html! { h1 { "Not done" } p.error role="alert" { (verb) " " (id) " failed: " (message) } };
    (status, layout::page("Not done", &viewer, "/devices", body)).into_response()
}

/// Isolate or release through the isolation service (admin only, guarded).
async fn change(
    state: ConsoleState,
    viewer: Viewer,
    id: String,
    form: IsolationForm,
    wanted: Wanted,
) -> Response {
    let names = match wanted {
        Wanted::Isolated => ("device.isolate", "isolate"),
        Wanted::Released => ("device.release", "release"),
    };
    guarded(state, viewer, id, form, names, move |services, ask| {
        let request = Request {
            reason: Some(ask.reason.clone()),
            by: ask.by,
            trigger_event: None,
        };
        match services.isolation.set(&ask.device, wanted, request) {
            Ok(change) if change.changed => Ok(format!(
                "{}: {} requested ({})",
                ask.device,
                wanted.as_str(),
                ask.reason
            )),
            Ok(_) => Ok(format!(
                "{} was already {}: nothing changed",
                ask.device,
                wanted.as_str()
            )),
            Err(e @ IsolationServiceError::NoDevice(_)) => {
                Err((StatusCode::NOT_FOUND, e.to_string()))
            }
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    })
    .await
}

/// Revoke a device: its certificate is refused from now on (gateways send
/// `certificate_revoked`, open tunnels close) and the agent fails closed.
/// Admin only, guarded like isolation.
pub async fn revoke(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<IsolationForm>,
) -> Response {
    let names = ("device.revoke", "revoke");
    guarded(
        state,
        viewer,
        id,
        form,
        names,
        |services, ask| match services.registry.revoke(&ask.device) {
            Ok(true) => Ok(format!("{}: revoked ({})", ask.device, ask.reason)),
            Ok(false) => Err((StatusCode::NOT_FOUND, format!("no device {}", ask.device))),
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        },
    )
    .await
}

/// A reason as the audit trail keeps it: no control characters, at most
/// [`REASON_MAX`] characters, trimmed.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(REASON_MAX)
        .collect::<String>()
        .trim()
        .to_string()
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    csrf: Option<String>,
    #[serde(default)]
    user: String,
    /// Comma-separated.
    #[serde(default)]
    groups: String,
    /// Hours the token stays valid (default 24).
    #[serde(default)]
    hours: String,
}

/// Longest lifetime of an enrollment token made in the console.
const TOKEN_HOURS_MAX: i64 = 24 * 30;

/// A one-time enrollment token for a new device (the same tokens as
/// `rampart device token create`), shown once. Admin only, CSRF-checked,
/// audited without the token itself.
pub async fn create_token(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Err(denied) = viewer.check_csrf(form.csrf.as_deref()) {
        return denied.into_response();
    }
    let user = form.user.trim().to_string();
    let groups: Vec<String> = form
        .groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    let detail = format!("user {user:?}, groups {groups:?}");
    let entry = Entry {
        detail: Some(&detail),
        ..Entry::of(&viewer, "device.token", &user, "/devices/tokens")
    };
    if let Err(denied) = viewer.require_admin() {
        state.inner.audit.record(entry.denied());
        return denied.into_response();
    }
    let hours = match form.hours.trim() {
        "" => 24,
        h => match h.parse::<i64>() {
            Ok(h) if (1..=TOKEN_HOURS_MAX).contains(&h) => h,
            _ => {
                return bad_request(
                    &viewer,
                    "",
                    &format!(
                        "The lifetime is a whole number of hours from 1 to {TOKEN_HOURS_MAX}."
                    ),
                )
            }
        },
    };
    let Some(services) = state.devices() else {
        return not_available(&viewer);
    };
    let registry = services.registry.clone();
    let (for_user, for_groups) = (user.clone(), groups.clone());
    let created = tokio::task::spawn_blocking(move || {
        registry.tokens().create(
            (!for_user.is_empty()).then_some(for_user.as_str()),
            &for_groups,
            hours * 3600,
        )
    })
    .await;
    match created {
        Ok(Ok(token)) => {
            state.inner.audit.record(Entry {
                status: 200,
                ..entry
            });
            let body = html! {
                h1 { "Enrollment token" }
                p { "For " (if user.is_empty() { "a device without a user" } else { &user })
                    @if !groups.is_empty() { " (groups " (groups.join(", ")) ")" }
                    ", valid for " (hours) " hours, once. It is shown only now." }
                pre id="enrollment-token" { (token) }
                p { "On the device: " code { "sudo rampart agent enroll --server URL --token TOKEN" } " (docs/agent.md)." }
                p { a href="/devices" { "← Devices" } }
            };
            layout::page("Enrollment token", &viewer, "/devices", body).into_response()
        }
        Ok(Err(e)) => bad_request(&viewer, "", &e.to_string()),
        Err(e) => bad_request(&viewer, "", &e.to_string()),
    }
}

fn token_form(viewer: &Viewer) -> Markup {
    html! {
        form.token method="post" action="/devices/tokens" {
            h2 { "Enroll a device" }
            input type="hidden" name="csrf" value=(viewer.session.csrf);
            label { "User" input name="user" placeholder="alice"; }
            label { "Groups (comma-separated)" input name="groups" placeholder="engineering, laptops"; }
            label { "Valid for (hours)" input name="hours" inputmode="numeric" value="24"; }
            button type="submit" id="create-token" { "Create enrollment token" }
        }
    }
}

fn revoke_form(viewer: &Viewer, device: &str) -> Markup {
    let warning = "The device's certificate is refused from now on; its agent fails closed until it is enrolled again.";
    html! {
        form.revoke method="post" action=(format!("/devices/{}/revoke", urlencode(device)))
            data-confirm=(format!("Revoke {device}? {warning}")) {
            h2 { "Revoke this device" }
            input type="hidden" name="csrf" value=(viewer.session.csrf);
            label { "Reason (kept in the audit trail)"
                input name="reason" required maxlength=(REASON_MAX) placeholder="e.g. laptop reported stolen, ticket SEC-124";
            }
            label.check { input type="checkbox" name="confirm" value="yes" required; " " (warning) " I confirm." }
            button type="submit" id="revoke" { "Revoke device" }
        }
    }
}
