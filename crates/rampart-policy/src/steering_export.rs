//! The steering stage as the agent evaluates it: the `[[steering]]` rules that apply
//! to one device's identity, flattened into process globs, executable-path globs,
//! host patterns and ports. The agent has no policy engine; the server sends it this
//! export (`GET /api/v1/agent/config`).
//!
//! A rule whose conditions the agent cannot evaluate is left out with a reason:
//! source networks, `unless` clauses on anything but identity, CIDR destinations,
//! and destinations with more host patterns than `max_hosts` (large categories stay a
//! gateway-side matter).

use std::collections::HashMap;

use crate::action::{EvalPoint, Stage};
use crate::evaluate::steering_of;
use crate::facts::{ConnectionFacts, Identity, InspectionFacts};
use crate::policy::Policy;
use crate::rule::{CondKind, Conds, Ctx, Rule, Tri};
use crate::SteeringAction;

/// Port ranges wider than this are not expanded into single ports for the agent.
const MAX_PORTS: u32 = 256;

/// One steering rule in the agent's terms. Every non-empty list must match; within a
/// list any entry may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSteeringRule {
    pub id: String,
    pub name: String,
    /// Globs on the process name (`comm`).
    pub processes: Vec<String>,
    /// Globs on the executable path (policy process patterns containing `/`).
    pub paths: Vec<String>,
    /// `example.com` (exactly) or `*.example.com` (any subdomain).
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub action: SteeringAction,
    pub log: bool,
}

/// A rule that applies to the identity but that the agent cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSteeringRule {
    pub id: String,
    pub name: String,
    pub reason: String,
}

/// The steering stage for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringExport {
    pub rules: Vec<ExportedSteeringRule>,
    pub skipped: Vec<SkippedSteeringRule>,
    pub default: SteeringAction,
    pub default_log: bool,
}

impl Policy {
    /// The steering rules that apply to `identity` (user, groups, device), in order.
    /// Rules for other identities are left out silently; rules the agent cannot
    /// evaluate are listed in `skipped`. Walks the domain index once when a rule names
    /// destinations, so callers should cache the result per policy revision.
    pub fn steering_export(&self, identity: &Identity, max_hosts: usize) -> SteeringExport {
        let facts = ConnectionFacts {
            identity,
            process: None,
            host: None,
            dst_ip: None,
            port: 0,
        };
        let ctx = self.context(
            &facts,
            None,
            None,
            InspectionFacts::default(),
            EvalPoint::Connection,
        );
        let set = self.stage(Stage::Steering);
        let mut rules = Vec::new();
        let mut skipped = Vec::new();
        let mut wanted: Vec<(usize, Vec<u32>)> = Vec::new();
        for rule in set.rules.iter().filter(|r| !r.disabled) {
            match self.export_rule(rule, &ctx, max_hosts) {
                Ok(None) => {}
                Ok(Some((exported, objects))) => {
                    if !objects.is_empty() {
                        wanted.push((rules.len(), objects));
                    }
                    rules.push(exported);
                }
                Err(reason) => skipped.push(SkippedSteeringRule {
                    id: rule.id.to_string(),
                    name: rule.name.to_string(),
                    reason,
                }),
            }
        }
        self.fill_hosts(&mut rules, &wanted);
        SteeringExport {
            rules,
            skipped,
            default: steering_of(&set.default),
            default_log: set.default_log,
        }
    }

