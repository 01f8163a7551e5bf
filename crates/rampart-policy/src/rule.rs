//! Compiled rules and their three-valued matching: a condition is met, not met, or
//! not yet decidable because the fact it needs (path, method, file type) comes later.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use crate::action::{AccessAction, DecryptionAction, Egress, EvalPoint, Stage, SteeringAction};
use crate::diagnostic::Location;
use crate::facts::{Direction, InspectionFacts, Process};
use crate::glob::Glob;

/// Result of matching a condition or rule against what is known so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tri {
    Yes,
    No,
    /// Cannot be decided before this evaluation point.
    Unknown(EvalPoint),
}

impl Tri {
    pub(crate) fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Unknown(a), Tri::Unknown(b)) => Tri::Unknown(a.max(b)),
            (Tri::Unknown(a), Tri::Yes) | (Tri::Yes, Tri::Unknown(a)) => Tri::Unknown(a),
            (Tri::Yes, Tri::Yes) => Tri::Yes,
        }
    }
}

/// The action a rule takes, typed by stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleAction {
    Steering(SteeringAction),
    Decryption(DecryptionAction),
    Access(AccessAction),
    Egress(Egress),
}

/// The kinds of condition, in the order explanations list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CondKind {
    Users,
    Groups,
    Devices,
    Networks,
    Processes,
    Destination,
    Ports,
    Methods,
    FileTypes,
    Verdicts,
    Dlp,
    Direction,
    Size,
}

impl CondKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CondKind::Users => "users",
            CondKind::Groups => "groups",
            CondKind::Devices => "devices",
            CondKind::Networks => "networks",
            CondKind::Processes => "processes",
            CondKind::Destination => "destination (categories, apps, lists, hosts)",
            CondKind::Ports => "ports",
            CondKind::Methods => "methods",
            CondKind::FileTypes => "file_types",
            CondKind::Verdicts => "verdicts",
            CondKind::Dlp => "dlp",
            CondKind::Direction => "direction",
            CondKind::Size => "size",
        }
    }
}

/// Compiled conditions. Kinds are ANDed; values within a kind are ORed; categories,
/// apps, lists and hosts together form one destination kind (the destination must
/// belong to any of them). An empty kind does not constrain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conds {
    pub users: Vec<u32>,
    pub groups: Vec<u32>,
    pub devices: Vec<u32>,
    pub networks: Vec<(u32, IpNet)>,
    pub processes: Vec<Glob>,
    /// Sorted object ids (categories, custom categories, apps, lists, inline hosts).
    pub objects: Vec<u32>,
    pub ports: Vec<(u16, u16)>,
    pub methods: Vec<Box<str>>,
    pub file_types: Vec<Box<str>>,
    /// Lowercase verdict names (validated against [`crate::VERDICTS`]).
    pub verdicts: Vec<Box<str>>,
    /// Lowercase DLP profile names.
    pub dlp: Vec<Box<str>>,
    pub direction: Option<Direction>,
    /// Inclusive byte bounds (an absent bound is 0 or `u64::MAX`).
    pub size: Option<(u64, u64)>,
}

/// What is known about a flow, resolved to policy ids.
#[derive(Debug, Default)]
pub(crate) struct Ctx<'a> {
    pub point: Option<EvalPoint>,
    pub user: Option<u32>,
    pub groups: SmallVec<[u32; 8]>,
    pub devices: SmallVec<[u32; 4]>,
    pub source_ip: Option<IpAddr>,
    pub process: Option<&'a Process>,
    /// Objects the destination surely belongs to (sorted, with parents).
    pub objects: SmallVec<[u32; 16]>,
    /// Objects the destination belongs to only if the path matches (path not known yet).
    pub pending: SmallVec<[u32; 8]>,
    pub port: Option<u16>,
    pub method: Option<&'a str>,
    /// The facts of the response point; all absent before it.
    pub inspection: InspectionFacts<'a>,
    /// The last point this flow will reach: facts of later points never come
    /// (a URL inside a tunnel that is not decrypted, a file type on a flow
    /// that is not inspected). `None`: every point may still come.
    pub last: Option<EvalPoint>,
}

impl Ctx<'_> {
    /// A fact that is not known now: absent for good if its point has passed or
    /// will never be reached (the condition cannot match and the rule is
    /// skipped), otherwise undecided until that point.
    pub(crate) fn later(&self, needed: EvalPoint) -> Tri {
        match self.point {
            Some(p) if p >= needed => Tri::No,
            _ if self.last.is_some_and(|last| last < needed) => Tri::No,
            _ => Tri::Unknown(needed),
        }
    }
}

/// Whether a flow's names (verdicts, DLP profiles; any case) include one the
/// rule lists (stored lowercase). Compared without allocating.
fn any_named(wanted: &[Box<str>], have: &[&str]) -> bool {
    have.iter()
        .any(|h| wanted.iter().any(|w| w.eq_ignore_ascii_case(h)))
}

