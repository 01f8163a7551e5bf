//! Host names and list entries: normalisation (case, trailing dot, IDN → punycode)
//! and the pattern syntax of URL lists.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::glob::PathPattern;

/// Longest host name accepted (RFC 1035 §2.3.4: 253 characters in text form).
const MAX_HOST_LEN: usize = 253;

/// Normalises a host for matching: ASCII lowercase, no trailing dot, IDN labels in
/// punycode, IPv6 brackets removed. Borrows when the host is already normal, which is
/// the common case on the data path.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        return Cow::Borrowed(host);
    }
    if host.is_ascii() {
        return Cow::Owned(host.to_ascii_lowercase());
    }
    match idna::domain_to_ascii(host) {
        Ok(ascii) => Cow::Owned(ascii),
        // Not a valid IDN: still compare case-insensitively rather than fail the request.
        Err(_) => Cow::Owned(host.to_lowercase()),
    }
}

/// Normalises and validates a host written in a policy or category file.
pub fn parse_host(host: &str) -> Result<String, String> {
    parse_host_cow(host).map(Cow::into_owned)
}

/// [`parse_host`] without a copy when the host is already lowercase ASCII: category
/// files hold millions of such lines.
pub(crate) fn parse_host_cow(host: &str) -> Result<Cow<'_, str>, String> {
    if host.is_empty() {
        return Err("empty host name".into());
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Cow::Owned(ip.to_string()));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let ascii: Cow<'_, str> = if trimmed
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        Cow::Borrowed(trimmed)
    } else if trimmed.is_ascii() {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Owned(
            idna::domain_to_ascii(trimmed)
                .map_err(|_| format!("\"{host}\" is not a valid internationalised domain name"))?,
        )
    };
    if ascii.is_empty() || ascii.len() > MAX_HOST_LEN {
        return Err(format!("\"{host}\" is not a valid host name (length)"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("\"{host}\" has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("\"{host}\" has a label longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "\"{host}\" contains '{c}', which is not allowed in a host name"
            ));
        }
    }
    Ok(ascii)
}

/// Which hosts a domain entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainMode {
    /// `example.com`: that host only.
    Exact,
    /// `*.example.com`: any subdomain, not the apex.
    Subdomains,
    /// `.example.com` (and every entry of a category file): the apex and any subdomain.
    DomainAndSubdomains,
}

impl DomainMode {
    pub(crate) fn flags(self) -> u32 {
        match self {
            DomainMode::Exact => crate::domain_index::MATCH_EXACT,
            DomainMode::Subdomains => crate::domain_index::MATCH_SUBDOMAINS,
            DomainMode::DomainAndSubdomains => {
                crate::domain_index::MATCH_EXACT | crate::domain_index::MATCH_SUBDOMAINS
            }
        }
    }
}

/// One entry of a URL list, an app's domains or a rule's `hosts`.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// A host pattern, optionally restricted to paths.
    Host {
        host: String,
        mode: DomainMode,
        path: Option<PathPattern>,
    },
    /// A destination address block (`10.0.0.0/8`).
    Cidr(IpNet),
}

impl Pattern {
    /// Parses a list entry: `host`, `*.domain`, `.domain`, `host/path-prefix`,
    /// `host/path/*glob*`, `http(s)://` prefix ignored, or a CIDR block.
    pub fn parse(entry: &str) -> Result<Pattern, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty entry".into());
        }
        let rest = entry
            .strip_prefix("https://")
            .or_else(|| entry.strip_prefix("http://"))
            .unwrap_or(entry);
        if let Ok(net) = rest.parse::<IpNet>() {
            return Ok(Pattern::Cidr(net));
        }
        if rest.contains("://") {
            return Err(format!(
                "\"{entry}\": only http:// and https:// URLs are supported (the scheme is ignored)"
            ));
        }
        let (host_part, path_part) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (mode, host_text) = if let Some(h) = host_part.strip_prefix("*.") {
            (DomainMode::Subdomains, h)
        } else if let Some(h) = host_part.strip_prefix('.') {
            (DomainMode::DomainAndSubdomains, h)
        } else {
            (DomainMode::Exact, host_part)
        };
        if host_text.contains('*') {
            return Err(format!(
                "\"{entry}\": a wildcard is only allowed as the whole first label, as in \"*.example.com\""
            ));
        }
        if host_text.contains(':') && host_text.parse::<IpAddr>().is_err() {
            return Err(format!(
                "\"{entry}\": ports do not belong in host patterns; use a `ports` condition"
            ));
        }
        let host = parse_host(host_text).map_err(|e| format!("\"{entry}\": {e}"))?;
        let path = match path_part {
            None | Some("/") => None,
            Some(p) => Some(PathPattern::new(p)),
        };
        Ok(Pattern::Host { host, mode, path })
    }
}