    /// `Ok(None)`: the rule is for someone else. `Ok(Some)`: the rule and the
    /// destination objects whose hosts it needs. `Err`: why the agent cannot use it.
    #[allow(clippy::type_complexity)]
    fn export_rule(
        &self,
        rule: &Rule,
        ctx: &Ctx<'_>,
        max_hosts: usize,
    ) -> Result<Option<(ExportedSteeringRule, Vec<u32>)>, String> {
        if !identity_matches(&rule.when, ctx) {
            return Ok(None);
        }
        if let Some(unless) = &rule.unless {
            if has_non_identity(unless) {
                return Err("`unless` on processes, destinations, networks or ports cannot be evaluated by the agent".into());
            }
            let kinds = [CondKind::Users, CondKind::Groups, CondKind::Devices];
            let constrained: Vec<Tri> = kinds
                .iter()
                .filter_map(|k| unless.eval_kind(*k, ctx))
                .collect();
            if !constrained.is_empty() && constrained.iter().all(|t| *t == Tri::Yes) {
                return Ok(None);
            }
        }
        let when = &rule.when;
        if !when.networks.is_empty() {
            return Err("source networks cannot be evaluated by the agent".into());
        }
        if !when.methods.is_empty() || !when.file_types.is_empty() {
            return Err("methods and file types are not known when steering".into());
        }
        let objects = self.expand_objects(&when.objects);
        if self.cidrs.iter().any(|(_, o)| objects.contains(o)) {
            return Err("CIDR destinations are not delivered to the agent".into());
        }
        let hosts: usize = objects
            .iter()
            .map(|o| self.objects[*o as usize].domains)
            .sum();
        if hosts > max_hosts {
            return Err(format!(
                "its destinations have {hosts} host patterns (the agent receives at most {max_hosts}); the gateway still applies its access rules"
            ));
        }
        let mut ports = Vec::new();
        for (a, b) in &when.ports {
            if u32::from(*b) - u32::from(*a) + 1 > MAX_PORTS {
                return Err(format!("port range {a}-{b} is too wide for the agent"));
            }
            ports.extend(*a..=*b);
        }
        let (paths, processes): (Vec<String>, Vec<String>) = when
            .processes
            .iter()
            .map(|g| g.as_str().to_string())
            .partition(|p| p.contains('/'));
        Ok(Some((
            ExportedSteeringRule {
                id: rule.id.to_string(),
                name: rule.name.to_string(),
                processes,
                paths,
                hosts: Vec::new(),
                ports,
                action: steering_of(&rule.action),
                log: rule.log,
            },
            if when.objects.is_empty() {
                Vec::new()
            } else {
                objects
            },
        )))
    }

