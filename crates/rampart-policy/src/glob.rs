//! Wildcard matching for URL paths and process names.

/// A `*`/`?` wildcard pattern. `case_insensitive` compares ASCII letters without case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    case_insensitive: bool,
}

impl Glob {
    pub fn new(pattern: &str, case_insensitive: bool) -> Self {
        Glob {
            pattern: pattern.into(),
            case_insensitive,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn is_match(&self, text: &str) -> bool {
        wildcard_match(
            self.pattern.as_bytes(),
            text.as_bytes(),
            self.case_insensitive,
        )
    }
}

/// A path restriction of a URL list entry: a prefix (`/docs`) or a glob (`/a/*/b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: Box<str>,
    wildcard: bool,
}

impl PathPattern {
    pub fn new(text: &str) -> Self {
        PathPattern {
            text: text.into(),
            wildcard: text.contains('*') || text.contains('?'),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Matches the path of a request (the query string is ignored). A pattern without
    /// wildcards is a prefix that ends at a segment boundary: `/docs` matches `/docs`
    /// and `/docs/x`, not `/docsearch`.
    pub fn is_match(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = if path.is_empty() { "/" } else { path };
        if self.wildcard {
            return wildcard_match(self.text.as_bytes(), path.as_bytes(), false);
        }
        let prefix = &*self.text;
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Iterative wildcard matching with backtracking to the last `*` (linear in practice,
/// never recursive, so hostile patterns cannot overflow the stack).
fn wildcard_match(pattern: &[u8], text: &[u8], ci: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if ci {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len()
            && (pattern[p] == b'?' || (pattern[p] != b'*' && eq(pattern[p], text[t])))
        {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let g = Glob::new("python3*", true);
        assert!(g.is_match("python3.12"));
        assert!(g.is_match("Python3"));
        assert!(!g.is_match("python2"));
        assert!(Glob::new("p?p", false).is_match("pip"));
        assert!(Glob::new("*a*b*", false).is_match("xxaxxbxx"));
        assert!(!Glob::new("*a*b", false).is_match("xxaxxbxxc"));
    }

    #[test]
    fn path_prefix_stops_at_segment_boundary() {
        let p = PathPattern::new("/docs");
        assert!(p.is_match("/docs"));
        assert!(p.is_match("/docs/a?x=1"));
        assert!(!p.is_match("/docsearch"));
        assert!(PathPattern::new("/docs/").is_match("/docs/x"));
    }

    #[test]
    fn path_glob_ignores_query() {
        let p = PathPattern::new("/releases/*");
        assert!(p.is_match("/releases/2024/a.html?utm=x"));
        assert!(!p.is_match("/blog/releases/x"));
    }
}