/// A host (normalised) and an optional path restriction from a category file.
pub(crate) type CategoryEntry<'a> = (Cow<'a, str>, Option<PathPattern>);

/// Parses one line of a category or hosts file. Returns `Ok(None)` for blank lines,
/// comments and the `localhost` style entries of hosts files.
pub(crate) fn parse_category_line(line: &str) -> Result<Option<CategoryEntry<'_>>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut fields = line.split_whitespace();
    let first = fields.next().unwrap_or("");
    // hosts-file format: "<address> <name> [<name>...]"; the address is ignored.
    let name = if first.parse::<IpAddr>().is_ok() {
        match fields.next() {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        first
    };
    if matches!(
        name,
        "localhost"
            | "localhost.localdomain"
            | "local"
            | "broadcasthost"
            | "ip6-localhost"
            | "ip6-loopback"
            | "0.0.0.0"
    ) {
        return Ok(None);
    }
    let name = name
        .strip_prefix("*.")
        .or_else(|| name.strip_prefix('.'))
        .unwrap_or(name);
    let (host, path) = match name.find('/') {
        Some(i) => (&name[..i], Some(&name[i..])),
        None => (name, None),
    };
    let host = parse_host_cow(host)?;
    let path = match path {
        None | Some("/") => None,
        Some(p) => Some(PathPattern::new(p)),
    };
    Ok(Some((host, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_strips_dot_and_encodes_idn() {
        assert_eq!(normalize_host("WWW.Example.COM."), "www.example.com");
        assert_eq!(normalize_host("bücher.example"), "xn--bcher-kva.example");
        assert!(matches!(normalize_host("plain.example"), Cow::Borrowed(_)));
        assert_eq!(normalize_host("[::1]"), "::1");
    }

    #[test]
    fn pattern_modes_follow_leading_syntax() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(matches!(
            p("a.example"),
            Pattern::Host {
                mode: DomainMode::Exact,
                ..
            }
        ));
        assert!(matches!(
            p("*.a.example"),
            Pattern::Host {
                mode: DomainMode::Subdomains,
                ..
            }
        ));
        assert!(matches!(
            p(".a.example"),
            Pattern::Host {
                mode: DomainMode::DomainAndSubdomains,
                ..
            }
        ));
        assert!(matches!(p("10.0.0.0/8"), Pattern::Cidr(_)));
        match p("https://Press.Example.org/releases/*") {
            Pattern::Host { host, path, .. } => {
                assert_eq!(host, "press.example.org");
                assert!(path.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pattern_rejects_inner_wildcards_ports_and_bad_characters() {
        assert!(Pattern::parse("a.*.example")
            .unwrap_err()
            .contains("first label"));
        assert!(Pattern::parse("a.example:443")
            .unwrap_err()
            .contains("ports"));
        assert!(Pattern::parse("a b.example").is_err());
        assert!(Pattern::parse("ftp://a.example").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a..example").is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn host() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,6}", 1..5).prop_map(|l| l.join("."))
        }

        proptest! {
            #[test]
            fn normalisation_is_idempotent_and_ignores_case_and_trailing_dot(h in host()) {
                let once = normalize_host(&h).into_owned();
                prop_assert_eq!(normalize_host(&once).into_owned(), once.clone());
                prop_assert_eq!(normalize_host(&h.to_uppercase()).into_owned(), once.clone());
                prop_assert_eq!(normalize_host(&format!("{h}.")).into_owned(), once);
            }

            #[test]
            fn parsed_patterns_store_the_normalised_host(h in host()) {
                match Pattern::parse(&format!("*.{h}")) {
                    Ok(Pattern::Host { host, mode, path }) => {
                        prop_assert_eq!(host, normalize_host(&h).into_owned());
                        prop_assert_eq!(mode, DomainMode::Subdomains);
                        prop_assert!(path.is_none());
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }

            #[test]
            fn pattern_parsing_never_panics(s in "\\PC{0,40}") {
                let _ = Pattern::parse(&s);
                let _ = parse_category_line(&s);
                let _ = normalize_host(&s);
            }
        }
    }

    #[test]
    fn category_lines_accept_domains_hosts_format_and_urls() {
        assert_eq!(parse_category_line("# c").unwrap(), None);
        assert_eq!(
            parse_category_line("0.0.0.0 Ads.Example # tracker").unwrap(),
            Some((Cow::Borrowed("ads.example"), None))
        );
        assert_eq!(parse_category_line("127.0.0.1 localhost").unwrap(), None);
        let (h, p) = parse_category_line("news.example/politics")
            .unwrap()
            .unwrap();
        assert_eq!(h, "news.example");
        assert!(p.is_some());
    }
}
