//! Diagnostics: every problem found in a policy, with file:line:column and a fix.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// How bad a diagnostic is: errors reject the policy, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A place in a policy source file (1-based line and column, counted in characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem in a policy. Displays as `file:line:col: message (did you mean "x"?)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// A replacement the user probably meant (shown as "did you mean").
    pub suggestion: Option<String>,
}

impl Diagnostic {
    pub fn error(loc: &Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, loc, message)
    }

    pub fn warning(loc: &Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, loc, message)
    }

    fn new(severity: Severity, loc: &Location, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            file: loc.file.clone(),
            line: loc.line,
            column: loc.column,
            message: message.into(),
            suggestion: None,
        }
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean \"{s}\"?)")?;
        }
        Ok(())
    }
}

/// A policy that cannot be used. Holds every diagnostic found (errors and warnings),
/// so a reloading gateway can log them all and keep serving the previous policy.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(f, "policy has {n} error{}", if n == 1 { "" } else { "s" })?;
        for d in self.errors() {
            write!(f, "\n{d}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets of one source text into locations.
#[derive(Debug, Clone)]
pub(crate) struct SourceMap {
    file: Arc<str>,
    line_starts: Vec<usize>,
    text: Arc<str>,
}

impl SourceMap {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap {
            file: Arc::from(file),
            line_starts,
            text: Arc::from(text),
        }
    }

    pub(crate) fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        // An error at the end of a CRLF line points at its `\n`: the `\r` before it
        // is part of the line ending, not a column an editor shows.
        let at_newline = self.text.as_bytes().get(offset) == Some(&b'\n');
        let column = self
            .text
            .get(start..offset)
            .map(|s| match s.strip_suffix('\r') {
                Some(before_cr) if at_newline => before_cr.chars().count(),
                _ => s.chars().count(),
            })
            .unwrap_or(0);
        Location {
            file: self.file.clone(),
            line: line as u32 + 1,
            column: column as u32 + 1,
        }
    }

    pub(crate) fn locate_span(&self, span: &Range<usize>) -> Location {
        self.locate(span.start)
    }
}

/// The closest candidate to `wanted` by edit distance, if it is close enough to be a typo.
pub(crate) fn suggest<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let wanted_l = wanted.to_ascii_lowercase();
    let limit = (wanted.chars().count() / 3).clamp(1, 4);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&wanted_l, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c.to_string())
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters_from_one() {
        let map = SourceMap::new("p.toml", "a = 1\nbé = \"x\"\n");
        let loc = map.locate(12);
        assert_eq!((loc.line, loc.column), (2, 6));
        assert_eq!(map.locate(0).to_string(), "p.toml:1:1");
    }

    #[test]
    fn the_end_of_a_crlf_line_is_one_past_its_last_character() {
        let map = SourceMap::new("p.toml", "\"\r\nx");
        let loc = map.locate(2);
        assert_eq!((loc.line, loc.column), (1, 2));
        assert_eq!((map.locate(3).line, map.locate(3).column), (2, 1));
    }

    #[test]
    fn suggestion_finds_typo_and_ignores_unrelated_names() {
        let names = ["press-allowed", "partner-portals"];
        assert_eq!(
            suggest("press-alowed", names).as_deref(),
            Some("press-allowed")
        );
        assert_eq!(suggest("gambling", names), None);
    }

    #[test]
    fn transposition_counts_as_one_edit() {
        assert_eq!(edit_distance("nwes", "news"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn diagnostic_display_has_place_message_and_suggestion() {
        let loc = Location {
            file: Arc::from("policy.toml"),
            line: 41,
            column: 9,
        };
        let d = Diagnostic::error(&loc, "unknown list \"press-alowed\"")
            .with_suggestion(Some("press-allowed".into()));
        assert_eq!(
            d.to_string(),
            "policy.toml:41:9: unknown list \"press-alowed\" (did you mean \"press-allowed\"?)"
        );
    }
}
