//! The policy phases of the data path, one function each: the connection
//! phase when a CONNECT target (host, port) is known, the request phase for
//! each forwarded request (full URL), and the response phase once the
//! response's first bytes are known (file type). Each turns the policy's
//! verdict into what the gateway does — block, pass, or wait for the next
//! phase — and records the decision in the flow record.
//!
//! Undecided rules never fail open: every phase is told the last phase the
//! flow will reach ([`FlowFacts::last`]). A rule needing facts that will never
//! come is skipped (and recorded as skipped); a rule needing facts that come
//! later makes the phase return [`StageResult::pending`], and the caller must
//! run the later phase, which evaluates the whole stage again.

use std::net::IpAddr;
use std::sync::Arc;

use rampart_policy::{
    AccessAction, ConnectionFacts, Decision, DecryptionAction, Egress, EvalPoint, Identity,
    InspectionFacts, Outcome, Policy, Process, RequestFacts, ResponseFacts, Stage,
};

use crate::access_log::{FlowRecord, PolicyRecord};
use crate::connector::EgressChoice;
use crate::decision::PolicyAction;

/// What the policy phases know about a flow before its requests.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    pub identity: &'a Identity,
    /// The endpoint process (agent flows), for rules with `processes` conditions.
    pub process: Option<&'a Process>,
    /// The name the policy sees: CONNECT host, SNI, or the request's host.
    pub host: &'a str,
    /// The address connected to, for CIDR rules.
    pub dst_ip: Option<IpAddr>,
    pub port: u16,
    /// The last phase this flow reaches: `Connection` for a tunnel that is not
    /// decrypted, `Response` for plain HTTP and decrypted requests (whose
    /// responses are classified).
    pub last: EvalPoint,
    /// A second name the flow goes to: the CONNECT host of a decrypted tunnel
    /// whose SNI names another site, let through by `tls.fronting = "alert"`.
    /// The request and response phases evaluate both names and the stricter
    /// result wins, so alerting on fronting never evaluates the SNI alone.
    pub also_host: Option<&'a str>,
}

impl<'a> FlowFacts<'a> {
    fn connection(&self) -> ConnectionFacts<'a> {
        ConnectionFacts {
            identity: self.identity,
            process: self.process,
            host: Some(self.host),
            dst_ip: self.dst_ip,
            port: self.port,
        }
    }
}

/// The groups a flow's record carries: those of its identity source (proxy
/// user list, device certificate) and those the policy's `[identities]` gives
/// the user, which take part in its decisions too.
pub fn record_groups(policy: &Policy, user: Option<&str>, groups: &[String]) -> Vec<String> {
    let mut all = groups.to_vec();
    if let Some(user) = user {
        for g in policy.groups_of_user(user) {
            if !all.iter().any(|x| x == g) {
                all.push(g.to_string());
            }
        }
    }
    all
}

/// What the data path must do after a policy phase.
#[derive(Default)]
pub struct StageResult {
    /// Set when an access rule blocks: the rule's name and the category that matched, if any.
    pub blocked: Option<Blocked>,
    /// Set when a `user-alert` rule matched: the request passes only if the
    /// user proceeded past the coaching page (see `crate::coaching`).
    pub coach: Option<Blocked>,
    pub egress: EgressChoice,
    /// The decryption decision when a rule (not the stage default) made it:
    /// the action and the rule's name. Only the connection phase sets it.
    pub decryption: Option<(DecryptionAction, Arc<str>)>,
    /// Access is undecided until a later phase: the caller must run it, and
    /// must not treat this as an allow.
    pub pending: bool,
}

/// The rule that blocked (or coaches) a request, for the page the user sees.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub rule: Arc<str>,
    pub category: Option<Arc<str>>,
}

