//! Squid's native access-log format, so existing Squid tooling keeps working:
//!
//! ```text
//! time.ms elapsed client code/status bytes method URL user hierarchy/peer type
//! ```

use crate::event::{Event, EventType, Verdict};

/// One access-log line for an HTTP or network event; `None` for alerts and device events.
pub fn render(e: &Event) -> Option<String> {
    let ty = e.event_type()?;
    if !matches!(ty, EventType::Http | EventType::Network) {
        return None;
    }
    let secs = e.time.div_euclid(1000);
    let millis = e.time.rem_euclid(1000);
    let elapsed = e.duration.unwrap_or(0);
    let client = e
        .src_endpoint
        .as_ref()
        .and_then(|s| s.ip.as_deref())
        .unwrap_or("-");
    let denied = matches!(e.verdict(), Some(Verdict::Block | Verdict::Challenge));
    let status = e.http_response.as_ref().map_or(
        if denied {
            403
        } else if ty == EventType::Network {
            200
        } else {
            0
        },
        |r| r.code,
    );
    let code = if denied {
        "TCP_DENIED"
    } else if e.unmapped.error.is_some() {
        "TAG_NONE"
    } else if ty == EventType::Network {
        "TCP_TUNNEL"
    } else {
        "TCP_MISS"
    };
    let bytes = e.traffic.as_ref().map_or(0, |t| t.bytes_in);
    let (method, target) = match ty {
        EventType::Http => (
            e.http_request
                .as_ref()
                .and_then(|r| r.http_method.clone())
                .unwrap_or_else(|| "-".into()),
            e.url().map(str::to_string).unwrap_or_else(|| "-".into()),
        ),
        _ => {
            let host = e.host().unwrap_or("-");
            let port = e.dst_endpoint.as_ref().and_then(|d| d.port).unwrap_or(443);
            ("CONNECT".to_string(), format!("{host}:{port}"))
        }
    };
    let user = e.user_name().unwrap_or("-");
    let hierarchy = match e.dst_endpoint.as_ref().and_then(|d| d.ip.as_deref()) {
        Some(ip) if !denied => format!("HIER_DIRECT/{ip}"),
        _ => "HIER_NONE/-".to_string(),
    };
    let content_type = e
        .http_response
        .as_ref()
        .and_then(|r| r.content_type.as_deref())
        .unwrap_or("-");
    Some(format!(
        "{secs}.{millis:03} {elapsed:>6} {client} {code}/{status:03} {bytes} {method} {target} {} {hierarchy} {}",
        no_space(user),
        no_space(content_type)
    ))
}

/// Fields are space-separated: embedded whitespace would shift every column after it.
fn no_space(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}
