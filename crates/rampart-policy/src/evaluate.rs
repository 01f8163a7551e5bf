//! Evaluation: resolve the facts to policy ids once, then walk only the rules indexed
//! under them, in order; the first rule that matches decides.

use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::action::{AccessAction, DecryptionAction, Egress, EvalPoint, Stage, SteeringAction};
use crate::domain::normalize_host;
use crate::facts::*;
use crate::policy::Policy;
use crate::rule::{process_matches, CondKind, Conds, Ctx, Rule, RuleAction, Tri};
use crate::verdict::*;

/// The earliest point at which one of the undecided rules can be decided.
fn earliest(undecided: &[(&Rule, EvalPoint)]) -> EvalPoint {
    undecided
        .iter()
        .map(|(_, p)| *p)
        .min()
        .unwrap_or(EvalPoint::Response)
}

/// The result of walking one stage's rules.
pub(crate) enum Walk<'p> {
    Rule(&'p Rule),
    Default,
    Pending(&'p Rule, EvalPoint),
}

impl Policy {
    /// Connection stage for a flow that may still reach every later point (its
    /// URL and response may come): see [`Policy::evaluate_connection_until`].
    pub fn evaluate_connection(&self, facts: &ConnectionFacts<'_>) -> ConnectionVerdict {
        self.evaluate_connection_until(facts, EvalPoint::Response)
    }

    /// Connection stage: decryption (always decided), plus access and egress
    /// evaluated with what is known at the connection. `last` is the last point
    /// this flow will reach: `Connection` for a tunnel that will not be
    /// decrypted (rules on the URL, method or file type are skipped: they can
    /// never match it), `Request` for a flow whose responses are not inspected,
    /// `Response` otherwise (such rules defer the decision to that point).
    pub fn evaluate_connection_until(
        &self,
        facts: &ConnectionFacts<'_>,
        last: EvalPoint,
    ) -> ConnectionVerdict {
        let mut ctx = self.context(
            facts,
            None,
            None,
            InspectionFacts::default(),
            EvalPoint::Connection,
        );
        ctx.last = Some(last);
        ConnectionVerdict {
            decryption: self.decide_now(Stage::Decryption, &ctx, decryption_of),
            access: self.outcome(Stage::Access, &ctx, access_of),
            egress: self.outcome(Stage::Egress, &ctx, egress_of),
            skipped: self.skipped(Stage::Access, &ctx),
        }
    }

    /// Request stage for a flow whose response may be inspected.
    pub fn evaluate_request(&self, facts: &RequestFacts<'_>) -> RequestVerdict {
        self.evaluate_request_until(facts, EvalPoint::Response)
    }

    /// Request stage: access (pending only on rules that need the response,
    /// when `last` is `Response`) and egress (decided now).
    pub fn evaluate_request_until(
        &self,
        facts: &RequestFacts<'_>,
        last: EvalPoint,
    ) -> RequestVerdict {
        let mut ctx = self.context(
            &facts.connection,
            Some(facts.path),
            Some(facts.method),
            InspectionFacts::default(),
            EvalPoint::Request,
        );
        ctx.last = Some(last);
        RequestVerdict {
            access: self.outcome(Stage::Access, &ctx, access_of),
            egress: self.decide_now(Stage::Egress, &ctx, egress_of),
            skipped: self.skipped(Stage::Access, &ctx),
        }
    }

    /// Response stage: the final access decision, with what inspection found
    /// (file type, verdicts, DLP profiles, direction, size). Uploads are
    /// decided here too, with `direction` = upload, once their body is scanned.
    pub fn evaluate_response(&self, facts: &ResponseFacts<'_>) -> Decision<AccessAction> {
        let r = &facts.request;
        let ctx = self.context(
            &r.connection,
            Some(r.path),
            Some(r.method),
            facts.inspection,
            EvalPoint::Response,
        );
        self.decide_now(Stage::Access, &ctx, access_of)
    }

    /// The access decision with every fact the flow will ever have, all at
    /// once: what `policy explain` reports and what the gateway's staged
    /// decisions must always agree with. The URL of `facts` counts only if the
    /// flow reaches the request point, and its inspection only if it reaches
    /// the response point (`last`); the others are ignored.
    pub fn evaluate_access_full(
        &self,
        facts: &ResponseFacts<'_>,
        last: EvalPoint,
    ) -> Decision<AccessAction> {
        let r = &facts.request;
        let reaches = |p: EvalPoint| last >= p;
        let ctx = self.context(
            &r.connection,
            reaches(EvalPoint::Request).then_some(r.path),
            reaches(EvalPoint::Request).then_some(r.method),
            if reaches(EvalPoint::Response) {
                facts.inspection
            } else {
                InspectionFacts::default()
            },
            EvalPoint::Response,
        );
        self.decide_now(Stage::Access, &ctx, access_of)
    }

    /// Agent steering: steer, bypass, tunnel-bypass or block, and whether to log.
    /// Path entries of lists never match here: the agent does not see URLs.
    pub fn evaluate_steering(&self, facts: &SteeringFacts<'_>) -> SteeringVerdict {
        let conn = ConnectionFacts {
            identity: facts.identity,
            process: Some(facts.process),
            host: facts.host,
            dst_ip: facts.dst_ip,
            port: facts.port,
        };
        let mut ctx = self.context(
            &conn,
            None,
            None,
            InspectionFacts::default(),
            EvalPoint::Connection,
        );
        ctx.pending.clear();
        let set = self.stage(Stage::Steering);
        let (decision, log) = match self.walk(Stage::Steering, &ctx) {
            Walk::Rule(rule) => (
                self.decision(rule, &ctx, steering_of(&rule.action)),
                rule.log,
            ),
            _ => (
                self.default_decision(Stage::Steering, steering_of(&set.default)),
                set.default_log,
            ),
        };
        SteeringVerdict {
            action: decision.action,
            log,
            decision,
        }
    }

    /// Resolves identity and destination into the ids rules are written against.
    pub(crate) fn context<'a>(
        &self,
        facts: &ConnectionFacts<'a>,
        path: Option<&'a str>,
        method: Option<&'a str>,
        inspection: InspectionFacts<'a>,
        point: EvalPoint,
    ) -> Ctx<'a> {
        let mut ctx = Ctx {
            point: Some(point),
            process: facts.process,
            port: Some(facts.port),
            method,
            inspection,
            source_ip: facts.identity.source_ip,
            ..Default::default()
        };
        let id = facts.identity;
        if let Some(user) = id.user.as_deref() {
            ctx.user = self.users.get(user);
            if let Some(groups) = ctx.user.and_then(|u| self.user_groups.get(u as usize)) {
                ctx.groups.extend(groups.iter().copied());
            }
        }
        for g in &id.groups {
            if let Some(gid) = self.groups.get(g) {
                ctx.groups.push(gid);
            }
        }
        if let Some(device) = id.device.as_deref() {
            if let Some(d) = self.devices.get(device) {
                ctx.devices.push(d);
                if let Some(groups) = self.device_groups.get(d as usize) {
                    ctx.devices.extend(groups.iter().copied());
                }
            }
        }
        self.resolve_destination(facts.host, facts.dst_ip, path, &mut ctx);
        ctx
    }

    fn resolve_destination(
        &self,
        host: Option<&str>,
        dst_ip: Option<IpAddr>,
        path: Option<&str>,
        ctx: &mut Ctx<'_>,
    ) {
        let mut objects: SmallVec<[u32; 16]> = SmallVec::new();
        let mut pending: SmallVec<[u32; 8]> = SmallVec::new();
        let mut host_ip = None;
        if let Some(h) = host {
            let h = normalize_host(h);
            self.domains.lookup(&h, |t, _| {
                let target = &self.targets[t as usize];
                match (&target.path, path) {
                    (None, _) => objects.push(target.object),
                    (Some(p), Some(path)) => {
                        if p.is_match(path) {
                            objects.push(target.object);
                        }
                    }
                    (Some(_), None) => pending.push(target.object),
                }
            });
            if h.as_bytes().first().is_some_and(|b| b.is_ascii_digit()) || h.contains(':') {
                host_ip = h.parse::<IpAddr>().ok();
            }
        }
        if !self.cidrs.is_empty() {
            for ip in [host_ip, dst_ip].into_iter().flatten() {
                for (net, object) in &self.cidrs {
                    if net.contains(&ip) {
                        objects.push(*object);
                    }
                }
            }
        }
        let direct = objects.len();
        for i in 0..direct {
            objects.extend_from_slice(&self.objects[objects[i] as usize].ancestors);
        }
        objects.sort_unstable();
        objects.dedup();
        let direct_pending = pending.len();
        for i in 0..direct_pending {
            pending.extend_from_slice(&self.objects[pending[i] as usize].ancestors);
        }
        pending.retain(|p| objects.binary_search(p).is_err());
        ctx.objects = objects;
        ctx.pending = pending;
    }

    /// The candidate rules of a stage for this flow, in rule order: the rules
    /// indexed under its destination objects, identity, and the unindexed ones.
    fn candidates(&self, stage: Stage, ctx: &Ctx<'_>) -> SmallVec<[u32; 32]> {
        let set = self.stage(stage);
        let mut candidates: SmallVec<[u32; 32]> = SmallVec::new();
        candidates.extend_from_slice(&set.always);
        for &o in ctx.objects.iter().chain(ctx.pending.iter()) {
            if let Some(rules) = set.by_object.get(o as usize) {
                candidates.extend_from_slice(rules);
            }
        }
        if let Some(rules) = ctx.user.and_then(|u| set.by_user.get(u as usize)) {
            candidates.extend_from_slice(rules);
        }
        for &g in &ctx.groups {
            if let Some(rules) = set.by_group.get(g as usize) {
                candidates.extend_from_slice(rules);
            }
        }
        for &d in &ctx.devices {
            if let Some(rules) = set.by_device.get(d as usize) {
                candidates.extend_from_slice(rules);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
    }

    /// Walks the candidates of a stage in rule order, first match wins.
    ///
    /// A rule that cannot be decided yet (it needs a fact a later point brings)
    /// does not stop the walk: the rules after it are still looked at, because
    /// the flow's outcome is one of the undecided rules' actions or the action
    /// of the first rule that surely matches (or the default). When all those
    /// possible outcomes are the same action, the stage is decided now — e.g. a
    /// `file_types` block before a host block still blocks that host at once,
    /// without contacting it. Otherwise it is pending, and the later point
    /// walks the whole stage again with more facts. Never "allow" by default
    /// while something could still block, and never the reverse.
    pub(crate) fn walk(&self, stage: Stage, ctx: &Ctx<'_>) -> Walk<'_> {
        let set = self.stage(stage);
        let mut undecided: SmallVec<[(&Rule, EvalPoint); 4]> = SmallVec::new();
        for i in self.candidates(stage, ctx) {
            let rule = &set.rules[i as usize];
            match rule.eval(ctx) {
                Tri::Yes => {
                    return match undecided.first() {
                        None => Walk::Rule(rule),
                        Some(_) if undecided.iter().all(|(u, _)| u.action == rule.action) => {
                            Walk::Rule(rule)
                        }
                        Some(&(first, _)) => Walk::Pending(first, earliest(&undecided)),
                    };
                }
                Tri::No => {}
                Tri::Unknown(p) => undecided.push((rule, p)),
            }
        }
        match undecided.first() {
            None => Walk::Default,
            Some(_) if undecided.iter().all(|(u, _)| u.action == set.default) => Walk::Default,
            Some(&(first, _)) => Walk::Pending(first, earliest(&undecided)),
        }
    }

    /// The rules of `stage`, before the one that decides this flow, that were
    /// passed over only because they need facts this flow will never have (a
    /// URL inside a tunnel that is not decrypted): recorded on the flow's
    /// event so nobody mistakes them for rules that did not apply.
    pub(crate) fn skipped(&self, stage: Stage, ctx: &Ctx<'_>) -> Vec<Arc<str>> {
        if ctx.last.is_none_or(|last| last >= EvalPoint::Response) {
            return Vec::new();
        }
        let set = self.stage(stage);
        let open = Ctx {
            point: ctx.point,
            user: ctx.user,
            groups: ctx.groups.clone(),
            devices: ctx.devices.clone(),
            source_ip: ctx.source_ip,
            process: ctx.process,
            objects: ctx.objects.clone(),
            pending: ctx.pending.clone(),
            port: ctx.port,
            method: ctx.method,
            inspection: ctx.inspection,
            last: None,
        };
        let mut skipped = Vec::new();
        for i in self.candidates(stage, ctx) {
            let rule = &set.rules[i as usize];
            match rule.eval(ctx) {
                Tri::No => {
                    if matches!(rule.eval(&open), Tri::Unknown(_)) {
                        skipped.push(rule.name.clone());
                    }
                }
                _ => break,
            }
        }
        skipped
    }

    /// Decides at the last point this stage can wait for: undecidable rules don't match.
    fn decide_now<A>(&self, stage: Stage, ctx: &Ctx<'_>, of: fn(&RuleAction) -> A) -> Decision<A> {
        let mut ctx_final = Ctx {
            point: Some(EvalPoint::Response),
            ..Default::default()
        };
        // Re-borrow the resolved facts, treating what is still unknown as absent.
        ctx_final.user = ctx.user;
        ctx_final.groups = ctx.groups.clone();
        ctx_final.devices = ctx.devices.clone();
        ctx_final.source_ip = ctx.source_ip;
        ctx_final.process = ctx.process;
        ctx_final.objects = ctx.objects.clone();
        ctx_final.port = ctx.port;
        ctx_final.method = ctx.method;
        ctx_final.inspection = ctx.inspection;
        ctx_final.last = Some(EvalPoint::Response);
        match self.walk(stage, &ctx_final) {
            Walk::Rule(rule) => self.decision(rule, &ctx_final, of(&rule.action)),
            _ => self.default_decision(stage, of(&self.stage(stage).default)),
        }
    }

    fn outcome<A>(&self, stage: Stage, ctx: &Ctx<'_>, of: fn(&RuleAction) -> A) -> Outcome<A> {
        match self.walk(stage, ctx) {
            Walk::Rule(rule) => Outcome::Decided(self.decision(rule, ctx, of(&rule.action))),
            Walk::Default => {
                Outcome::Decided(self.default_decision(stage, of(&self.stage(stage).default)))
            }
            Walk::Pending(rule, until) => Outcome::Pending {
                stage,
                until,
                rule_id: rule.id.clone(),
                rule_name: rule.name.clone(),
            },
        }
    }

    pub(crate) fn default_decision<A>(&self, stage: Stage, action: A) -> Decision<A> {
        let set = self.stage(stage);
        Decision {
            stage,
            rule_id: set.default_id.clone(),
            rule_name: set.default_name.clone(),
            action,
            matched: Vec::new(),
            default: true,
        }
    }

    pub(crate) fn decision<A>(&self, rule: &Rule, ctx: &Ctx<'_>, action: A) -> Decision<A> {
        Decision {
            stage: rule.stage,
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            action,
            matched: self.matched(&rule.when, ctx),
            default: false,
        }
    }

    /// The values of `conds` this flow met, for logs and explanations.
    pub(crate) fn matched(&self, conds: &Conds, ctx: &Ctx<'_>) -> Vec<MatchedObject> {
        let mut out = Vec::new();
        let mut push = |kind, name: &Arc<str>| {
            out.push(MatchedObject {
                kind,
                name: name.clone(),
            })
        };
        for kind in Conds::KINDS {
            if conds.eval_kind(kind, ctx) != Some(Tri::Yes) {
                continue;
            }
            match kind {
                CondKind::Users => {
                    if let Some(u) = ctx.user {
                        push(ObjectKind::User, &self.users.names[u as usize]);
                    }
                }
                CondKind::Groups => {
                    for g in conds.groups.iter().filter(|g| ctx.groups.contains(g)) {
                        push(ObjectKind::Group, &self.groups.names[*g as usize]);
                    }
                }
                CondKind::Devices => {
                    for d in conds.devices.iter().filter(|d| ctx.devices.contains(d)) {
                        push(ObjectKind::Device, &self.devices.names[*d as usize]);
                    }
                }
                CondKind::Networks => {
                    if let Some(ip) = ctx.source_ip {
                        if let Some((id, _)) = conds.networks.iter().find(|(_, n)| n.contains(&ip))
                        {
                            push(ObjectKind::Network, &self.networks[*id as usize]);
                        }
                    }
                }
                CondKind::Processes => {
                    if let Some(p) = ctx.process {
                        if let Some(g) = conds.processes.iter().find(|g| process_matches(g, p)) {
                            push(ObjectKind::Process, &Arc::from(g.as_str()));
                        }
                    }
                }
                CondKind::Destination => {
                    for o in conds
                        .objects
                        .iter()
                        .filter(|o| ctx.objects.binary_search(o).is_ok())
                    {
                        let obj = &self.objects[*o as usize];
                        push(obj.kind, &obj.name);
                    }
                }
                CondKind::Ports => {
                    if let Some(p) = ctx.port {
                        push(ObjectKind::Port, &Arc::from(p.to_string().as_str()));
                    }
                }
                CondKind::Methods => {
                    if let Some(m) = ctx.method {
                        push(
                            ObjectKind::Method,
                            &Arc::from(m.to_ascii_uppercase().as_str()),
                        );
                    }
                }
                CondKind::FileTypes => {
                    if let Some(t) = ctx.inspection.file_type {
                        push(ObjectKind::FileType, &Arc::from(t));
                    }
                }
                CondKind::Verdicts => {
                    for v in conds.verdicts.iter().filter(|v| {
                        ctx.inspection
                            .verdicts
                            .iter()
                            .any(|h| v.eq_ignore_ascii_case(h))
                    }) {
                        push(ObjectKind::Verdict, &Arc::from(&**v));
                    }
                }
                CondKind::Dlp => {
                    for p in conds
                        .dlp
                        .iter()
                        .filter(|p| ctx.inspection.dlp.iter().any(|h| p.eq_ignore_ascii_case(h)))
                    {
                        push(ObjectKind::Dlp, &Arc::from(&**p));
                    }
                }
                CondKind::Direction => {
                    if let Some(d) = ctx.inspection.direction {
                        push(ObjectKind::Direction, &Arc::from(d.as_str()));
                    }
                }
                CondKind::Size => {
                    if let Some(n) = ctx.inspection.size {
                        push(ObjectKind::Size, &Arc::from(n.to_string().as_str()));
                    }
                }
            }
        }
        out
    }
}

pub(crate) fn steering_of(a: &RuleAction) -> SteeringAction {
    match a {
        RuleAction::Steering(s) => *s,
        _ => SteeringAction::Steer,
    }
}

pub(crate) fn decryption_of(a: &RuleAction) -> DecryptionAction {
    match a {
        RuleAction::Decryption(d) => *d,
        _ => DecryptionAction::Decrypt,
    }
}

pub(crate) fn access_of(a: &RuleAction) -> AccessAction {
    match a {
        RuleAction::Access(x) => *x,
        _ => AccessAction::Allow,
    }
}

pub(crate) fn egress_of(a: &RuleAction) -> Egress {
    match a {
        RuleAction::Egress(e) => e.clone(),
        _ => Egress::Direct,
    }
}
