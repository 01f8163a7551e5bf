//! What evaluation returns: a decision per stage, with the rule and the matched
//! objects that explain it, ready to be recorded in events.

use std::fmt;
use std::sync::Arc;

use crate::action::{AccessAction, DecryptionAction, Egress, EvalPoint, Stage, SteeringAction};

/// The kind of a matched object or condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    User,
    Group,
    Device,
    Network,
    Process,
    Category,
    CustomCategory,
    App,
    List,
    /// A rule's inline `hosts`.
    Hosts,
    Port,
    Method,
    FileType,
    /// An inspection verdict (`malicious`, `encrypted`...).
    Verdict,
    /// A DLP profile that found sensitive data.
    Dlp,
    Direction,
    /// The size of the body in bytes.
    Size,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::User => "user",
            ObjectKind::Group => "group",
            ObjectKind::Device => "device",
            ObjectKind::Network => "network",
            ObjectKind::Process => "process",
            ObjectKind::Category => "category",
            ObjectKind::CustomCategory => "custom-category",
            ObjectKind::App => "app",
            ObjectKind::List => "list",
            ObjectKind::Hosts => "hosts",
            ObjectKind::Port => "port",
            ObjectKind::Method => "method",
            ObjectKind::FileType => "file-type",
            ObjectKind::Verdict => "verdict",
            ObjectKind::Dlp => "dlp",
            ObjectKind::Direction => "direction",
            ObjectKind::Size => "size",
        }
    }
}

/// One object or condition value that made a rule match, e.g. `category news`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchedObject {
    pub kind: ObjectKind,
    pub name: Arc<str>,
}

impl fmt::Display for MatchedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// The decision of one stage: which rule (or the stage default) decided what, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<A> {
    pub stage: Stage,
    pub rule_id: Arc<str>,
    pub rule_name: Arc<str>,
    pub action: A,
    /// The values of the rule's `when` conditions that this flow met.
    pub matched: Vec<MatchedObject>,
    /// True when no rule matched and the stage default applied.
    pub default: bool,
}

/// A stage's outcome at an evaluation point: decided, or waiting for a fact that is
/// only known later (the first rule that could still match needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<A> {
    Decided(Decision<A>),
    Pending {
        stage: Stage,
        until: EvalPoint,
        rule_id: Arc<str>,
        rule_name: Arc<str>,
    },
}

impl<A> Outcome<A> {
    pub fn decided(&self) -> Option<&Decision<A>> {
        match self {
            Outcome::Decided(d) => Some(d),
            Outcome::Pending { .. } => None,
        }
    }
}

/// Connection-stage verdict: decryption is always decided here; access and egress
/// unless a rule needs the URL or method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionVerdict {
    pub decryption: Decision<DecryptionAction>,
    pub access: Outcome<AccessAction>,
    pub egress: Outcome<Egress>,
    /// Access rules passed over because they need facts this flow will never
    /// have (the URL of a tunnel that is not decrypted), by name.
    pub skipped: Vec<Arc<str>>,
}

/// Request-stage verdict. Access stays pending only for rules on file types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVerdict {
    pub access: Outcome<AccessAction>,
    pub egress: Decision<Egress>,
    /// Access rules passed over because they need facts this flow will never
    /// have (a file type on a flow that is not inspected), by name.
    pub skipped: Vec<Arc<str>>,
}

/// The agent's steering verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringVerdict {
    pub action: SteeringAction,
    /// Whether the agent records the connection (bypassed flows with `log = false` are not).
    pub log: bool,
    pub decision: Decision<SteeringAction>,
}
