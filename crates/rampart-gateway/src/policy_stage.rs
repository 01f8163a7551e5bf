//! The policy phases of the data path: the connection stage when a CONNECT
//! target (host, port) is known, the request stage for each forwarded request
//! (full URL). Each turns the policy's verdict into what the gateway does —
//! block or pass, which egress — and records the decision in the flow record.

use std::sync::Arc;

use rampart_policy::{
    AccessAction, ConnectionFacts, Decision, DecryptionAction, Egress, Identity, ObjectKind,
    Outcome, Policy, Process, RequestFacts,
};

use crate::access_log::{FlowRecord, PolicyRecord};
use crate::connector::EgressChoice;

/// What the data path must do after a policy stage.
pub struct StageResult {
    /// Set when an access rule blocks: the rule's name and the category that matched, if any.
    pub blocked: Option<Blocked>,
    /// Set when a `user-alert` rule matched: the request passes only if the
    /// user proceeded past the coaching page (see `crate::coaching`).
    pub coach: Option<Blocked>,
    pub egress: EgressChoice,
    /// The decryption decision when a rule (not the stage default) made it:
    /// the action and the rule's name. Only the connection stage sets it.
    pub decryption: Option<(DecryptionAction, String)>,
}

/// The rule that blocked (or coaches) a request, for the page the user sees.
pub struct Blocked {
    pub rule: Arc<str>,
    pub category: Option<Arc<str>>,
}

/// Connection stage (CONNECT): access, egress, and the decryption decision
/// that TLS interception applies to the tunnel.
pub fn connection_stage(
    policy: &Policy,
    identity: &Identity,
    host: &str,
    port: u16,
    record: &mut FlowRecord,
) -> StageResult {
    let dst_ip = host.parse().ok();
    connection_stage_with_process(policy, identity, None, host, dst_ip, port, record)
}

/// [`connection_stage`] for a flow whose endpoint process is known (agent tunnel
/// flows), so rules with `processes` conditions can match. `host` may be a name
/// the agent saw (SNI, Host) while `dst_ip` is the address it connects to.
pub fn connection_stage_with_process(
    policy: &Policy,
    identity: &Identity,
    process: Option<&Process>,
    host: &str,
    dst_ip: Option<std::net::IpAddr>,
    port: u16,
    record: &mut FlowRecord,
) -> StageResult {
    let facts = ConnectionFacts {
        identity,
        process,
        host: Some(host),
        dst_ip,
        port,
    };
    let verdict = policy.evaluate_connection(&facts);
    let egress = match &verdict.egress {
        Outcome::Decided(d) => egress_choice(d),
        Outcome::Pending { .. } => EgressChoice::Default,
    };
    let blocked = match &verdict.access {
        Outcome::Decided(d) => apply_access(policy, d, record).blocked,
        // A rule that needs the URL cannot be decided inside a tunnel that is
        // not decrypted; it is recorded as undecided and the tunnel passes.
        Outcome::Pending {
            rule_name, rule_id, ..
        } => {
            record.policy = Some(PolicyRecord {
                revision: policy.revision().into(),
                stage: "access",
                rule_id: rule_id.clone(),
                rule: rule_name.clone(),
                action: "pending-url",
                matched: Vec::new(),
                proceeded: false,
            });
            None
        }
    };
    if !verdict.decryption.default {
        let d = &verdict.decryption;
        record.decryption = Some(PolicyRecord {
            revision: policy.revision().into(),
            stage: "decryption",
            rule_id: d.rule_id.clone(),
            rule: d.rule_name.clone(),
            action: d.action.as_str(),
            matched: d.matched.iter().map(|m| m.to_string()).collect(),
            proceeded: false,
        });
    }
    // A coaching page cannot be shown inside a tunnel that is not decrypted:
    // user-alert passes there like alert, and is recorded as user-alert.
    let decryption = (!verdict.decryption.default).then(|| {
        (
            verdict.decryption.action,
            verdict.decryption.rule_name.to_string(),
        )
    });
    StageResult {
        blocked,
        coach: None,
        egress,
        decryption,
    }
}

/// Request stage (absolute-form HTTP): the full URL is known.
pub fn request_stage(
    policy: &Policy,
    identity: &Identity,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    record: &mut FlowRecord,
) -> StageResult {
    request_stage_with_process(policy, identity, None, host, port, method, path, record)
}

/// [`request_stage`] for requests inside an agent's decrypted tunnel, with its process.
#[allow(clippy::too_many_arguments)]
pub fn request_stage_with_process(
    policy: &Policy,
    identity: &Identity,
    process: Option<&Process>,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    record: &mut FlowRecord,
) -> StageResult {
    let facts = RequestFacts {
        connection: ConnectionFacts {
            identity,
            process,
            host: Some(host),
            dst_ip: host.parse().ok(),
            port,
        },
        method,
        path,
    };
    let verdict = policy.evaluate_request(&facts);
    let access = match &verdict.access {
        Outcome::Decided(d) => apply_access(policy, d, record),
        Outcome::Pending { .. } => AccessResult::default(),
    };
    StageResult {
        blocked: access.blocked,
        coach: access.coach,
        egress: egress_choice(&verdict.egress),
        decryption: None,
    }
}

#[derive(Default)]
struct AccessResult {
    blocked: Option<Blocked>,
    coach: Option<Blocked>,
}

fn apply_access(
    policy: &Policy,
    decision: &Decision<AccessAction>,
    record: &mut FlowRecord,
) -> AccessResult {
    record.policy = Some(PolicyRecord {
        revision: policy.revision().into(),
        stage: "access",
        rule_id: decision.rule_id.clone(),
        rule: decision.rule_name.clone(),
        action: decision.action.as_str(),
        matched: decision.matched.iter().map(|m| m.to_string()).collect(),
        proceeded: false,
    });
    let rule = || Blocked {
        rule: decision.rule_name.clone(),
        category: decision
            .matched
            .iter()
            .find(|m| matches!(m.kind, ObjectKind::Category | ObjectKind::CustomCategory))
            .map(|m| m.name.clone()),
    };
    match decision.action {
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
    }
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
