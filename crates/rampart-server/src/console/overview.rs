//! The overview: the last 24 hours at a glance — requests, blocks and alerts
//! by hour as an SVG chart drawn here, top blocked hosts and categories, top
//! users by alerts, devices by state. Every number links to the search (or the
//! device list) that produced it.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rampart_events::field::Field;
use rampart_events::{Event, EventType, EventsError, SearchRequest, Verdict};

use super::auth::Viewer;
use super::events::search_href;
use super::layout;
use super::ConsoleState;

const HOUR_MS: i64 = 3_600_000;
/// Most events the overview reads; beyond it the page says the figures are partial.
const SCAN_MAX: usize = 50_000;

#[derive(Default)]
struct Figures {
    requests: [u64; 24],
    blocks: [u64; 24],
    alerts: [u64; 24],
    blocked_hosts: HashMap<String, u64>,
    blocked_categories: HashMap<String, u64>,
    alert_users: HashMap<String, u64>,
    scanned: usize,
    partial: bool,
}

impl Figures {
    fn add(&mut self, e: &Event, start_ms: i64) {
        let hour = ((e.time - start_ms) / HOUR_MS).clamp(0, 23) as usize;
        match e.event_type() {
            Some(EventType::Http | EventType::Network) => {
                self.requests[hour] += 1;
                if e.verdict() == Some(Verdict::Block) {
                    self.blocks[hour] += 1;
                    if let Some(h) = e.host() {
                        *self.blocked_hosts.entry(h.to_string()).or_default() += 1;
                    }
                    if let Some(c) = Field::Category.text(e) {
                        for c in c.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                            *self.blocked_categories.entry(c.to_string()).or_default() += 1;
                        }
                    }
                }
            }
            Some(EventType::Alert) => {
                self.alerts[hour] += 1;
                if let Some(u) = e.user_name() {
                    *self.alert_users.entry(u.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

/// Reads the last 24 hours page by page (newest first), at most `SCAN_MAX` events.
fn gather(reader: &rampart_events::StoreReader, start_ms: i64) -> Result<Figures, EventsError> {
    let mut figures = Figures::default();
    let mut cursor = None;
    loop {
        let page = reader.search(&SearchRequest {
            query: rampart_events::parse_query("")?,
            from_ms: Some(start_ms),
            to_ms: None,
            limit: 5_000,
            cursor,
        })?;
        for e in &page.events {
            figures.add(e, start_ms);
        }
        figures.scanned += page.events.len();
        match page.next_cursor {
            Some(next) if figures.scanned < SCAN_MAX => {
                cursor = Some(rampart_events::store::Cursor::parse(&next)?)
            }
            Some(_) => {
                figures.partial = true;
                break;
            }
            None => break,
        }
    }
    Ok(figures)
}

fn top(map: &HashMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = map.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Three polylines over 24 hourly buckets, oldest on the left.
fn chart(f: &Figures) -> Markup {
    let (w, h, pad) = (720.0_f64, 180.0_f64, 24.0_f64);
    let max = f
        .requests
        .iter()
        .chain(f.blocks.iter())
        .chain(f.alerts.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let points = |series: &[u64; 24]| -> String {
        series
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = pad + (w - 2.0 * pad) * i as f64 / 23.0;
                let y = h - pad - (h - 2.0 * pad) * (*v as f64) / max;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.chart viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="Requests, blocks and alerts per hour over the last 24 hours" {
            line x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) class="axis" {}
            text x=(pad) y=(h - 6.0) class="tick" { "−24 h" }
            text x=(w - pad) y=(h - 6.0) class="tick" text-anchor="end" { "now" }
            text x=(pad) y=(pad - 8.0) class="tick" { "max " (max as u64) "/h" }
            polyline class="requests" points=(points(&f.requests)) {}
            polyline class="blocks" points=(points(&f.blocks)) {}
            polyline class="alerts" points=(points(&f.alerts)) {}
        }
        p.legend {
            span.requests { "■ requests" } " " span.blocks { "■ blocks" } " " span.alerts { "■ alerts" }
        }
    }
}

fn top_table(title: &str, rows: &[(&str, u64)], query: impl Fn(&str) -> String) -> Markup {
    html! {
        section {
            h2 { (title) }
            @if rows.is_empty() { p.muted { "None." } } @else {
                table {
                    tbody {
                        @for (name, count) in rows {
                            tr { td { (name) } td { a href=(search_href(&query(name), "24h")) { (count) } } }
                        }
                    }
                }
            }
        }
    }
}

pub async fn overview_page(State(state): State<ConsoleState>, viewer: Viewer) -> Response {
    let now = rampart_events::now_ms();
    // Whole hours, so each bucket is one clock hour.
    let start = (now / HOUR_MS - 23) * HOUR_MS;
    let figures = match state.with_reader(move |r| gather(r, start)).await {
        Ok(f) => Ok(f),
        Err(EventsError::NoStore(_)) => Ok(Figures::default()),
        Err(e) => Err(e.to_string()),
    };
    let devices = match super::devices::load_rows(&state).await {
        Some(Ok(rows)) => Some(super::devices::state_counts(&rows)),
        _ => None,
    };
    let body = match figures {
        Err(e) => {
            html! { h1 { "Overview" } p.error role="alert" { "Reading the store failed: " (e) } }
        }
        Ok(f) => {
            let sum = |s: &[u64; 24]| s.iter().sum::<u64>();
            html! {
                h1 { "Overview — last 24 hours" }
                @if f.partial { p.muted { "Figures from the newest " (f.scanned) " events only." } }
                div.totals {
                    a.total href=(search_href("type in (http, network)", "24h")) { strong { (sum(&f.requests)) } " requests" }
                    a.total href=(search_href("type in (http, network) and action = block", "24h")) { strong { (sum(&f.blocks)) } " blocks" }
                    a.total href=(search_href("type = alert", "24h")) { strong { (sum(&f.alerts)) } " alerts" }
                }
                @if let Some(counts) = &devices {
                    div.totals aria-label="Devices" {
                        @for (state, n) in counts {
                            a.total.devices href=(format!("/devices?state={state}")) { strong { (n) } " " (if *state == "all" { "devices" } else { state }) }
                        }
                    }
                }
                (chart(&f))
                div.tops {
                    (top_table("Top blocked hosts", &top(&f.blocked_hosts, 10), |h| format!("action = block and host = {}", quoted(h))))
                    (top_table("Top blocked categories", &top(&f.blocked_categories, 10), |c| format!("action = block and category = {}", quoted(c))))
                    (top_table("Top users by alerts", &top(&f.alert_users, 10), |u| format!("type = alert and user = {}", quoted(u))))
                }
            }
        }
    };
    layout::page("Overview", &viewer, "/", body).into_response()
}
