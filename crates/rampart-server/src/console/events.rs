//! Event search (the CLI's query language) in a table with the columns the user
//! chose, the event detail with the full OCSF record, alerts, and export as
//! NDJSON or CSV.

pub mod columns;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rampart_events::field::Field;
use rampart_events::render::{flat_json, ocsf_line, table_time};
use rampart_events::store::Cursor;
use rampart_events::{parse_query, Event, EventsError, Query as EventQuery, SearchRequest};
use serde::Deserialize;

use super::audit::{self, Entry};
use super::auth::{urlencode, Viewer};
use super::layout;
use super::ConsoleState;
use columns::{Column, UnknownColumn, ALERTS_DEFAULT, EVENTS_DEFAULT};

/// Rows per page.
const PAGE: usize = 50;
/// Most events one export returns.
const EXPORT_MAX: usize = 10_000;
/// Events an export reads and sends at a time.
const EXPORT_PAGE: usize = 1_000;
/// The time ranges of the picker, the first is the default.
const RANGES: [(&str, i64); 4] = [
    ("24h", 24 * 3_600_000),
    ("15m", 15 * 60_000),
    ("1h", 3_600_000),
    ("7d", 7 * 24 * 3_600_000),
];

/// The query string of the search, alerts and export pages. Read from the
/// pairs rather than derived: `cols` may repeat (one a ticked checkbox).
#[derive(Debug, Default)]
pub struct SearchParams {
    q: String,
    range: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    cols: Vec<String>,
}

impl SearchParams {
    fn from_pairs(pairs: Vec<(String, String)>) -> SearchParams {
        let mut p = SearchParams::default();
        for (key, value) in pairs {
            match key.as_str() {
                "q" => p.q = value,
                "range" => p.range = Some(value),
                "cursor" => p.cursor = Some(value),
                "format" => p.format = Some(value),
                "cols" => p.cols.push(value),
                _ => {}
            }
        }
        p
    }

    /// The chosen columns, `None` when the URL names none.
    fn columns(&self) -> Result<Option<Vec<Column>>, UnknownColumn> {
        columns::parse_list(self.cols.iter().map(String::as_str))
    }

    fn range(&self) -> (&'static str, i64) {
        RANGES
            .into_iter()
            .find(|(name, _)| Some(*name) == self.range.as_deref())
            .unwrap_or(RANGES[0])
    }
}

/// A link to the search for `q` over `range`.
pub fn search_href(q: &str, range: &str) -> String {
    format!("/events?q={}&range={}", urlencode(q), urlencode(range))
}

/// `&cols=…` when the columns are not the page's default, so links keep them.
fn cols_suffix(cols: Option<&str>) -> String {
    cols.map(|c| format!("&cols={}", urlencode(c)))
        .unwrap_or_default()
}

/// `field = "value"` (numbers bare), quoted as the query language reads it.
fn clause(field: &str, value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => format!("{field} = {n}"),
        other => {
            let text = other
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| other.to_string());
            format!(
                "{field} = \"{}\"",
                text.replace('\\', "\\\\").replace('"', "\\\"")
            )
        }
    }
}

enum Outcome {
    Page(Vec<Event>, Option<String>),
    QueryError(String),
    Failed(String),
}

