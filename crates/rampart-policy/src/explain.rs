//! Explanations: for one flow, what each stage decided, which rule did it, which
//! objects the destination belongs to, and which rules nearly matched.

use std::fmt;
use std::sync::Arc;

use crate::action::{EvalPoint, Stage};
use crate::diagnostic::Location;
use crate::domain::normalize_host;
use crate::evaluate::{access_of, decryption_of, egress_of, steering_of, Walk};
use crate::facts::{InspectionFacts, RequestFacts, ResponseFacts, SteeringFacts};
use crate::policy::Policy;
use crate::rule::{CondKind, Conds, Ctx, Rule, RuleAction, Tri};
use crate::verdict::{MatchedObject, ObjectKind};

/// An object the destination belongs to, and the entry that put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationMatch {
    pub object: MatchedObject,
    /// The domain suffix (and path pattern) that matched, or the containing object.
    pub via: String,
}

/// A rule that almost decided: one condition kind failed, or `unless` excluded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    pub rule_id: Arc<str>,
    pub rule_name: Arc<str>,
    pub location: Location,
    pub reason: String,
}

/// The decision of one stage and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageExplanation {
    pub stage: Stage,
    pub point: EvalPoint,
    pub action: String,
    pub rule_id: Arc<str>,
    pub rule_name: Arc<str>,
    pub location: Option<Location>,
    pub default: bool,
    pub description: Option<Arc<str>>,
    pub matched: Vec<MatchedObject>,
    pub near_misses: Vec<NearMiss>,
    /// How the stage looked earlier (e.g. access at the connection stage).
    pub note: Option<String>,
}

/// Everything `rampart policy explain` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub revision: String,
    pub host: Option<String>,
    pub destination: Vec<DestinationMatch>,
    pub stages: Vec<StageExplanation>,
}

const MAX_NEAR_MISSES: usize = 5;

impl Policy {
    /// Explains every stage for a request (steering too when a process is given).
    pub fn explain(&self, facts: &RequestFacts<'_>) -> Explanation {
        let conn = &facts.connection;
        let mut stages = Vec::new();
        if let Some(process) = conn.process {
            let sf = SteeringFacts {
                identity: conn.identity,
                process,
                host: conn.host,
                dst_ip: conn.dst_ip,
                port: conn.port,
            };
            let verdict = self.evaluate_steering(&sf);
            let mut ctx = self.context(
                conn,
                None,
                None,
                InspectionFacts::default(),
                EvalPoint::Connection,
            );
            ctx.pending.clear();
            let mut e =
                self.stage_explanation(Stage::Steering, EvalPoint::Connection, &ctx, steering_of);
            if !verdict.log {
                e.action.push_str(" (not logged)");
            }
            stages.push(e);
        }
        let conn_ctx = self.context(
            conn,
            None,
            None,
            InspectionFacts::default(),
            EvalPoint::Connection,
        );
        let mut dec_ctx = self.context(
            conn,
            None,
            None,
            InspectionFacts::default(),
            EvalPoint::Connection,
        );
        dec_ctx.pending.clear();
        dec_ctx.point = Some(EvalPoint::Response);
        stages.push(self.stage_explanation(
            Stage::Decryption,
            EvalPoint::Connection,
            &dec_ctx,
            decryption_of,
        ));
        let req_ctx = self.context(
            conn,
            Some(facts.path),
            Some(facts.method),
            InspectionFacts::default(),
            EvalPoint::Request,
        );
        for stage in [Stage::Access, Stage::Egress] {
            let of = if stage == Stage::Access {
                |a: &RuleAction| access_of(a).to_string()
            } else {
                |a: &RuleAction| egress_of(a).to_string()
            };
            let mut final_ctx = self.context(
                conn,
                Some(facts.path),
                Some(facts.method),
                InspectionFacts::default(),
                EvalPoint::Request,
            );
            if stage == Stage::Egress {
                final_ctx.point = Some(EvalPoint::Response);
            }
            let mut e = self.stage_explanation(stage, EvalPoint::Request, &final_ctx, of);
            let mut note = match self.walk(stage, &conn_ctx) {
                Walk::Pending(rule, until) => format!(
                    "undecided at the connection until the {until} (rule \"{}\" needs it)",
                    rule.name
                ),
                Walk::Rule(rule) => format!(
                    "decided at the connection: {} by rule \"{}\"",
                    of(&rule.action),
                    rule.name
                ),
                Walk::Default => format!(
                    "decided at the connection: {} by the {stage} default",
                    of(&self.stage(stage).default)
                ),
            };
            if stage == Stage::Access {
                // A tunnel that is not decrypted never shows its URL: rules on
                // the path or method are skipped, and the rest decides at once.
                let mut tunnel_ctx = self.context(
                    conn,
                    None,
                    None,
                    InspectionFacts::default(),
                    EvalPoint::Connection,
                );
                tunnel_ctx.last = Some(EvalPoint::Connection);
                let (action, by) = match self.walk(stage, &tunnel_ctx) {
                    Walk::Rule(rule) => (of(&rule.action), format!("rule \"{}\"", rule.name)),
                    _ => (
                        of(&self.stage(stage).default),
                        format!("the {stage} default"),
                    ),
                };
                note.push_str(&format!("; if not decrypted: {action} by {by}"));
                let skipped = self.skipped(stage, &tunnel_ctx);
                if !skipped.is_empty() {
                    let names: Vec<String> = skipped.iter().map(|n| format!("\"{n}\"")).collect();
                    note.push_str(&format!(
                        " (skipped, needs the URL or the body: {})",
                        names.join(", ")
                    ));
                }
            }
            if let Walk::Pending(rule, until) = self.walk(stage, &req_ctx) {
                note.push_str(&format!(
                    "; at the request, undecided until the {until} (rule \"{}\" needs the inspected body)",
                    rule.name
                ));
            }
            e.note = Some(note);
            stages.push(e);
        }
        Explanation {
            revision: self.revision.to_string(),
            host: conn.host.map(|h| normalize_host(h).into_owned()),
            destination: self.destination_matches(conn.host, Some(facts.path)),
            stages,
        }
    }