fn any_in(wanted: &[u32], have: &[u32]) -> bool {
    // Both sides are short; sorted `have` lets this be a binary search per wanted id.
    wanted.iter().any(|w| have.binary_search(w).is_ok())
}

impl Conds {
    /// Evaluates one kind; `None` if the rule does not constrain it.
    pub(crate) fn eval_kind(&self, kind: CondKind, ctx: &Ctx<'_>) -> Option<Tri> {
        let yes = |b: bool| if b { Tri::Yes } else { Tri::No };
        Some(match kind {
            CondKind::Users => {
                if self.users.is_empty() {
                    return None;
                }
                yes(ctx.user.is_some_and(|u| self.users.contains(&u)))
            }
            CondKind::Groups => {
                if self.groups.is_empty() {
                    return None;
                }
                yes(self.groups.iter().any(|g| ctx.groups.contains(g)))
            }
            CondKind::Devices => {
                if self.devices.is_empty() {
                    return None;
                }
                yes(self.devices.iter().any(|d| ctx.devices.contains(d)))
            }
            CondKind::Networks => {
                if self.networks.is_empty() {
                    return None;
                }
                yes(ctx
                    .source_ip
                    .is_some_and(|ip| self.networks.iter().any(|(_, n)| n.contains(&ip))))
            }
            CondKind::Processes => {
                if self.processes.is_empty() {
                    return None;
                }
                yes(ctx
                    .process
                    .is_some_and(|p| self.processes.iter().any(|g| process_matches(g, p))))
            }
            CondKind::Destination => {
                if self.objects.is_empty() {
                    return None;
                }
                if any_in(&self.objects, &ctx.objects) {
                    Tri::Yes
                } else if self.objects.iter().any(|o| ctx.pending.contains(o)) {
                    // Only a path entry could still put the destination in: that
                    // needs the URL, which a tunnel that is not decrypted never shows.
                    ctx.later(EvalPoint::Request)
                } else {
                    Tri::No
                }
            }
            CondKind::Ports => {
                if self.ports.is_empty() {
                    return None;
                }
                yes(ctx
                    .port
                    .is_some_and(|p| self.ports.iter().any(|(a, b)| (*a..=*b).contains(&p))))
            }
            CondKind::Methods => {
                if self.methods.is_empty() {
                    return None;
                }
                match ctx.method {
                    Some(m) => yes(self.methods.iter().any(|x| x.eq_ignore_ascii_case(m))),
                    None => ctx.later(EvalPoint::Request),
                }
            }
            CondKind::FileTypes => {
                if self.file_types.is_empty() {
                    return None;
                }
                match ctx.inspection.file_type {
                    Some(t) => yes(self.file_types.iter().any(|x| x.eq_ignore_ascii_case(t))),
                    None => ctx.later(EvalPoint::Response),
                }
            }
            CondKind::Verdicts => {
                if self.verdicts.is_empty() {
                    return None;
                }
                // No verdict means the body was not scanned: never read as `clean`.
                match ctx.inspection.verdicts {
                    [] => ctx.later(EvalPoint::Response),
                    have => yes(any_named(&self.verdicts, have)),
                }
            }
            CondKind::Dlp => {
                if self.dlp.is_empty() {
                    return None;
                }
                match ctx.inspection.dlp {
                    // At the response point an empty list means no profile found
                    // anything: `later` gives `No` there and `Unknown` before.
                    [] => ctx.later(EvalPoint::Response),
                    have => yes(any_named(&self.dlp, have)),
                }
            }
            CondKind::Direction => {
                let wanted = self.direction?;
                match ctx.inspection.direction {
                    Some(d) => yes(d == wanted),
                    None => ctx.later(EvalPoint::Response),
                }
            }
            CondKind::Size => {
                let (min, max) = self.size?;
                match ctx.inspection.size {
                    Some(n) => yes((min..=max).contains(&n)),
                    None => ctx.later(EvalPoint::Response),
                }
            }
        })
    }

    pub(crate) const KINDS: [CondKind; 13] = [
        CondKind::Users,
        CondKind::Groups,
        CondKind::Devices,
        CondKind::Networks,
        CondKind::Processes,
        CondKind::Destination,
        CondKind::Ports,
        CondKind::Methods,
        CondKind::FileTypes,
        CondKind::Verdicts,
        CondKind::Dlp,
        CondKind::Direction,
        CondKind::Size,
    ];

    /// Whether any condition needs a fact of the response point (inspection).
    pub(crate) fn needs_response(&self) -> bool {
        !self.file_types.is_empty()
            || !self.verdicts.is_empty()
            || !self.dlp.is_empty()
            || self.direction.is_some()
            || self.size.is_some()
    }

    pub(crate) fn eval(&self, ctx: &Ctx<'_>) -> Tri {
        let mut acc = Tri::Yes;
        for kind in Self::KINDS {
            if let Some(t) = self.eval_kind(kind, ctx) {
                acc = acc.and(t);
                if acc == Tri::No {
                    return Tri::No;
                }
            }
        }
        acc
    }