async fn run_search(
    state: &ConsoleState,
    q: &str,
    forced: Option<&str>,
    range_ms: i64,
    cursor: Option<&str>,
    limit: usize,
) -> Outcome {
    let mut query: EventQuery = match parse_query(q) {
        Ok(query) => query,
        Err(e) => return Outcome::QueryError(e.render(q)),
    };
    if let Some(extra) = forced {
        match parse_query(extra) {
            Ok(extra) => {
                query.expr = match (extra.expr, query.expr) {
                    (Some(a), Some(b)) => {
                        Some(rampart_events::query::Expr::And(Box::new(a), Box::new(b)))
                    }
                    (a, b) => a.or(b),
                }
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    }
    let cursor = match cursor
        .filter(|c| !c.is_empty())
        .map(Cursor::parse)
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let req = SearchRequest {
        query,
        from_ms: Some(rampart_events::now_ms() - range_ms),
        to_ms: None,
        limit,
        cursor,
    };
    match state.with_reader(move |r| r.search(&req)).await {
        Ok(page) => Outcome::Page(page.events, page.next_cursor),
        Err(EventsError::NoStore(_)) => Outcome::Page(Vec::new(), None),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The alerts page's extra column: acknowledgements, and the form for admins.
pub(super) struct AckColumn {
    acks: std::collections::BTreeMap<String, super::acks::Ack>,
    /// The session's CSRF token when the viewer may acknowledge.
    csrf: Option<String>,
}

/// What an event table shows: the columns, and the `cols=` value its links
/// carry (`None` for the page's default columns).
pub(super) struct Shown<'a> {
    pub cols: &'a [Column],
    pub param: Option<&'a str>,
}

impl Shown<'static> {
    /// The events page's default columns (device pages and timelines).
    pub const DEFAULT: Shown<'static> = Shown {
        cols: &EVENTS_DEFAULT,
        param: None,
    };
}

/// The events as a table of the `shown` columns. The first cell of a row opens
/// the event; values one pivots on (user, device, host...) link to the search
/// for them over `range`, keeping the columns.
pub(super) fn results_table(
    events: &[Event],
    range: &str,
    shown: &Shown,
    ack: Option<&AckColumn>,
) -> Markup {
    let keep = cols_suffix(shown.param);
    html! {
        table.events {
            thead { tr {
                @for col in shown.cols { th scope="col" class=[col.class()] data-col=(col.name()) { (col.label()) } }
                @if ack.is_some() { th scope="col" { "Acknowledged" } }
            } }
            tbody {
                @for e in events {
                    @let action = Field::Action.text(e).unwrap_or_default();
                    tr class=[(action == "block").then_some("block")] {
                        @for (i, col) in shown.cols.iter().enumerate() {
                            @let text = col.text(e);
                            td class=[col.class()] {
                                @if i == 0 {
                                    a href=(format!("/events/{}", e.id())) title="Open this event" { (text.as_deref().filter(|t| !t.is_empty()).unwrap_or("event")) }
                                } @else if let (Some(field), Some(value)) = (col.pivot(), &text) {
                                    a href=(format!("{}{keep}", search_href(&clause(field.name(), &pivot_value(field, e, value)), range))) { (value) }
                                } @else {
                                    (text.unwrap_or_default())
                                }
                            }
                        }
                        @if let Some(ack) = ack {
                            @let id = e.id().to_string();
                            td {
                                // An alert's context in one click: what its
                                // device did five minutes either side.
                                @if let Some(device) = e.device_name() {
                                    a.context href=(format!("/timeline?device={}&at={}", urlencode(device), e.time)) title="The device's activity 5 minutes before and after this alert" { "Device ±5 min" }
                                    " "
                                }
                                @if let Some(a) = ack.acks.get(&id) {
                                    span.ok { "by " (a.by) " at " (a.time) } @if !a.note.is_empty() { ": " (a.note) }
                                } @else if let Some(csrf) = &ack.csrf {
                                    form.ack method="post" action=(format!("/alerts/{id}/ack")) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input name="note" placeholder="note" aria-label="Acknowledgement note";
                                        button type="submit" { "Acknowledge" }
                                    }
                                } @else { span.muted { "no" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A cell's value as [`clause`] quotes it: integers bare, the rest as text.
fn pivot_value(field: Field, e: &Event, text: &str) -> serde_json::Value {
    field
        .integer(e)
        .map(serde_json::Value::from)
        .unwrap_or_else(|| text.into())
}

/// The query, the range and, folded away, the column choice: every column as a
/// checkbox, the chosen ones first in their order, so a newly ticked column
/// joins at the end. Plain GET: the choice lands in the URL as `cols=`.
fn search_form(action: &str, q: &str, range: &str, placeholder: &str, chosen: &[Column]) -> Markup {
    let rest = Column::all().filter(|c| !chosen.contains(c));
    html! {
        form.search method="get" action=(action) role="search" {
            label { "Query"
                input name="q" value=(q) placeholder=(placeholder) aria-label="Query" spellcheck="false";
            }
            label { "Range"
                select name="range" {
                    @for (name, _) in ["15m", "1h", "24h", "7d"].map(|n| (n, ())) {
                        option value=(name) selected[name == range] { (name) }
                    }
                }
            }
            button type="submit" { "Search" }
            details.cols {
                summary { "Columns (" (chosen.len()) ")" }
                fieldset {
                    legend { "Shown in this order; a column you tick is added at the end" }
                    @for col in chosen { (column_box(*col, true)) }
                    @for col in rest { (column_box(col, false)) }
                }
                div.cols-actions {
                    button type="submit" { "Apply columns" }
                    a href=(format!("{action}?q={}&range={}", urlencode(q), urlencode(range))) { "Default columns" }
                }
            }
        }
    }
}

fn column_box(col: Column, checked: bool) -> Markup {
    html! {
        label.check title=(format!("cols={}", col.name())) {
            input type="checkbox" name="cols" value=(col.name()) checked[checked];
            " " (col.label())
        }
    }
}

async fn list_page(state: ConsoleState, viewer: Viewer, p: SearchParams, alerts: bool) -> Response {
    let (range, range_ms) = p.range();
    let (path, title, forced, default): (_, _, _, &[Column]) = if alerts {
        ("/alerts", "Alerts", Some("type = alert"), &ALERTS_DEFAULT)
    } else {
        ("/events", "Events", None, &EVENTS_DEFAULT)
    };
    let placeholder = "user = alice and action = block";
    let cols = match p.columns() {
        Ok(cols) => cols.unwrap_or_else(|| default.to_vec()),
        Err(e) => {
            let body = html! {
                h1 { (title) }
                (search_form(path, &p.q, range, placeholder, default))
                p.error role="alert" { "Not searched: " (e.to_string()) "." }
            };
            return (
                StatusCode::BAD_REQUEST,
                layout::page(title, &viewer, path, body),
            )
                .into_response();
        }
    };
    let param = (cols != default).then(|| columns::list_param(&cols));
    let shown = Shown {
        cols: &cols,
        param: param.as_deref(),
    };
    let keep = cols_suffix(shown.param);
    let outcome = run_search(&state, &p.q, forced, range_ms, p.cursor.as_deref(), PAGE).await;
    let ack = if alerts {
        Some(AckColumn {
            acks: state.inner.acks.load().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "console: acknowledgements unreadable");
                Default::default()
            }),
            csrf: viewer.is_admin().then(|| viewer.session.csrf.clone()),
        })
    } else {
        None
    };
    let status = match outcome {
        Outcome::Page(..) => StatusCode::OK,
        Outcome::QueryError(_) => StatusCode::BAD_REQUEST,
        Outcome::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let export = format!(
        "/events/export?q={}&range={range}",
        urlencode(&combined(&p.q, forced))
    );
    let here = format!("{path}?q={}&range={range}{keep}", urlencode(&p.q));
    let body = html! {
        h1 { (title) }
        (search_form(path, &p.q, range, placeholder, &cols))
        @match &outcome {
            Outcome::QueryError(text) => pre.error role="alert" { (text) },
            Outcome::Failed(text) => p.error role="alert" { "Search failed: " (text) },
            Outcome::Page(events, next) => {
                p.muted {
                    (events.len()) " events"
                    @if p.cursor.is_some() { " (older page)" }
                    " · export "
                    a href=(format!("{export}&format=ndjson")) title="Every field of each event, one OCSF document a line" { "NDJSON" }
                    " "
                    a href=(format!("{export}&format=csv&cols={}", urlencode(&columns::list_param(&cols)))) title="The columns of this table" { "CSV" }
                }
                @if events.is_empty() {
                    p { "No events match in the last " (range) "." }
                } @else {
                    (results_table(events, range, &shown, ack.as_ref()))
                }
                div.pager {
                    @if p.cursor.is_some() {
                        a href=(here) { "Newest" }
                    }
                    @if let Some(next) = next {
                        a href=(format!("{here}&cursor={}", urlencode(next))) rel="next" { "Older →" }
                    }
                }
            }
        }
    };
    (status, layout::page(title, &viewer, path, body)).into_response()
}

fn combined(q: &str, forced: Option<&str>) -> String {
    match (forced, q.trim().is_empty()) {
        (Some(f), true) => f.to_string(),
        (Some(f), false) => format!("{f} and ({q})"),
        (None, _) => q.to_string(),
    }
}

pub async fn search_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    list_page(state, viewer, SearchParams::from_pairs(pairs), false).await
}

pub async fn alerts_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    list_page(state, viewer, SearchParams::from_pairs(pairs), true).await
}

pub async fn detail_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let wanted = id.clone();
    let found = state.with_reader(move |r| r.get(&wanted)).await;
    let event = match found {
        Ok(Some(e)) => e,
        Ok(None) | Err(EventsError::NoStore(_)) => {
            let body =
                html! { h1 { "No such event" } p { "No event has the id " code { (id) } "." } };
            return (
                StatusCode::NOT_FOUND,
                layout::page("Event", &viewer, "/events", body),
            )
                .into_response();
        }
        Err(e) => {
            let body =
                html! { h1 { "Event" } p.error { "Reading the event failed: " (e.to_string()) } };
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                layout::page("Event", &viewer, "/events", body),
            )
                .into_response();
        }
    };
    let flat = flat_json(&event);
    let ocsf = serde_json::to_string_pretty(&event).unwrap_or_default();
    let body = html! {
        h1 { "Event " code { (event.id().to_string()) } }
        p { a href="/events" { "← Events" } }
        @if let Some(device) = event.device_name() {
            p { a href=(format!("/timeline?device={}&at={}", urlencode(device), event.time)) { "Device timeline ±5 min around this event" } }
        }
        h2 { "Fields" }
        dl.kv {
            @if let serde_json::Value::Object(map) = &flat {
                @for (k, v) in map {
                    dt { (k) }
                    dd {
                        @let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                        (text) " "
                        @if k != "time" && k != "message" && Field::parse(k).is_some() {
                            a.search-value href=(search_href(&clause(k, v), "7d")) title=(format!("Search for {k} = this value")) { "search for this value" }
                        }
                    }
                }
            }
        }
        h2 { "OCSF record" }
        pre.ocsf { (ocsf) }
    };
    layout::page("Event", &viewer, "/events", body).into_response()
}

/// The result of a search as a file: NDJSON (one OCSF document a line, whatever
/// `cols` says) or CSV (the `cols` columns in their order, else the time and
/// every flat field), at most `EXPORT_MAX` events, newest first.
pub async fn export(
    State(state): State<ConsoleState>,
    _viewer: Viewer,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let p = SearchParams::from_pairs(pairs);
    let (_, range_ms) = p.range();
    let cols = match p.columns() {
        Ok(Some(cols)) => cols,
        Ok(None) => columns::every_flat_field(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let csv = match p.format.as_deref() {
        Some("csv") => true,
        Some("ndjson") | None => false,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown export format {other:?}: use ndjson or csv\n"),
            )
                .into_response()
        }
    };
    // The first page decides the answer: a query error is a 400 with its
    // message. After it the file streams a page at a time, so an export holds
    // one page in memory, not the whole file (10,000 events built in memory
    // were ~12 MB of NDJSON and 50-60 MiB of heap per export in the soak).
    let (first, next) = match run_search(&state, &p.q, None, range_ms, None, EXPORT_PAGE).await {
        Outcome::Page(page, next) => (page, next),
        Outcome::QueryError(text) => {
            return (StatusCode::BAD_REQUEST, format!("{text}\n")).into_response()
        }
        Outcome::Failed(text) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{text}\n")).into_response()
        }
    };
    let (content_type, name) = if csv {
        ("text/csv; charset=utf-8", "events.csv")
    } else {
        ("application/x-ndjson", "events.ndjson")
    };
    let header = csv.then(|| format!("{}\n", columns::list_param(&cols)));
    let render = move |events: &[Event]| {
        if csv {
            csv_rows(events, &cols)
        } else {
            let mut out = String::new();
            for e in events {
                out.push_str(&ocsf_line(e));
                out.push('\n');
            }
            out
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(2);
    tokio::spawn(async move {
        if let Some(header) = header {
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
        }
        let (mut page, mut next) = (first, next);
        let mut sent = 0;
        loop {
            let take = page.len().min(EXPORT_MAX - sent);
            sent += take;
            if tx.send(Ok(render(&page[..take]))).await.is_err() {
                return; // the client went away
            }
            let Some(cursor) = next.filter(|_| sent < EXPORT_MAX) else {
                return;
            };
            match run_search(&state, &p.q, None, range_ms, Some(&cursor), EXPORT_PAGE).await {
                Outcome::Page(more, after) => (page, next) = (more, after),
                // The status is sent: end the body with an error, so the client
                // sees a broken transfer rather than a short file that looks whole.
                Outcome::QueryError(text) | Outcome::Failed(text) => {
                    tracing::warn!(error = %text, "console export stopped after {sent} events");
                    let _ = tx.send(Err(std::io::Error::other(text))).await;
                    return;
                }
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// One CSV row an event (the header row is sent first, once).
fn csv_rows(events: &[Event], cols: &[Column]) -> String {
    let mut out = String::new();
    for e in events {
        let row: Vec<String> = cols.iter().map(|c| csv_cell(&c.csv_text(e))).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` gets a `'` so a
/// spreadsheet never runs a logged URL as a formula.
fn csv_cell(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clause_quotes_the_way_the_query_language_reads() {
        let c = clause("host", &serde_json::Value::from("a\"b"));
        assert_eq!(c, "host = \"a\\\"b\"");
        assert!(parse_query(&c).is_ok());
        assert_eq!(
            clause("status", &serde_json::Value::from(403)),
            "status = 403"
        );
    }

    #[test]
    fn an_alert_row_opens_its_devices_activity_around_it_in_one_click() {
        let alert: Event = serde_json::from_str(include_str!(
            "../../../rampart-events/tests/golden/detection_finding.json"
        ))
        .expect("the golden alert parses");
        let ack = AckColumn {
            acks: Default::default(),
            csrf: None,
        };
        let html = results_table(&[alert], "24h", &Shown::DEFAULT, Some(&ack)).into_string();
        assert!(
            html.contains("href=\"/timeline?device=laptop-042&amp;at=1763900300000\""),
            "{html}"
        );
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}

#[derive(Debug, Deserialize)]
pub struct AckForm {
    csrf: Option<String>,
    #[serde(default)]
    note: String,
}

/// Admin only: acknowledge an alert with a note, audited.
pub async fn acknowledge(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    UrlPath(id): UrlPath<String>,
    axum::Form(form): axum::Form<AckForm>,
) -> Response {
    if let Err(denied) = viewer.check_csrf(form.csrf.as_deref()) {
        return denied.into_response();
    }
    let path = format!("/alerts/{id}/ack");
    let entry = Entry::of(&viewer, "alert.acknowledge", &id, &path);
    if let Err(denied) = viewer.require_admin() {
        state.inner.audit.record(entry.denied());
        return denied.into_response();
    }
    let wanted = id.clone();
    match state.with_reader(move |r| r.get(&wanted)).await {
        Ok(Some(e)) if e.finding_info.is_some() => {}
        Ok(_) | Err(EventsError::NoStore(_)) => {
            return (StatusCode::NOT_FOUND, format!("no alert {id}\n")).into_response()
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
    let note: String = form.note.trim().chars().take(500).collect();
    if let Err(e) = state.inner.acks.add(&id, &viewer.session.user, &note) {
        let why = format!("{e:#}");
        state.inner.audit.record(Entry {
            outcome: audit::Outcome::Failed,
            status: 500,
            detail: Some(&why),
            ..entry
        });
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response();
    }
    state.inner.audit.record(Entry {
        detail: Some(&note),
        ..entry
    });
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/alerts")]).into_response()
}

#[derive(Debug, Deserialize)]
pub struct TimelineParams {
    device: String,
    /// Milliseconds since the epoch.
    at: i64,
}

/// Everything one device did 5 minutes either side of a moment, oldest first:
/// the same data as `rampart events timeline`.
pub async fn timeline_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(p): Query<TimelineParams>,
) -> Response {
    const WINDOW_MS: i64 = 5 * 60_000;
    let device = p.device.clone();
    let at = p.at;
    let found = state
        .with_reader(move |r| r.timeline(&device, at - WINDOW_MS, at + WINDOW_MS, 1000))
        .await;
    let body = match found {
        Ok(events) => html! {
            h1 { "Device " (p.device) }
            p.muted { (events.len()) " events from " (table_time(at - WINDOW_MS)) " to " (table_time(at + WINDOW_MS)) " UTC, oldest first" }
            (results_table(&events, "24h", &Shown::DEFAULT, None))
        },
        Err(e) => {
            html! { h1 { "Device " (p.device) } p.error role="alert" { "Reading the timeline failed: " (e.to_string()) } }
        }
    };
    layout::page("Device timeline", &viewer, "/events", body).into_response()
}