    /// [`Policy::explain`] plus the response stage: the final access decision
    /// with what inspection found (file type, verdicts, DLP profiles,
    /// direction, size) — what the gateway's response phase decides, for a
    /// download or (with direction upload) an upload.
    pub fn explain_response(&self, facts: &ResponseFacts<'_>) -> Explanation {
        let mut explanation = self.explain(&facts.request);
        let r = &facts.request;
        let mut ctx = self.context(
            &r.connection,
            Some(r.path),
            Some(r.method),
            facts.inspection,
            EvalPoint::Response,
        );
        ctx.last = Some(EvalPoint::Response);
        let of = |a: &RuleAction| access_of(a).to_string();
        let mut e = self.stage_explanation(Stage::Access, EvalPoint::Response, &ctx, of);
        e.note = Some(format!("with {}", describe_inspection(&facts.inspection)));
        explanation.stages.push(e);
        explanation
    }

    fn stage_explanation<A: fmt::Display>(
        &self,
        stage: Stage,
        point: EvalPoint,
        ctx: &Ctx<'_>,
        of: fn(&RuleAction) -> A,
    ) -> StageExplanation {
        let set = self.stage(stage);
        let (rule, default, pending) = match self.walk(stage, ctx) {
            Walk::Rule(r) => (Some(r), false, None),
            Walk::Pending(r, until) => (Some(r), false, Some(until)),
            Walk::Default => (None, true, None),
        };
        let upto = rule
            .and_then(|r| set.rules.iter().position(|x| std::ptr::eq(x, r)))
            .unwrap_or(set.rules.len());
        let near_misses = set.rules[..upto]
            .iter()
            .filter(|r| !r.disabled)
            .filter_map(|r| self.near_miss(r, ctx))
            .take(MAX_NEAR_MISSES)
            .collect();
        match rule {
            Some(r) => StageExplanation {
                stage,
                point,
                action: match pending {
                    Some(until) => format!(
                        "undecided until the {until} stage ({} if it matches)",
                        of(&r.action)
                    ),
                    None => of(&r.action).to_string(),
                },
                rule_id: r.id.clone(),
                rule_name: r.name.clone(),
                location: Some(r.loc.clone()),
                default,
                description: r.description.clone(),
                matched: self.matched(&r.when, ctx),
                near_misses,
                note: None,
            },
            None => StageExplanation {
                stage,
                point,
                action: of(&set.default).to_string(),
                rule_id: Arc::from("default"),
                rule_name: Arc::from(format!("{stage} default").as_str()),
                location: None,
                default,
                description: None,
                matched: Vec::new(),
                near_misses,
                note: None,
            },
        }
    }

