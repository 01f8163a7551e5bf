//! Host patterns used by the do-not-decrypt list, certificate exceptions and bypass guards.
//!
//! Three forms, all case-insensitive, a trailing dot on the host ignored:
//! - `example.com`: exactly that host;
//! - `*.example.com`: any subdomain of example.com, not example.com itself;
//! - `.example.com`: example.com and every subdomain.
//!
//! IP addresses match only the exact form `192.0.2.1` / `2001:db8::1`.
use crate::TlsError;
use std::fmt;

/// One parsed host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case domain without the leading `*.` or `.`.
    domain: String,
    kind: PatternKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    Exact,
    Subdomains,
    DomainAndSubdomains,
}

impl HostPattern {
    /// Parses a pattern; `field` names the configuration key in errors.
    pub fn parse(field: &'static str, pattern: &str) -> Result<Self, TlsError> {
        let invalid = |reason: &str| TlsError::InvalidPattern {
            field,
            pattern: pattern.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = pattern.trim();
        let (kind, rest) = if let Some(rest) = trimmed.strip_prefix("*.") {
            (PatternKind::Subdomains, rest)
        } else if let Some(rest) = trimmed.strip_prefix('.') {
            (PatternKind::DomainAndSubdomains, rest)
        } else {
            (PatternKind::Exact, trimmed)
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err(invalid("empty domain"));
        }
        if rest.contains('*') {
            return Err(invalid(
                "`*` is only allowed as the whole first label, as in `*.example.com`",
            ));
        }
        if kind != PatternKind::Exact && rest.parse::<std::net::IpAddr>().is_ok() {
            return Err(invalid("wildcards apply to domain names, not IP addresses"));
        }
        let is_ip = rest.parse::<std::net::IpAddr>().is_ok();
        if !is_ip {
            for label in rest.split('.') {
                if label.is_empty() {
                    return Err(invalid("empty label (two dots in a row)"));
                }
                if label.len() > 63 {
                    return Err(invalid("a label is longer than 63 characters"));
                }
                if !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(invalid(
                        "only letters, digits, `-` and `_` are allowed (write IDNs in punycode, xn--...)",
                    ));
                }
            }
        }
        Ok(HostPattern {
            domain: rest.to_ascii_lowercase(),
            kind,
        })
    }

    /// Whether `host` (any case, optional trailing dot, IPv6 optionally in brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalise_host(host);
        let domain = self.domain.as_str();
        match self.kind {
            PatternKind::Exact => host.eq_ignore_ascii_case(domain),
            PatternKind::Subdomains => is_strict_subdomain(host, domain),
            PatternKind::DomainAndSubdomains => {
                host.eq_ignore_ascii_case(domain) || is_strict_subdomain(host, domain)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PatternKind::Exact => write!(f, "{}", self.domain),
            PatternKind::Subdomains => write!(f, "*.{}", self.domain),
            PatternKind::DomainAndSubdomains => write!(f, ".{}", self.domain),
        }
    }
}

fn normalise_host(host: &str) -> &str {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn is_strict_subdomain(host: &str, domain: &str) -> bool {
    host.len() > domain.len() + 1
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
}

/// An ordered list of patterns; the first match is reported.
#[derive(Debug, Clone, Default)]
pub struct HostPatternSet {
    patterns: Vec<HostPattern>,
}

impl HostPatternSet {
    /// Parses every pattern, failing on the first malformed one.
    pub fn parse<S: AsRef<str>>(field: &'static str, patterns: &[S]) -> Result<Self, TlsError> {
        let patterns = patterns
            .iter()
            .map(|p| HostPattern::parse(field, p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostPatternSet { patterns })
    }

    /// The first pattern matching `host`.
    pub fn find(&self, host: &str) -> Option<&HostPattern> {
        self.patterns.iter().find(|p| p.matches(host))
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse("test", s).unwrap()
    }

    #[test]
    fn exact_pattern_matches_only_that_host_case_insensitively() {
        assert!(p("Example.com").matches("example.COM"));
        assert!(p("example.com").matches("example.com."));
        assert!(!p("example.com").matches("www.example.com"));
        assert!(!p("example.com").matches("badexample.com"));
    }

    #[test]
    fn star_pattern_matches_subdomains_but_not_apex() {
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("notexample.com"));
    }

    #[test]
    fn dot_pattern_matches_apex_and_subdomains() {
        assert!(p(".example.com").matches("example.com"));
        assert!(p(".example.com").matches("x.example.com"));
        assert!(!p(".example.com").matches("xexample.com"));
    }

    #[test]
    fn ip_pattern_matches_bracketed_ipv6() {
        assert!(p("2001:db8::1").matches("[2001:db8::1]"));
        assert!(p("192.0.2.1").matches("192.0.2.1"));
    }

    #[test]
    fn malformed_patterns_name_field_and_reason() {
        let err = HostPattern::parse("tls.do_not_decrypt", "exa*mple.com").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("tls.do_not_decrypt: invalid host pattern"),
            "{msg}"
        );
        assert!(msg.contains("`*` is only allowed"), "{msg}");
        assert!(HostPattern::parse("f", "").is_err());
        assert!(HostPattern::parse("f", "a..b").is_err());
        assert!(HostPattern::parse("f", "*.10.0.0.1").is_err());
        assert!(HostPattern::parse("f", "bad host.com").is_err());
    }

    #[test]
    fn set_reports_first_matching_pattern() {
        let set = HostPatternSet::parse("f", &["a.com", ".b.com", "*.b.com"]).unwrap();
        assert_eq!(set.find("x.b.com").unwrap().to_string(), ".b.com");
        assert!(set.find("c.com").is_none());
    }
}
