//! Isolation's errors: [`RuleError`] for an exception file (always with
//! `FILE:LINE:COL`), [`IsolationError`] for everything that touches the kernel or disk.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What is wrong at one place of an exception file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    #[error("unterminated string (add the closing \")")]
    UnterminatedString,
    #[error("unknown keyword \"{found}\"{}", did_you_mean(.suggestion))]
    UnknownKeyword {
        found: String,
        suggestion: Option<String>,
    },
    #[error("expected {expected}, found {found}")]
    Expected { expected: String, found: String },
    #[error(
        "a port needs a protocol with ports (add `proto tcp` or `proto udp` before `from`/`to`)"
    )]
    PortWithoutProto,
    #[error("proto {proto} has no ports (ports need `proto tcp` or `proto udp`)")]
    PortWithPortlessProto { proto: String },
    #[error("undefined macro ${name}{}", macro_hint(.suggestion))]
    UndefinedMacro {
        name: String,
        suggestion: Option<String>,
    },
    #[error("macro ${name} is already defined on line {first_line} (pick another name)")]
    MacroRedefined { name: String, first_line: usize },
    #[error("bad address \"{text}\": {reason}")]
    BadAddress { text: String, reason: String },
    #[error("bad port \"{text}\": {reason}")]
    BadPort { text: String, reason: String },
    #[error("{what} is {actual} but the rule says {declared} (remove `{declared}` or use {fix})")]
    FamilyMismatch {
        what: String,
        actual: &'static str,
        declared: &'static str,
        fix: &'static str,
    },
    #[error("this rule can never match: {reason}")]
    NeverMatches { reason: String },
    #[error("empty list (write at least one item between {{ and }}, or `any`)")]
    EmptyList,
    #[error("{what} is not supported in isolation exceptions ({hint})")]
    Unsupported { what: String, hint: String },
    #[error("{what} given twice in one rule (keep one)")]
    Duplicate { what: &'static str },
    #[error("macro expands to more than {limit} tokens (split the list)")]
    MacroTooLarge { limit: usize },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean \"{s}\"?)"),
        None => String::new(),
    }
}

fn macro_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean ${s}?)"),
        None => " (define it before use: name = \"203.0.113.2\")".to_string(),
    }
}

/// One error in an exception file, displayed as `FILE:LINE:COL: message (hint)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub kind: RuleErrorKind,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.kind)
    }
}

impl std::error::Error for RuleError {}

/// Every error found in a file (the parser resumes at the next line after an error, so
/// one run reports them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl RuleErrors {
    pub fn first(&self) -> Option<&RuleError> {
        self.0.first()
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Failures of applying, reading back, persisting or releasing isolation.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The exception rules are invalid; nothing was changed.
    #[error("{0}")]
    Rules(#[from] RuleErrors),
    #[error("cannot read exception file {path}: {source}")]
    RulesRead { path: PathBuf, source: io::Error },
    /// A helper program could not be started at all.
    #[error("cannot run `{program}` (install the Debian package `{package}`): {source}")]
    Spawn {
        program: String,
        package: &'static str,
        source: io::Error,
    },
    /// `nft` refused the batch; the kernel state is unchanged (batches are atomic).
    #[error("nft could not {action} table inet rampart_isolate: {stderr}")]
    Nft {
        action: &'static str,
        stderr: String,
    },
    /// `nft -j list` printed something that is not the JSON we expect.
    #[error("cannot read back table inet rampart_isolate: {0}")]
    ReadBack(String),
    /// `conntrack` failed to list or delete flows.
    #[error("conntrack could not {action}: {stderr}")]
    Conntrack {
        action: &'static str,
        stderr: String,
    },
    /// The persisted desired state could not be read or written.
    #[error("cannot {action} isolation state {path}: {source}")]
    StateIo {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "isolation state {path} is invalid: {message} (delete it to forget the desired state)"
    )]
    StateInvalid { path: PathBuf, message: String },
    /// The post-apply self-test could not reach the server; isolation stays applied.
    #[error("self-test: no server address reachable ({tried}): {last} (isolation stays applied)")]
    SelfTest { tried: String, last: String },
    /// The spec keeps nothing reachable, which would cut the management channel.
    #[error("isolation spec names no server or gateway address (refusing to cut the management channel)")]
    NoKeptAddress,
}