    fn near_miss(&self, rule: &Rule, ctx: &Ctx<'_>) -> Option<NearMiss> {
        let constrained = Conds::KINDS
            .into_iter()
            .filter(|k| rule.when.eval_kind(*k, ctx).is_some())
            .count();
        let failed: Vec<CondKind> = Conds::KINDS
            .into_iter()
            .filter(|k| rule.when.eval_kind(*k, ctx) == Some(Tri::No))
            .collect();
        let reason = match failed.as_slice() {
            [] => match &rule.unless {
                Some(u) if u.eval(ctx) == Tri::Yes => {
                    let why: Vec<String> =
                        self.matched(u, ctx).iter().map(|m| m.to_string()).collect();
                    format!("excluded by `unless` ({})", why.join(", "))
                }
                _ => return None,
            },
            // A one-condition rule that fails is simply unrelated, not "nearly".
            [kind] if constrained >= 2 => format!(
                "only {} did not match: needs {}",
                kind.as_str(),
                self.describe(&rule.when, *kind)
            ),
            _ => return None,
        };
        Some(NearMiss {
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            location: rule.loc.clone(),
            reason,
        })
    }

    pub(crate) fn describe(&self, c: &Conds, kind: CondKind) -> String {
        let join = |v: Vec<String>| v.join(", ");
        match kind {
            CondKind::Users => join(
                c.users
                    .iter()
                    .map(|u| format!("user {}", self.users.names[*u as usize]))
                    .collect(),
            ),
            CondKind::Groups => join(
                c.groups
                    .iter()
                    .map(|g| format!("group {}", self.groups.names[*g as usize]))
                    .collect(),
            ),
            CondKind::Devices => join(
                c.devices
                    .iter()
                    .map(|d| format!("device {}", self.devices.names[*d as usize]))
                    .collect(),
            ),
            CondKind::Networks => join(
                c.networks
                    .iter()
                    .map(|(_, n)| format!("source in {n}"))
                    .collect(),
            ),
            CondKind::Processes => join(
                c.processes
                    .iter()
                    .map(|p| format!("process {}", p.as_str()))
                    .collect(),
            ),
            CondKind::Destination => join(
                c.objects
                    .iter()
                    .map(|o| {
                        let obj = &self.objects[*o as usize];
                        format!("{} {}", obj.kind.as_str(), obj.name)
                    })
                    .collect(),
            ),
            CondKind::Ports => join(
                c.ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            format!("port {a}")
                        } else {
                            format!("port {a}-{b}")
                        }
                    })
                    .collect(),
            ),
            CondKind::Methods => join(c.methods.iter().map(|m| format!("method {m}")).collect()),
            CondKind::FileTypes => join(
                c.file_types
                    .iter()
                    .map(|t| format!("file type {t}"))
                    .collect(),
            ),
            CondKind::Verdicts => join(c.verdicts.iter().map(|v| format!("verdict {v}")).collect()),
            CondKind::Dlp => join(c.dlp.iter().map(|p| format!("dlp {p}")).collect()),
            CondKind::Direction => c
                .direction
                .map(|d| format!("direction {d}"))
                .unwrap_or_default(),
            CondKind::Size => match c.size {
                Some((min, u64::MAX)) => format!("size at least {min} bytes"),
                Some((min, max)) => format!("size {min}-{max} bytes"),
                None => String::new(),
            },
        }
    }

    /// Calls `f(kind, name)` for each category, app and list the host belongs to
    /// (containing custom categories included), e.g. to record categories in events.
    /// Path-restricted entries are skipped. Does not allocate for normalised hosts.
    pub fn host_objects(&self, host: &str, mut f: impl FnMut(ObjectKind, &str)) {
        let host = normalize_host(host);
        self.domains.lookup(&host, |t, _| {
            let target = &self.targets[t as usize];
            if target.path.is_none() {
                let obj = &self.objects[target.object as usize];
                if obj.kind != ObjectKind::Hosts {
                    f(obj.kind, &obj.name);
                }
                for a in &obj.ancestors {
                    let anc = &self.objects[*a as usize];
                    f(anc.kind, &anc.name);
                }
            }
        });
    }

    /// Every object the destination belongs to, with the entry that matched.
    pub fn destination_matches(
        &self,
        host: Option<&str>,
        path: Option<&str>,
    ) -> Vec<DestinationMatch> {
        let mut out: Vec<DestinationMatch> = Vec::new();
        let Some(host) = host else { return out };
        let host = normalize_host(host);
        let mut direct: Vec<u32> = Vec::new();
        self.domains.lookup(&host, |t, suffix| {
            let target = &self.targets[t as usize];
            let (ok, via) = match (&target.path, path) {
                (None, _) => (true, suffix.to_string()),
                (Some(p), Some(path)) => (p.is_match(path), format!("{suffix}{}", p.as_str())),
                (Some(p), None) => (false, format!("{suffix}{}", p.as_str())),
            };
            if ok {
                let obj = &self.objects[target.object as usize];
                direct.push(target.object);
                out.push(DestinationMatch {
                    object: MatchedObject {
                        kind: obj.kind,
                        name: obj.name.clone(),
                    },
                    via,
                });
            }
        });
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            for (net, o) in &self.cidrs {
                if net.contains(&ip) {
                    let obj = &self.objects[*o as usize];
                    direct.push(*o);
                    out.push(DestinationMatch {
                        object: MatchedObject {
                            kind: obj.kind,
                            name: obj.name.clone(),
                        },
                        via: net.to_string(),
                    });
                }
            }
        }
        for o in direct {
            let child = &self.objects[o as usize];
            for a in &child.ancestors {
                let obj = &self.objects[*a as usize];
                let m = MatchedObject {
                    kind: obj.kind,
                    name: obj.name.clone(),
                };
                if !out.iter().any(|d| d.object == m) {
                    out.push(DestinationMatch {
                        object: m,
                        via: format!("contains {} {}", child.kind.as_str(), child.name),
                    });
                }
            }
        }
        out.retain(|d| d.object.kind != ObjectKind::Hosts);
        out
    }
}

