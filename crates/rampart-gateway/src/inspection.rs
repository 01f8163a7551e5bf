//! Content inspection on the data path (DESIGN §6a): what a scan found, as
//! the flow records it, and the default inspection policy (`[inspect.actions]`)
//! that turns a verdict into block, alert or allow when no policy rule on the
//! verdict decided.
//!
//! The scanning itself is `rampart_inspect`; where bodies are held and fed is
//! [`crate::response_gate`] (downloads) and the body wrapper in
//! [`crate::proxy::body`] (large bodies, scanned while streaming).

use std::sync::Arc;
use std::time::Duration;

use rampart_inspect::{
    Inspector, ScanContext, ScanReport, ScanSession, UnscannableReason, Verdict, VerdictAction,
    VerdictActions,
};
use rampart_policy::{Direction, ObjectKind};
use serde::Serialize;

/// One finding of a scan, as the access log and events show it.
#[derive(Debug, Clone, Serialize)]
pub struct FindingRecord {
    pub verdict: &'static str,
    /// `too-large`, `bomb`, `engine-error`... for `unscannable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The object, archive entries joined with `!/`: `invoice.zip!/payload.exe`.
    pub path: String,
    pub engine: &'static str,
    /// Rule, signature, hash list entry or DLP profile.
    pub rule: String,
    pub file_type: &'static str,
    pub sha256: String,
    pub size: u64,
    /// DLP only: masked samples, never the data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
    /// Engine errors and timeouts: the engine's configured fail mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<&'static str>,
}

/// What inspection found in a flow's body and what the gateway did about it.
#[derive(Debug, Clone, Serialize)]
pub struct InspectionRecord {
    /// `download` or `upload`.
    #[serde(serialize_with = "crate::decision::serialize_as_text")]
    pub direction: Direction,
    /// The worst finding's verdict (`clean` without findings), written with
    /// its reason when unscannable, e.g. `unscannable: too-large`.
    #[serde(serialize_with = "crate::decision::serialize_as_text")]
    pub verdict: Verdict,
    pub file_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    pub sha256: String,
    pub size: u64,
    /// What the gateway did with the body: written `block`, `alert` or `allow`.
    pub action: VerdictAction,
    /// Why: `inspect.actions.malicious`, a policy rule, or an engine's fail mode.
    pub decided_by: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingRecord>,
    pub scan_ms: u64,
    /// Where the scan spent its time, for `rampart_inspect_scan_seconds`.
    #[serde(skip)]
    pub engine_times: Option<rampart_inspect::EngineTimes>,
}

impl InspectionRecord {
    /// True when the finding deserves a Detection Finding (anything but clean).
    pub fn is_finding(&self) -> bool {
        self.verdict != Verdict::Clean
    }

