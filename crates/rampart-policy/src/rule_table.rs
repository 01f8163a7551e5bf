//! The compiled rules as rows a person reads: per stage, in evaluation order, each
//! with its conditions in words, its action, and the point of the flow where it can
//! first be decided (what the console's policy page and `policy show`-like views print).

use std::sync::Arc;

use crate::action::{EvalPoint, Stage};
use crate::diagnostic::Location;
use crate::policy::{Policy, CATALOG_ORIGIN};
use crate::rule::{Conds, RuleAction};

/// One rule of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub stage: Stage,
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub description: Option<Arc<str>>,
    pub disabled: bool,
    /// One entry per condition kind the rule uses, e.g. `group engineering, group ops`.
    pub when: Vec<String>,
    /// The `unless` conditions, in the same form; empty without `unless`.
    pub unless: Vec<String>,
    /// `block`, `decrypt`, `via corp-proxies`...
    pub action: String,
    pub log: bool,
    /// The earliest point of a flow at which every condition is known: `connection`
    /// (identity, destination, port, process), `request` (method) or `response`
    /// (file type, verdicts, DLP, direction, size).
    pub decided_at: EvalPoint,
    pub location: Location,
    /// Added by Rampart itself (the app catalog), not written in the policy.
    pub built_in: bool,
}

/// A stage's default: what applies when no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDefault {
    pub stage: Stage,
    pub action: String,
    pub log: bool,
}

fn action_text(action: &RuleAction) -> String {
    match action {
        RuleAction::Steering(a) => a.to_string(),
        RuleAction::Decryption(a) => a.to_string(),
        RuleAction::Access(a) => a.to_string(),
        RuleAction::Egress(a) => a.to_string(),
    }
}

fn decided_at(c: &Conds) -> EvalPoint {
    if !c.file_types.is_empty()
        || !c.verdicts.is_empty()
        || !c.dlp.is_empty()
        || c.direction.is_some()
        || c.size.is_some()
    {
        EvalPoint::Response
    } else if !c.methods.is_empty() {
        EvalPoint::Request
    } else {
        EvalPoint::Connection
    }
}

impl Policy {
    fn conditions(&self, c: &Conds) -> Vec<String> {
        Conds::KINDS
            .iter()
            .map(|kind| self.describe(c, *kind))
            .filter(|text| !text.is_empty())
            .collect()
    }

    /// Every rule, stage by stage (steering, decryption, access, egress), each stage
    /// in the order its rules are tried.
    pub fn rule_table(&self) -> Vec<RuleRow> {
        Stage::ALL
            .iter()
            .flat_map(|stage| self.stage(*stage).rules.iter().map(move |r| (*stage, r)))
            .map(|(stage, r)| {
                let unless_point = r.unless.as_ref().map_or(EvalPoint::Connection, decided_at);
                RuleRow {
                    stage,
                    id: r.id.clone(),
                    name: r.name.clone(),
                    description: r.description.clone(),
                    disabled: r.disabled,
                    when: self.conditions(&r.when),
                    unless: r
                        .unless
                        .as_ref()
                        .map(|u| self.conditions(u))
                        .unwrap_or_default(),
                    action: action_text(&r.action),
                    log: r.log,
                    decided_at: decided_at(&r.when).max(unless_point),
                    location: r.loc.clone(),
                    built_in: &*r.loc.file == CATALOG_ORIGIN,
                }
            })
            .collect()
    }

    /// Each stage's default action.
    pub fn stage_defaults(&self) -> Vec<StageDefault> {
        Stage::ALL
            .iter()
            .map(|stage| {
                let set = self.stage(*stage);
                StageDefault {
                    stage: *stage,
                    action: action_text(&set.default),
                    log: set.default_log,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_per_stage_with_conditions_action_and_decision_point() {
        let text = r#"
[lists]
blocked = ["blocked.test"]

[[access]]
id = "no-uploads"
name = "no uploads for contractors"
when = { groups = ["contractors"], methods = ["POST"] }
action = "block"

[[access]]
id = "block-list"
name = "blocked hosts"
when = { lists = ["blocked"] }
unless = { users = ["alice"] }
action = "alert"
"#;
        let (policy, _) =
            Policy::from_str(text, "policy.toml", std::path::Path::new(".")).expect("policy");
        let rows: Vec<RuleRow> = policy
            .rule_table()
            .into_iter()
            .filter(|r| !r.built_in)
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].stage, Stage::Access);
        assert_eq!(&*rows[0].id, "no-uploads");
        assert_eq!(rows[0].when, ["group contractors", "method POST"]);
        assert_eq!(rows[0].action, "block");
        assert_eq!(rows[0].decided_at, EvalPoint::Request);
        assert_eq!(rows[1].when, ["list blocked"]);
        assert_eq!(rows[1].unless, ["user alice"]);
        assert_eq!(rows[1].decided_at, EvalPoint::Connection);
        assert_eq!(rows[1].location.line, 11);
        let access = policy
            .stage_defaults()
            .into_iter()
            .find(|d| d.stage == Stage::Access)
            .expect("access default");
        assert_eq!(access.action, "allow");
    }
}
