//! ArcSight Common Event Format (CEF:0) rendering for syslog sinks.

use crate::event::Event;

/// `CEF:0|Rampart|Rampart|version|signature|name|severity|extensions`.
pub fn render(e: &Event) -> String {
    let name = e
        .finding_info
        .as_ref()
        .map(|f| f.title.clone())
        .unwrap_or_else(|| e.type_name.clone());
    // CEF severity is 0-10.
    let severity = match e.severity_id {
        1 => 1,
        2 => 3,
        3 => 5,
        4 => 8,
        5 | 6 => 10,
        _ => 0,
    };
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", e.time.to_string()),
        ("externalId", e.id().to_string()),
    ];
    let mut add = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            ext.push((k, v));
        }
    };
    add("act", e.verdict().map(|v| v.as_str().to_string()));
    add("suser", e.user_name().map(str::to_string));
    add("shost", e.device_name().map(str::to_string));
    add("sproc", e.process_name().map(str::to_string));
    add("src", e.src_endpoint.as_ref().and_then(|s| s.ip.clone()));
    add(
        "spt",
        e.src_endpoint
            .as_ref()
            .and_then(|s| s.port)
            .map(|p| p.to_string()),
    );
    add("dst", e.dst_endpoint.as_ref().and_then(|s| s.ip.clone()));
    add(
        "dpt",
        e.dst_endpoint
            .as_ref()
            .and_then(|s| s.port)
            .map(|p| p.to_string()),
    );
    add("dhost", e.host().map(str::to_string));
    add("request", e.url().map(str::to_string));
    add(
        "requestMethod",
        e.http_request.as_ref().and_then(|r| r.http_method.clone()),
    );
    add("in", e.traffic.as_ref().map(|t| t.bytes_in.to_string()));
    add("out", e.traffic.as_ref().map(|t| t.bytes_out.to_string()));
    add("cn1", e.http_response.as_ref().map(|r| r.code.to_string()));
    if e.http_response.is_some() {
        ext.push(("cn1Label", "status".into()));
    }
    let labelled: [(&str, &str, Option<String>); 5] = [
        (
            "cs1",
            "rule",
            e.policy.as_ref().and_then(|p| p.name.clone()),
        ),
        ("cs2", "category", e.unmapped.category.clone()),
        ("cs3", "flow", e.flow_id().map(|f| f.to_string())),
        (
            "cs4",
            "tls",
            e.unmapped.tls_decision.map(|t| t.as_str().to_string()),
        ),
        ("cs5", "app", e.unmapped.app.clone()),
    ];
    let mut labels = Vec::new();
    for (key, label, value) in labelled {
        if let Some(v) = value {
            labels.push((key, label, v));
        }
    }
    let mut out = format!(
        "CEF:0|Rampart|Rampart|{}|{}|{}|{}|",
        header(&e.metadata.product.version),
        e.type_uid,
        header(&name),
        severity
    );
    let mut first = true;
    let mut push = |k: &str, v: &str| {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(k);
        out.push('=');
        out.push_str(&extension(v));
    };
    for (k, v) in &ext {
        push(k, v);
    }
    for (key, label, v) in &labels {
        push(&format!("{key}Label"), label);
        push(key, v);
    }
    out
}

/// Header fields escape `\` and `|`.
fn header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}

/// Extension values escape `\`, `=` and line breaks.
fn extension(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_inside_values_are_escaped() {
        assert_eq!(header("a|b\\c"), "a\\|b\\\\c");
        assert_eq!(extension("q=1\nx"), "q\\=1\\nx");
    }
}