/// The inspection facts in words, for the response stage's note.
fn describe_inspection(i: &InspectionFacts<'_>) -> String {
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "file type {}, verdicts {}, dlp {}, direction {}, size {}",
        i.file_type.unwrap_or("unknown"),
        list(i.verdicts),
        list(i.dlp),
        i.direction.map(|d| d.as_str()).unwrap_or("unknown"),
        i.size
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "unknown".into()),
    )
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "policy revision {}", self.revision)?;
        match &self.host {
            Some(h) => writeln!(f, "host {h}")?,
            None => writeln!(f, "host (none)")?,
        }
        if self.destination.is_empty() {
            writeln!(f, "destination: in no category, app or list")?;
        } else {
            writeln!(f, "destination:")?;
            for d in &self.destination {
                writeln!(f, "  {} (via {})", d.object, d.via)?;
            }
        }
        for s in &self.stages {
            writeln!(f)?;
            let how = if s.default {
                "no rule matched; stage default".to_string()
            } else {
                format!(
                    "rule \"{}\" (id {}{})",
                    s.rule_name,
                    s.rule_id,
                    s.location
                        .as_ref()
                        .map(|l| format!(", {l}"))
                        .unwrap_or_default()
                )
            };
            // The response stage repeats access with the inspected body's facts.
            let at = if s.point == EvalPoint::Response {
                " at the response"
            } else {
                ""
            };
            writeln!(f, "{}{at}: {} by {how}", s.stage, s.action)?;
            if let Some(d) = &s.description {
                writeln!(f, "  {d}")?;
            }
            if !s.matched.is_empty() {
                let m: Vec<String> = s.matched.iter().map(|m| m.to_string()).collect();
                writeln!(f, "  matched: {}", m.join(", "))?;
            }
            if let Some(note) = &s.note {
                writeln!(f, "  {note}")?;
            }
            for n in &s.near_misses {
                writeln!(
                    f,
                    "  nearly: rule \"{}\" ({}): {}",
                    n.rule_name, n.location, n.reason
                )?;
            }
        }
        Ok(())
    }
}
