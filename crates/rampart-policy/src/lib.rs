//! Rampart's policy engine: one declarative policy (TOML file or directory) with
//! identities, URL lists, categories, apps, and ordered `steering`, `decryption`,
//! `access` and `egress` rules, compiled into an immutable [`Policy`] that evaluates
//! without I/O and explains every decision.
//!
//! ```
//! use rampart_policy::{Policy, Identity, ConnectionFacts, RequestFacts, AccessAction};
//! use std::path::Path;
//!
//! let src = r#"
//!     [lists]
//!     news = ["*.news.example"]
//!     [[access]]
//!     name = "no news"
//!     when = { lists = ["news"] }
//!     action = "block"
//! "#;
//! let (policy, _warnings) = Policy::from_str(src, "policy.toml", Path::new(".")).unwrap();
//! let who = Identity::default();
//! let conn = ConnectionFacts { identity: &who, process: None, host: Some("www.news.example"), dst_ip: None, port: 443 };
//! let v = policy.evaluate_request(&RequestFacts { connection: conn, method: "GET", path: "/" });
//! assert_eq!(v.access.decided().unwrap().action, AccessAction::Block);
//! ```
//!
//! The user guide is `docs/policy.md`.

mod action;
mod cases;
mod category_source;
mod diagnostic;
mod domain;
mod domain_index;
mod evaluate;
mod explain;
mod facts;
mod glob;
mod model;
mod parser;
mod policy;
mod rule;
mod rule_table;
mod steering_export;
mod verdict;

pub use action::{AccessAction, DecryptionAction, Egress, EvalPoint, Stage, SteeringAction};
pub use cases::{parse_cases, split_url, Case, CaseFile, CaseResult, Expect, UrlParts};
pub use diagnostic::{Diagnostic, Location, PolicyError, Severity};
pub use domain::{normalize_host, DomainMode, Pattern};
pub use explain::{DestinationMatch, Explanation, NearMiss, StageExplanation};
pub use facts::{
    ConnectionFacts, Direction, Identity, InspectionFacts, Process, RequestFacts, ResponseFacts,
    SteeringFacts, VERDICTS,
};
pub use parser::parse_size as parse_byte_size;
pub use policy::{AppInfo, LoadOptions, Policy, PolicyStats, UpstreamGroup, UpstreamProxy};
pub use rule_table::{RuleRow, StageDefault};
pub use steering_export::{ExportedSteeringRule, SkippedSteeringRule, SteeringExport};
pub use verdict::{
    ConnectionVerdict, Decision, MatchedObject, ObjectKind, Outcome, RequestVerdict,
    SteeringVerdict,
};

#[cfg(test)]
mod tests;