/// Connection phase (CONNECT): access, egress, and the decryption decision
/// that TLS interception applies to the tunnel.
pub fn connection_phase(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    record: &mut FlowRecord,
) -> StageResult {
    let verdict = policy.evaluate_connection_until(&facts.connection(), facts.last);
    let egress = match &verdict.egress {
        Outcome::Decided(d) => egress_choice(d),
        Outcome::Pending { .. } => EgressChoice::Default,
    };
    let (access, pending) = match verdict.access {
        Outcome::Decided(d) => (apply_access(policy, d, verdict.skipped, record), false),
        pending => {
            record_pending(policy, &pending, record);
            (AccessResult::default(), true)
        }
    };
    let d = verdict.decryption;
    let decryption = (!d.default).then(|| (d.action, d.rule_name.clone()));
    if !d.default {
        // The decision's matched objects move into the record as they are:
        // they are rendered to text only when the flow's line and event are written.
        record.decryption = Some(PolicyRecord {
            revision: policy.revision_shared().clone(),
            stage: Stage::Decryption,
            rule_id: d.rule_id,
            rule: d.rule_name,
            action: PolicyAction::Decryption(d.action),
            matched: d.matched,
            proceeded: false,
            skipped: Vec::new(),
        });
    }
    StageResult {
        // A coaching page cannot be shown inside a tunnel: at the connection
        // user-alert passes like alert, and is recorded as user-alert. A
        // decrypted tunnel's requests are coached by the request phase.
        blocked: access.blocked,
        coach: None,
        egress,
        decryption,
        pending,
    }
}

/// Request phase (absolute-form HTTP, and each request of a decrypted
/// tunnel): the full URL is known. `path` is the path with its query.
pub fn request_phase(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    method: &str,
    path: &str,
    record: &mut FlowRecord,
) -> StageResult {
    stricter_of_both_names(facts, record, |facts, record| {
        request_phase_on(policy, facts, method, path, record)
    })
}

fn request_phase_on(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    method: &str,
    path: &str,
    record: &mut FlowRecord,
) -> StageResult {
    let request = RequestFacts {
        connection: facts.connection(),
        method,
        path,
    };
    let verdict = policy.evaluate_request_until(&request, facts.last);
    let (access, pending) = match verdict.access {
        Outcome::Decided(d) => (apply_access(policy, d, verdict.skipped, record), false),
        pending => {
            record_pending(policy, &pending, record);
            (AccessResult::default(), true)
        }
    };
    StageResult {
        blocked: access.blocked,
        coach: access.coach,
        egress: egress_choice(&verdict.egress),
        decryption: None,
        pending,
    }
}

/// Response phase: the request phase left access pending on a rule that needs
/// the response (file type, verdicts, DLP profiles, direction, size); the
/// whole stage is evaluated again with what inspection found. Uploads come
/// here too, with `inspection.direction` = upload, once their body is scanned.
pub fn response_phase(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    method: &str,
    path: &str,
    inspection: InspectionFacts<'_>,
    record: &mut FlowRecord,
) -> StageResult {
    stricter_of_both_names(facts, record, |facts, record| {
        response_phase_on(policy, facts, method, path, inspection, record)
    })
}

fn response_phase_on(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    method: &str,
    path: &str,
    inspection: InspectionFacts<'_>,
    record: &mut FlowRecord,
) -> StageResult {
    let response = ResponseFacts {
        request: RequestFacts {
            connection: facts.connection(),
            method,
            path,
        },
        inspection,
    };
    let decision = policy.evaluate_response(&response);
    let access = apply_access(policy, decision, Vec::new(), record);
    StageResult {
        blocked: access.blocked,
        coach: access.coach,
        egress: EgressChoice::Default,
        decryption: None,
        pending: false,
    }
}