    /// The objects a destination condition covers: the named ones and every object
    /// that has one of them as an ancestor (members of custom categories, apps of a
    /// category). Sorted.
    fn expand_objects(&self, named: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = (0..self.objects.len() as u32)
            .filter(|o| {
                named.contains(o)
                    || self.objects[*o as usize]
                        .ancestors
                        .iter()
                        .any(|a| named.contains(a))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// One walk over the domain index fills the host patterns of every rule that
    /// names destinations. Entries limited to paths never match when steering.
    fn fill_hosts(&self, rules: &mut [ExportedSteeringRule], wanted: &[(usize, Vec<u32>)]) {
        if wanted.is_empty() {
            return;
        }
        let mut by_object: HashMap<u32, Vec<usize>> = HashMap::new();
        for (rule, objects) in wanted {
            for o in objects {
                by_object.entry(*o).or_default().push(*rule);
            }
        }
        self.domains.for_each_entry(|domain, target, flags| {
            let Some(t) = self.targets.get(target as usize) else {
                return;
            };
            if t.path.is_some() {
                return;
            }
            let Some(rule_ids) = by_object.get(&t.object) else {
                return;
            };
            for r in rule_ids {
                let hosts = &mut rules[*r].hosts;
                if flags & crate::domain_index::MATCH_EXACT != 0 {
                    hosts.push(domain.to_string());
                }
                if flags & crate::domain_index::MATCH_SUBDOMAINS != 0 {
                    hosts.push(format!("*.{domain}"));
                }
            }
        });
        for (r, _) in wanted {
            let hosts = &mut rules[*r].hosts;
            hosts.sort();
            hosts.dedup();
        }
    }
}

fn identity_matches(when: &Conds, ctx: &Ctx<'_>) -> bool {
    [CondKind::Users, CondKind::Groups, CondKind::Devices]
        .iter()
        .all(|k| when.eval_kind(*k, ctx).is_none_or(|t| t == Tri::Yes))
}

fn has_non_identity(c: &Conds) -> bool {
    !c.networks.is_empty()
        || !c.processes.is_empty()
        || !c.objects.is_empty()
        || !c.ports.is_empty()
        || !c.methods.is_empty()
        || !c.file_types.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(src: &str) -> Policy {
        Policy::from_str(src, "policy.toml", Path::new("."))
            .expect("valid policy")
            .0
    }

    fn who(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: Some(user.into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            device: Some("dev-1".into()),
            source_ip: None,
        }
    }

    const SRC: &str = r#"
        [lists]
        pypi = ["pypi.org", "*.pythonhosted.org"]
        [apps.corpdrive]
        domains = ["*.corpdrive.example"]
        [[steering]]
        name = "python to pypi"
        when = { processes = ["python3*", "/usr/local/bin/pip*"], lists = ["pypi"] }
        action = "bypass"
        [[steering]]
        name = "eng only"
        when = { groups = ["eng"], hosts = ["eng.example"] }
        action = "block"
        log = false
        [[steering]]
        name = "pinned drive"
        when = { apps = ["corpdrive"], ports = ["443-444"] }
        action = "tunnel-bypass"
        [[steering]]
        name = "office only"
        when = { networks = ["10.0.0.0/8"], hosts = ["x.example"] }
        action = "bypass"
    "#;

    #[test]
    fn rules_become_globs_hosts_and_ports_in_order() {
        let export = policy(SRC).steering_export(&who("alice", &["eng"]), 1000);
        let names: Vec<&str> = export.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["python to pypi", "eng only", "pinned drive"]);
        let py = &export.rules[0];
        assert_eq!(py.processes, ["python3*"]);
        assert_eq!(py.paths, ["/usr/local/bin/pip*"]);
        assert_eq!(py.hosts, ["*.pythonhosted.org", "pypi.org"]);
        assert_eq!(py.action, SteeringAction::Bypass);
        assert!(py.log);
        assert!(!export.rules[1].log);
        assert_eq!(export.rules[2].hosts, ["*.corpdrive.example"]);
        assert_eq!(export.rules[2].ports, [443, 444]);
        assert_eq!(export.default, SteeringAction::Steer);
        assert_eq!(export.skipped.len(), 1);
        assert!(export.skipped[0].reason.contains("networks"));
    }

    #[test]
    fn rules_for_other_groups_are_left_out() {
        let export = policy(SRC).steering_export(&who("bob", &["sales"]), 1000);
        assert!(export.rules.iter().all(|r| r.name != "eng only"));
    }

    /// Every entry whose policy meaning is "the domain and its subdomains" must reach
    /// the agent as both `x` and `*.x`: the agent's host globs treat `*.x` as
    /// subdomains only, and the bare domain would otherwise be steered differently on
    /// the endpoint than the gateway decides it.
    #[test]
    fn domain_and_subdomain_entries_export_the_bare_domain_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("cats/filesharing")).expect("mkdir");
        std::fs::write(
            dir.path().join("cats/filesharing/domains"),
            "share.example\nupload.example/form\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("pastes.txt"), "paste.example\n").expect("write");
        let src = r#"
            [categories]
            load = ["cats/", "pastes.txt"]
            [lists]
            mixed = ["exact.example", "*.sub.example", ".both.example", "path.example/x"]
            [apps.corpdrive]
            domains = [".corpdrive.example", "api.corpdrive-cdn.example"]
            [[steering]]
            name = "list"
            when = { lists = ["mixed"] }
            action = "bypass"
            [[steering]]
            name = "inline"
            when = { hosts = [".inline.example", "only.example"] }
            action = "bypass"
            [[steering]]
            name = "catalog and policy apps"
            when = { apps = ["dropbox", "corpdrive"] }
            action = "tunnel-bypass"
            [[steering]]
            name = "category dir and plain file"
            when = { categories = ["filesharing", "pastes"] }
            action = "block"
        "#;
        let policy = Policy::from_str(src, "policy.toml", dir.path())
            .expect("valid policy")
            .0;
        let export = policy.steering_export(&who("alice", &[]), 1000);
        let hosts = |name: &str| -> Vec<String> {
            export
                .rules
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("rule {name} exported: {export:?}"))
                .hosts
                .clone()
        };
        // Lists: exact stays exact, `*.x` stays subdomains only, `.x` gives both, and
        // path entries never match when steering.
        assert_eq!(
            hosts("list"),
            [
                "*.both.example",
                "*.sub.example",
                "both.example",
                "exact.example"
            ]
        );
        assert_eq!(
            hosts("inline"),
            ["*.inline.example", "inline.example", "only.example"]
        );
        let apps = hosts("catalog and policy apps");
        for h in [
            "dropbox.com",
            "*.dropbox.com",
            "dropboxapi.com",
            "*.dropboxapi.com",
            "corpdrive.example",
            "*.corpdrive.example",
            "api.corpdrive-cdn.example",
        ] {
            assert!(apps.iter().any(|a| a == h), "{h} missing from {apps:?}");
        }
        assert!(!apps.iter().any(|a| a == "*.api.corpdrive-cdn.example"));
        // Category entries cover the domain and its subdomains; `urls`-style entries
        // with a path are left out.
        assert_eq!(
            hosts("category dir and plain file"),
            [
                "*.paste.example",
                "*.share.example",
                "paste.example",
                "share.example"
            ]
        );
    }

    #[test]
    fn destinations_over_the_limit_are_skipped_with_a_reason() {
        let export = policy(SRC).steering_export(&who("alice", &[]), 1);
        assert_eq!(export.rules.len(), 1, "{export:?}");
        assert_eq!(export.rules[0].name, "pinned drive");
        assert!(export
            .skipped
            .iter()
            .any(|s| s.name == "python to pypi" && s.reason.contains("host patterns")));
    }
}
