//! Shell-style glob matching (`*` any run of characters, `?` one character) used for
//! process names, executable paths and host patterns in steering exceptions.

/// A compiled glob. Matching is ASCII case-insensitive when built with `case_insensitive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    case_insensitive: bool,
}

impl Glob {
    /// A case-sensitive glob. Steering exceptions use [`Glob::new_case_insensitive`] for
    /// every list, because the policy they come from ignores case.
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.chars().collect(),
            case_insensitive: false,
        }
    }

    /// An ASCII case-insensitive glob: host names, and process names and executable
    /// paths (the policy's `processes` condition ignores case, and the agent must
    /// decide like the gateway does).
    pub fn new_case_insensitive(pattern: &str) -> Self {
        Glob {
            pattern: pattern.to_ascii_lowercase().chars().collect(),
            case_insensitive: true,
        }
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = if self.case_insensitive {
            text.to_ascii_lowercase().chars().collect()
        } else {
            text.chars().collect()
        };
        // Iterative wildcard matching with single backtrack point: linear in practice,
        // never exponential, no recursion on untrusted input.
        let p = &self.pattern;
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == text[ti]) {
                ti += 1;
                pi += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == '*' {
            pi += 1;
        }
        pi == p.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_versioned_python_names() {
        let g = Glob::new("python3*");
        assert!(g.matches("python3"));
        assert!(g.matches("python3.12"));
        assert!(!g.matches("python2.7"));
        assert!(!g.matches("ipython3"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        let g = Glob::new("pip?");
        assert!(g.matches("pip3"));
        assert!(!g.matches("pip"));
        assert!(!g.matches("pip3.1"));
    }

    #[test]
    fn host_globs_ignore_ascii_case() {
        let g = Glob::new_case_insensitive("*.Dropbox.com");
        assert!(g.matches("api.dropbox.COM"));
        assert!(!g.matches("dropbox.com"));
    }

    #[test]
    fn stars_in_the_middle_backtrack_correctly() {
        let g = Glob::new("/usr/*/bin/*python*");
        assert!(g.matches("/usr/local/bin/python3.12"));
        assert!(!g.matches("/usr/local/lib/python3"));
        assert!(Glob::new("*").matches(""));
        assert!(!Glob::new("a*b").matches("aXbY"));
    }
}
