//! The overview: the last 24 hours at a glance — requests, blocks, alerts and bypasses
//! by hour as an SVG chart drawn here, top blocked hosts, apps and categories, top
//! users by alerts, devices by state. Every number links to the search (or the
//! device list) that produced it.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rampart_events::store::hourly::{Hourly, Metric};
use rampart_events::EventsError;

use super::auth::Viewer;
use super::events::search_href;
use super::layout;
use super::ConsoleState;

const HOUR_MS: i64 = 3_600_000;

#[derive(Default)]
struct Figures {
    requests: [u64; 24],
    blocks: [u64; 24],
    alerts: [u64; 24],
    bypasses: [u64; 24],
    blocked_hosts: HashMap<String, u64>,
    blocked_apps: HashMap<String, u64>,
    blocked_categories: HashMap<String, u64>,
    alert_users: HashMap<String, u64>,
    /// Set when the store's hourly summaries start inside the window (a store
    /// older than them): the figures count events from then on.
    counted_from: Option<i64>,
}

impl Figures {
    /// The window's figures from the store's hourly summaries: a few hundred
    /// rows whatever the traffic (reading the events themselves took seconds
    /// at millions a day).
    fn from_hourly(hourly: Hourly, start_ms: i64) -> Figures {
        let mut f = Figures {
            counted_from: (hourly.since_ms > start_ms).then_some(hourly.since_ms),
            ..Figures::default()
        };
        for (hour_ms, metric, key, count) in hourly.rows {
            let count = u64::try_from(count).unwrap_or(0);
            let bucket = ((hour_ms - start_ms) / HOUR_MS).clamp(0, 23) as usize;
            let tally =
                |map: &mut HashMap<String, u64>| *map.entry(key.clone()).or_default() += count;
            match metric {
                Metric::Requests => f.requests[bucket] += count,
                Metric::Blocks => f.blocks[bucket] += count,
                Metric::Alerts => f.alerts[bucket] += count,
                Metric::Bypasses => f.bypasses[bucket] += count,
                Metric::BlockedApp => tally(&mut f.blocked_apps),
                Metric::BlockedHost => tally(&mut f.blocked_hosts),
                Metric::BlockedCategory => tally(&mut f.blocked_categories),
                Metric::AlertUser => tally(&mut f.alert_users),
            }
        }
        f
    }
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

/// Four polylines over 24 hourly buckets, oldest on the left.
fn chart(f: &Figures) -> Markup {
    let (w, h, pad) = (720.0_f64, 180.0_f64, 24.0_f64);
    let max = f
        .requests
        .iter()
        .chain(f.blocks.iter())
        .chain(f.alerts.iter())
        .chain(f.bypasses.iter())
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
            polyline class="bypasses" points=(points(&f.bypasses)) {}
        }
        p.legend {
            span.requests { "■ requests" } " " span.blocks { "■ blocks" } " " span.alerts { "■ alerts" } " " span.bypasses { "■ bypasses" }
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
    let figures = match state
        .with_reader(move |r| r.hourly(start).map(|h| Figures::from_hourly(h, start)))
        .await
    {
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
                @if let Some(from) = f.counted_from {
                    p.muted { "Counted from " (rampart_events::render::time_text(from)) ": this store predates its hourly summaries." }
                }
                div.totals {
                    a.total href=(search_href("type in (http, network)", "24h")) { strong { (sum(&f.requests)) } " requests" }
                    a.total href=(search_href("type in (http, network) and action = block", "24h")) { strong { (sum(&f.blocks)) } " blocks" }
                    a.total href=(search_href("type = alert", "24h")) { strong { (sum(&f.alerts)) } " alerts" }
                    a.total href=(search_href("type in (http, network) and bypass in (client, gateway)", "24h")) { strong { (sum(&f.bypasses)) } " bypasses" }
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
                    (top_table("Top blocked apps", &top(&f.blocked_apps, 10), |a| format!("action = block and app = {}", quoted(a))))
                    (top_table("Top blocked categories", &top(&f.blocked_categories, 10), |c| format!("action = block and category = {}", quoted(c))))
                    (top_table("Top users by alerts", &top(&f.alert_users, 10), |u| format!("type = alert and user = {}", quoted(u))))
                }
            }
        }
    };
    layout::page("Overview", &viewer, "/", body).into_response()
}
