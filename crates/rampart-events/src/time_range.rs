//! Time arguments shared by the CLI and the API: RFC 3339 instants and `15m`-style spans.

use std::time::Duration;

/// Milliseconds since the epoch for an RFC 3339 time (`2026-11-23T10:00:00Z`).
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                format!("`{text}` is not an RFC 3339 time (e.g. 2026-11-23T10:00:00Z): {e}")
            })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A span such as `15m`, `2h`, `7d`, `90s`.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration (e.g. 15m, 2h, 7d): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_spans_parse() {
        assert_eq!(parse_instant("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(parse_span("15m").unwrap(), Duration::from_secs(900));
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_span("fortnight").is_err());
    }
}