/// Runs `phase` on the flow's name and, when the flow has a second name
/// ([`FlowFacts::also_host`]), on that one too: a block from either wins, then
/// a pending decision (the later phase evaluates both again), then coaching.
/// The record keeps the decision that won.
fn stricter_of_both_names(
    facts: &FlowFacts<'_>,
    record: &mut FlowRecord,
    mut phase: impl FnMut(&FlowFacts<'_>, &mut FlowRecord) -> StageResult,
) -> StageResult {
    let first = phase(facts, record);
    let Some(other) = facts.also_host.filter(|h| *h != facts.host) else {
        return first;
    };
    if first.blocked.is_some() {
        return first;
    }
    let other_facts = FlowFacts {
        host: other,
        dst_ip: facts.dst_ip,
        also_host: None,
        ..*facts
    };
    let mut probe = record.clone();
    let second = phase(&other_facts, &mut probe);
    let second_wins = second.blocked.is_some()
        || (second.pending && !first.pending)
        || (!first.pending && first.coach.is_none() && second.coach.is_some());
    if !second_wins {
        return first;
    }
    record.policy = probe.policy;
    StageResult {
        // Egress follows the name the request is sent to.
        egress: first.egress,
        pending: first.pending || second.pending,
        ..second
    }
}

/// The tunnel of a pending connection phase will not be decrypted after all
/// (not TLS, a pinned client, the decider's choice): its URL never comes, so
/// the stage is decided now with the rules that can still match.
pub fn settle_undecrypted(
    policy: &Policy,
    facts: &FlowFacts<'_>,
    record: &mut FlowRecord,
) -> Option<Blocked> {
    let facts = FlowFacts {
        last: EvalPoint::Connection,
        ..*facts
    };
    connection_phase(policy, &facts, record).blocked
}

fn record_pending(policy: &Policy, outcome: &Outcome<AccessAction>, record: &mut FlowRecord) {
    if let Outcome::Pending {
        rule_id,
        rule_name,
        until,
        ..
    } = outcome
    {
        record.policy = Some(PolicyRecord {
            revision: policy.revision_shared().clone(),
            stage: Stage::Access,
            rule_id: rule_id.clone(),
            rule: rule_name.clone(),
            action: match until {
                EvalPoint::Response => PolicyAction::PendingResponse,
                _ => PolicyAction::PendingUrl,
            },
            matched: Vec::new(),
            proceeded: false,
            skipped: Vec::new(),
        });
    }
}

#[derive(Default)]
struct AccessResult {
    blocked: Option<Blocked>,
    coach: Option<Blocked>,
}

/// Records an access decision in the flow (its matched objects and skipped
/// rules moved in, not copied) and says what the data path must do.
fn apply_access(
    policy: &Policy,
    decision: Decision<AccessAction>,
    skipped: Vec<Arc<str>>,
    record: &mut FlowRecord,
) -> AccessResult {
    let rule = || Blocked {
        rule: decision.rule_name.clone(),
        category: crate::decision::categories(&decision.matched)
            .next()
            .map(|m| m.name.clone()),
    };
    let result = match decision.action {
        AccessAction::Block => AccessResult {
            blocked: Some(rule()),
            coach: None,
        },
        AccessAction::UserAlert => AccessResult {
            blocked: None,
            coach: Some(rule()),
        },
        // Alert allows and is recorded (the event store turns it into a finding).
        AccessAction::Allow | AccessAction::Alert => AccessResult::default(),
    };
    record.policy = Some(PolicyRecord {
        revision: policy.revision_shared().clone(),
        stage: Stage::Access,
        rule_id: decision.rule_id,
        rule: decision.rule_name,
        action: PolicyAction::Access(decision.action),
        matched: decision.matched,
        proceeded: false,
        skipped,
    });
    result
}

fn egress_choice(decision: &Decision<Egress>) -> EgressChoice {
    if decision.default {
        return EgressChoice::Default;
    }
    match &decision.action {
        Egress::Direct => EgressChoice::Direct,
        Egress::Upstream(name) => EgressChoice::Upstream(name.to_string()),
        Egress::Source(ip) => EgressChoice::Source(*ip),
    }
}