    /// True if every flow these conditions match is also matched by `other`'s
    /// conditions being at least as broad (used to find shadowed rules).
    pub(crate) fn within(&self, broader: &Conds) -> bool {
        fn sub<T: PartialEq>(narrow: &[T], broad: &[T]) -> bool {
            broad.is_empty() || (!narrow.is_empty() && narrow.iter().all(|x| broad.contains(x)))
        }
        let nets_self: Vec<u32> = self.networks.iter().map(|n| n.0).collect();
        let nets_broad: Vec<u32> = broader.networks.iter().map(|n| n.0).collect();
        let procs_self: Vec<&str> = self.processes.iter().map(|g| g.as_str()).collect();
        let procs_broad: Vec<&str> = broader.processes.iter().map(|g| g.as_str()).collect();
        let ports_ok = broader.ports.is_empty()
            || (!self.ports.is_empty()
                && self
                    .ports
                    .iter()
                    .all(|(a, b)| broader.ports.iter().any(|(x, y)| x <= a && b <= y)));
        sub(&self.users, &broader.users)
            && sub(&self.groups, &broader.groups)
            && sub(&self.devices, &broader.devices)
            && sub(&nets_self, &nets_broad)
            && (broader.processes.iter().any(|g| g.as_str() == "*")
                || sub(&procs_self, &procs_broad))
            && sub(&self.objects, &broader.objects)
            && ports_ok
            && sub(&self.methods, &broader.methods)
            && sub(&self.file_types, &broader.file_types)
            && sub(&self.verdicts, &broader.verdicts)
            && sub(&self.dlp, &broader.dlp)
            && (broader.direction.is_none() || self.direction == broader.direction)
            && match (self.size, broader.size) {
                (_, None) => true,
                (Some((a, b)), Some((x, y))) => x <= a && b <= y,
                (None, Some(_)) => false,
            }
    }
}

/// A process pattern with a `/` matches the executable path; otherwise the name.
pub(crate) fn process_matches(glob: &Glob, p: &Process) -> bool {
    if glob.as_str().contains('/') {
        p.path.as_deref().is_some_and(|path| glob.is_match(path))
    } else {
        glob.is_match(&p.name)
    }
}

/// A compiled rule of one stage.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub description: Option<Arc<str>>,
    pub stage: Stage,
    pub disabled: bool,
    pub when: Conds,
    pub unless: Option<Conds>,
    pub action: RuleAction,
    pub log: bool,
    pub loc: Location,
}

impl Rule {
    /// `when` and not `unless`, in three-valued logic.
    pub(crate) fn eval(&self, ctx: &Ctx<'_>) -> Tri {
        let when = self.when.eval(ctx);
        if when == Tri::No {
            return Tri::No;
        }
        match self.unless.as_ref().map(|u| u.eval(ctx)) {
            None | Some(Tri::No) => when,
            Some(Tri::Yes) => Tri::No,
            Some(Tri::Unknown(p)) => when.and(Tri::Unknown(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tri_and_is_no_dominant_and_keeps_latest_point() {
        use EvalPoint::*;
        assert_eq!(Tri::Yes.and(Tri::No), Tri::No);
        assert_eq!(Tri::Unknown(Request).and(Tri::No), Tri::No);
        assert_eq!(
            Tri::Unknown(Request).and(Tri::Unknown(Response)),
            Tri::Unknown(Response)
        );
        assert_eq!(Tri::Yes.and(Tri::Unknown(Request)), Tri::Unknown(Request));
    }

    #[test]
    fn methods_are_unknown_at_connection_and_decided_at_request() {
        let c = Conds {
            methods: vec!["POST".into()],
            ..Default::default()
        };
        let mut ctx = Ctx {
            point: Some(EvalPoint::Connection),
            ..Default::default()
        };
        assert_eq!(c.eval(&ctx), Tri::Unknown(EvalPoint::Request));
        ctx.point = Some(EvalPoint::Request);
        ctx.method = Some("post");
        assert_eq!(c.eval(&ctx), Tri::Yes);
        ctx.method = Some("GET");
        assert_eq!(c.eval(&ctx), Tri::No);
    }

    #[test]
    fn process_patterns_with_slash_match_the_path() {
        let p = Process {
            name: "python3.12".into(),
            path: Some("/usr/bin/python3.12".into()),
        };
        assert!(process_matches(&Glob::new("python3*", true), &p));
        assert!(process_matches(&Glob::new("/usr/bin/*", true), &p));
        assert!(!process_matches(&Glob::new("/opt/*", true), &p));
    }

    #[test]
    fn narrower_conditions_are_within_broader_ones() {
        let broad = Conds {
            groups: vec![1, 2],
            ..Default::default()
        };
        let narrow = Conds {
            groups: vec![1],
            objects: vec![5],
            ..Default::default()
        };
        assert!(narrow.within(&broad));
        assert!(!broad.within(&narrow));
        assert!(narrow.within(&Conds::default()));
    }
}