    /// Every verdict among the findings (`clean` when none), for the policy's
    /// `verdicts` condition.
    pub fn verdict_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.findings.iter().map(|f| f.verdict).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            names.push("clean");
        }
        names
    }

    /// DLP profiles that matched, for the policy's `dlp` condition.
    pub fn dlp_profiles(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.engine == "dlp")
            .map(|f| f.rule.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Whether the access decision the response phase recorded came from a rule on
/// the inspection verdict or DLP profile: then the policy has decided what
/// this verdict does, and `[inspect.actions]` (the default) does not apply.
pub fn policy_decided_verdict(record: &crate::access_log::FlowRecord) -> bool {
    record.policy.as_ref().is_some_and(|p| {
        p.matched
            .iter()
            .any(|m| matches!(m.kind, ObjectKind::Verdict | ObjectKind::Dlp))
    })
}

/// A scan's outcome with the default inspection policy applied.
pub struct Judgement {
    pub record: InspectionRecord,
    pub block: bool,
}

/// Applies `[inspect.actions]` to `report`. Engine errors and timeouts of an
/// engine configured `fail = "open"` pass (and are recorded as such); with
/// `fail = "closed"` they block. A body is never recorded as clean unless it
/// was scanned.
pub fn judge(
    report: &ScanReport,
    actions: &VerdictActions,
    direction: Direction,
    file_name: Option<String>,
) -> Judgement {
    let (action, decided_by) = match report.verdict {
        Verdict::Clean => (VerdictAction::Allow, "clean".to_string()),
        Verdict::Unscannable(_) if report.fails_open() => (
            VerdictAction::Alert,
            "the engine's fail = \"open\"".to_string(),
        ),
        Verdict::Unscannable(_)
            if report
                .findings
                .iter()
                .any(|f| f.fail == Some(rampart_inspect::FailMode::Closed)) =>
        {
            (
                VerdictAction::Block,
                "the engine's fail = \"closed\"".to_string(),
            )
        }
        Verdict::Malicious => (actions.malicious, "inspect.actions.malicious".to_string()),
        Verdict::Encrypted => (actions.encrypted, "inspect.actions.encrypted".to_string()),
        Verdict::Unscannable(_) => (
            actions.unscannable,
            "inspect.actions.unscannable".to_string(),
        ),
        Verdict::Sensitive => (actions.sensitive, "inspect.actions.sensitive".to_string()),
    };
    let findings = report
        .findings
        .iter()
        .map(|f| FindingRecord {
            verdict: f.verdict.as_str(),
            reason: f.reason.map(|r| r.as_str()),
            path: f.container_path.clone(),
            engine: f.engine.as_str(),
            rule: f.rule_or_signature.clone(),
            file_type: f.file_type.name(),
            sha256: f.sha256.clone(),
            size: f.size,
            masked: f.masked_matches.clone(),
            fail: f.fail.map(|m| m.as_str()),
        })
        .collect();
    Judgement {
        block: action == VerdictAction::Block,
        record: InspectionRecord {
            direction,
            verdict: report.verdict,
            file_type: report.file_type.name(),
            file_name,
            sha256: report.sha256.clone(),
            size: report.size,
            action,
            decided_by,
            findings,
            scan_ms: report.scan_time.as_millis() as u64,
            engine_times: Some(report.engine_times),
        },
    }
}

/// The reason a block page gives for a judgement, e.g.
/// `threat protection: malicious (EICAR-Test-File) in invoice.zip!/eicar.com`.
pub fn block_reason(record: &InspectionRecord) -> String {
    match record.findings.first() {
        Some(f) => format!(
            "threat protection: {} ({}) in {}",
            record.verdict, f.rule, f.path
        ),
        None => format!("threat protection: {}", record.verdict),
    }
}

/// The file name a download is known by: `Content-Disposition`'s `filename`,
/// else the last segment of the URL path.
pub fn download_name(headers: &http::HeaderMap, path: &str) -> Option<String> {
    let disposition = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';').find_map(|part| {
                let part = part.trim();
                part.strip_prefix("filename=")
                    .map(|n| n.trim_matches('"').to_string())
            })
        })
        .filter(|n| !n.is_empty());
    disposition.or_else(|| {
        let path = path.split(['?', '#']).next().unwrap_or("");
        path.rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

/// Bodies up to this size are finished on the async thread: hashing and typing
/// a few KiB costs less than a hop to the blocking pool.
const INLINE_FINISH: u64 = 256 * 1024;

/// Finishes `session`: inline for small bodies without clamd, otherwise on the
/// blocking pool, bounded by `timeout`. `None` when the scan did not finish in
/// time (the caller applies the unscannable action; nothing passes as clean).
pub async fn finish(
    inspector: &Arc<Inspector>,
    session: ScanSession,
    timeout: Duration,
) -> Option<ScanReport> {
    if session.size() <= INLINE_FINISH
        && inspector.config().clamav.is_none()
        && !session.is_streaming()
    {
        return Some(session.finish());
    }
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let (report, leftovers) = session.finish_deferred();
        // The verdict goes out first; freeing a large spool (its pages, the
        // file) happens after, off the held body's critical path.
        let _ = report_tx.send(report);
        drop(leftovers);
    });
    match tokio::time::timeout(timeout, report_rx).await {
        Ok(Ok(report)) => Some(report),
        _ => None,
    }
}

/// The record of a scan that did not finish within `inspect.hold_timeout`.
pub fn timed_out(
    actions: &VerdictActions,
    direction: Direction,
    file_name: Option<String>,
    size: u64,
) -> Judgement {
    let block = actions.unscannable == VerdictAction::Block;
    Judgement {
        block,
        record: InspectionRecord {
            direction,
            verdict: Verdict::Unscannable(UnscannableReason::Timeout),
            file_type: "unknown",
            file_name,
            sha256: String::new(),
            size,
            action: if block {
                VerdictAction::Block
            } else {
                VerdictAction::Alert
            },
            decided_by: "inspect.hold_timeout".into(),
            findings: Vec::new(),
            scan_ms: 0,
            engine_times: None,
        },
    }
}

/// A new download scan of a response for `path`.
pub fn download_session(
    inspector: &Inspector,
    headers: &http::HeaderMap,
    path: &str,
) -> (ScanSession, Option<String>) {
    let name = download_name(headers, path);
    let mut context = ScanContext::download();
    if let Some(n) = &name {
        context = context.with_file_name(n.clone());
    }
    (inspector.session(context), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_come_from_the_disposition_then_the_path() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            download_name(&headers, "/files/setup.exe?x=1").as_deref(),
            Some("setup.exe")
        );
        assert_eq!(download_name(&headers, "/"), None);
        headers.insert(
            http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"invoice.zip\"".parse().unwrap(),
        );
        assert_eq!(
            download_name(&headers, "/dl").as_deref(),
            Some("invoice.zip")
        );
    }

    #[test]
    fn eicar_is_blocked_and_clean_passes_by_default() {
        let inspector = Inspector::new(Default::default()).unwrap();
        let eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
        let report = inspector.scan_bytes(ScanContext::download(), eicar);
        let j = judge(
            &report,
            &VerdictActions::default(),
            Direction::Download,
            None,
        );
        assert!(j.block, "{:?}", j.record);
        assert_eq!(j.record.verdict, Verdict::Malicious);
        assert!(block_reason(&j.record).starts_with("threat protection: malicious"));
        let report = inspector.scan_bytes(ScanContext::download(), b"hello");
        let j = judge(
            &report,
            &VerdictActions::default(),
            Direction::Download,
            None,
        );
        assert!(!j.block);
        assert_eq!(j.record.action, VerdictAction::Allow);
    }
}
