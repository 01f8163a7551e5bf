//! Output formats of `rampart events`: a terminal table, flat JSON, or the OCSF document.

use std::fmt::Write;

use crate::event::Event;
use crate::field::Field;

/// Fields of the flat JSON form, in order: every query field but the
/// reporter (`Field::ALL` lists it last).
fn flat_fields() -> impl Iterator<Item = Field> {
    Field::ALL.into_iter().filter(|f| *f != Field::Reporter)
}

/// RFC 3339 time with exactly three fraction digits, UTC
/// (`2023-11-14T22:13:20.120Z`): a fixed width, so times sort as strings
/// (`sort`, `jq`, a SIEM's text column) the way they sort as instants.
pub fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .filter(|t| (0..=9999).contains(&t.year()))
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_else(|| ms.to_string())
}

/// One flat JSON object: `time` plus every query field that has a value.
pub fn flat_json(e: &Event) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("time".into(), time_text(e.time).into());
    for f in flat_fields() {
        if let Some(n) = f.integer(e) {
            map.insert(f.name().into(), n.into());
        } else if let Some(v) = f.text(e) {
            map.insert(f.name().into(), v.into());
        }
    }
    if let Some(b) = &e.unmapped.bypass {
        map.insert("bypass_reason".into(), b.reason.clone().into());
    }
    if let Some(m) = &e.message {
        map.insert("message".into(), m.clone().into());
    }
    serde_json::Value::Object(map)
}

/// The OCSF document on one line.
pub fn ocsf_line(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// The flat JSON object on one line; `marked` adds `"marked": true` (timeline alerts).
pub fn flat_line(e: &Event, marked: bool) -> String {
    let mut v = flat_json(e);
    if marked {
        v["marked"] = true.into();
    }
    v.to_string()
}

/// Parse one NDJSON line holding an OCSF document written by Rampart.
pub fn parse_line(line: &[u8]) -> Result<Event, String> {
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

/// Column widths for an 80-to-200-column terminal; the last column takes the rest.
const COLUMNS: [(&str, usize); 7] = [
    ("TIME", 23),
    ("TYPE", 7),
    ("ACTION", 9),
    ("USER", 12),
    ("DEVICE", 14),
    ("RULE", 18),
    ("HOST / URL / DETAIL", 0),
];

/// Width of the last (detail) column in a table `width` columns wide.
pub fn detail_width(width: usize) -> usize {
    let fixed: usize = COLUMNS.iter().map(|c| c.1 + 1).sum::<usize>() + 2;
    width.saturating_sub(fixed).max(20)
}

/// A table of events that fits `width` columns. `marked` events get a `>` in the margin.
pub fn table(events: &[Event], width: usize, marked: Option<&str>) -> String {
    let mut out = String::new();
    let last = detail_width(width);
    let _ = write!(out, "  ");
    for (name, w) in COLUMNS {
        let w = if w == 0 { last } else { w };
        let _ = write!(out, "{:<w$} ", name, w = w);
    }
    out = out.trim_end().to_string();
    out.push('\n');
    for e in events {
        out.push_str(&row(e, last, marked));
        out.push('\n');
    }
    out
}

/// `2026-11-23 10:00:00.123` (UTC), the table's time column.
pub fn table_time(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// One table row.
pub fn row(e: &Event, last: usize, marked: Option<&str>) -> String {
    let id = e.id().to_string();
    let mark = if marked == Some(id.as_str()) {
        "> "
    } else {
        "  "
    };
    let detail = detail(e);
    let cells = [
        table_time(e.time),
        Field::Type.text(e).unwrap_or_default(),
        Field::Action.text(e).unwrap_or_default(),
        Field::User.text(e).unwrap_or_default(),
        Field::Device.text(e).unwrap_or_default(),
        Field::Rule.text(e).unwrap_or_default(),
        detail,
    ];
    let mut line = String::from(mark);
    for ((_, w), cell) in COLUMNS.iter().zip(cells) {
        let w = if *w == 0 { last } else { *w };
        let _ = write!(line, "{:<w$} ", clip(&cell, w), w = w);
    }
    line.trim_end().to_string()
}

fn detail(e: &Event) -> String {
    if let Some(f) = &e.finding_info {
        let target = match (e.host(), e.dst_endpoint.as_ref()) {
            (Some(h), _) => h.to_string(),
            (None, Some(d)) => format!(
                "{}:{}",
                d.ip.as_deref().unwrap_or("-"),
                d.port.map_or("-".to_string(), |p| p.to_string())
            ),
            _ => "-".into(),
        };
        return format!("ALERT {} ({target})", f.title);
    }
    if let Some(a) = e.unmapped.device_activity {
        return format!(
            "{:?}{}",
            a,
            e.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    let mut s = match (e.url(), e.host()) {
        (Some(u), _) => u.to_string(),
        (None, Some(h)) => {
            let port = e.dst_endpoint.as_ref().and_then(|d| d.port);
            port.map_or(h.to_string(), |p| format!("{h}:{p}"))
        }
        _ => "-".into(),
    };
    if let Some(code) = e.http_response.as_ref().map(|r| r.code) {
        let _ = write!(s, " [{code}]");
    }
    if let Some(b) = &e.unmapped.bypass {
        let _ = write!(s, " bypass@{}", b.at.as_str());
    } else if let Some(t) = e.unmapped.tls_decision {
        let _ = write!(s, " tls:{}", t.as_str());
    }
    if let Some(c) = &e.unmapped.category {
        let _ = write!(s, " cat:{c}");
    }
    s
}

fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(w.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::time_text;

    #[test]
    fn times_have_a_fixed_width_fraction_and_sort_as_strings() {
        assert_eq!(time_text(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(time_text(1_700_000_000_120), "2023-11-14T22:13:20.120Z");
        let mut texts: Vec<String> = [1_700_000_000_999i64, 1_700_000_000_000, 1_700_000_000_050]
            .iter()
            .map(|ms| time_text(*ms))
            .collect();
        texts.sort();
        assert_eq!(
            texts,
            [
                "2023-11-14T22:13:20.000Z",
                "2023-11-14T22:13:20.050Z",
                "2023-11-14T22:13:20.999Z"
            ]
        );
    }
}
