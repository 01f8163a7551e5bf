//! The response a blocked request gets inside the decrypted session: a small HTML page
//! for browsers (Accept: text/html), plain text for everything else, with the same facts.
//! Every value is HTML-escaped: hosts, URLs and rule names can carry attacker text.
use crate::origin_failure::OriginTlsFailure;
use std::fmt::Write;

/// What to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPage {
    /// 403 for policy blocks, 502 for origin certificate problems.
    pub status: u16,
    pub title: String,
    pub reason: String,
    pub rule: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub event_id: String,
}

/// A rendered response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl BlockPage {
    /// A request blocked by an access rule.
    pub fn policy(rule: &str, category: Option<&str>, url: Option<&str>, event_id: &str) -> Self {
        BlockPage {
            status: 403,
            title: "Blocked by policy".to_string(),
            reason: format!("This request was blocked by the rule \"{rule}\"."),
            rule: Some(rule.to_string()),
            category: category.map(str::to_string),
            url: url.map(str::to_string),
            event_id: event_id.to_string(),
        }
    }

    /// A request refused because the origin's certificate failed verification.
    pub fn origin_certificate(
        host: &str,
        failure: &OriginTlsFailure,
        url: Option<&str>,
        event_id: &str,
    ) -> Self {
        BlockPage {
            status: 502,
            title: "Unsafe connection blocked".to_string(),
            reason: failure.explain(host),
            rule: None,
            category: None,
            url: url.map(str::to_string),
            event_id: event_id.to_string(),
        }
    }

    /// Renders for a request with this `Accept` header value.
    pub fn render(&self, accept: Option<&str>) -> BlockResponse {
        if wants_html(accept) {
            BlockResponse {
                status: self.status,
                content_type: "text/html; charset=utf-8",
                body: self.html(),
            }
        } else {
            BlockResponse {
                status: self.status,
                content_type: "text/plain; charset=utf-8",
                body: self.text(),
            }
        }
    }

    fn facts(&self) -> Vec<(&'static str, &str)> {
        let mut facts = Vec::new();
        if let Some(url) = &self.url {
            facts.push(("URL", url.as_str()));
        }
        if let Some(rule) = &self.rule {
            facts.push(("Rule", rule.as_str()));
        }
        if let Some(category) = &self.category {
            facts.push(("Category", category.as_str()));
        }
        facts.push(("Event ID", self.event_id.as_str()));
        facts
    }

    /// The plain-text body.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n{}\n\n", self.title, self.reason);
        write_fact_lines(&mut out, &self.facts());
        out.push_str("\nQuote the event ID when asking your administrator about this.\n");
        out
    }

    /// The HTML body.
    pub fn html(&self) -> String {
        let rows = fact_rows_html(&self.facts());
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.4rem;color:#a40000}}th{{text-align:left;padding-right:1rem;vertical-align:top}}\
td{{word-break:break-all}}footer{{margin-top:2rem;font-size:.85rem;color:#666}}\
</style></head><body><h1>{title}</h1><p>{reason}</p><table>{rows}</table>\
<footer>Quote the event ID when asking your administrator about this. — Rampart</footer></body></html>\n",
            title = escape_html(&self.title),
            reason = escape_html(&self.reason),
        )
    }
}

/// Whether `Accept` asks for HTML (text/html with a non-zero q value).
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/html") {
            return false;
        }
        !parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        })
    })
}

/// `Label: value` lines of a page's facts for its plain-text body. Control
/// characters become spaces: a URL must not forge extra lines.
pub fn write_fact_lines(out: &mut String, facts: &[(&str, &str)]) {
    for (label, value) in facts {
        let clean: String = value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "{label}: {clean}");
    }
}

/// A page's facts as escaped HTML table rows.
pub fn fact_rows_html(facts: &[(&str, &str)]) -> String {
    let mut rows = String::new();
    for (label, value) in facts {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape_html(label),
            escape_html(value)
        );
    }
    rows
}

/// Escapes the five HTML-significant characters.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_naming_rule_category_and_event() {
        let page = BlockPage::policy(
            "no news",
            Some("news"),
            Some("https://news.example/"),
            "ev-123",
        );
        let r = page.render(Some("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert_eq!(r.status, 403);
        assert!(r.content_type.starts_with("text/html"));
        for needle in ["no news", "news", "ev-123", "https://news.example/"] {
            assert!(r.body.contains(needle), "{needle}");
        }
    }

    #[test]
    fn other_clients_get_plain_text_with_the_same_facts() {
        let page = BlockPage::policy("no news", Some("news"), None, "ev-9");
        let r = page.render(Some("*/*"));
        assert!(r.content_type.starts_with("text/plain"));
        assert!(
            r.body
                .contains("Rule: no news\nCategory: news\nEvent ID: ev-9"),
            "{}",
            r.body
        );
        assert_eq!(page.render(None).content_type, r.content_type);
    }

    #[test]
    fn every_value_is_html_escaped() {
        let page = BlockPage::policy(
            "<script>alert(1)</script>",
            Some("a&b"),
            Some("https://x/?q=\"'"),
            "<id>",
        );
        let html = page.html();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("a&amp;b"));
        assert!(html.contains("q=&quot;&#39;"));
        assert!(html.contains("&lt;id&gt;"));
    }

    #[test]
    fn text_html_with_q_zero_is_not_html() {
        assert!(!wants_html(Some("text/html;q=0, */*")));
        assert!(wants_html(Some("TEXT/HTML; q=0.5")));
        assert!(!wants_html(Some("application/json")));
    }

    #[test]
    fn certificate_block_is_502_with_explanation() {
        let page =
            BlockPage::origin_certificate("old.example", &OriginTlsFailure::Expired, None, "ev-1");
        let r = page.render(Some("application/json"));
        assert_eq!(r.status, 502);
        assert!(
            r.body.contains("certificate of old.example has expired"),
            "{}",
            r.body
        );
    }

    #[test]
    fn control_characters_cannot_forge_text_lines() {
        let page = BlockPage::policy("r", None, Some("https://x/\r\nEvent ID: fake"), "ev-2");
        assert!(!page.text().contains("\nEvent ID: fake"));
    }
}
