//! Uploads (request bodies of plain HTTP and decrypted requests) are scanned
//! before they are forwarded (DESIGN §6a: DLP, malware, encrypted files going
//! out). The body is held whole, up to [`UPLOAD_HOLD`], scanned, and then either
//! refused with the block page — the origin never sees a byte — or forwarded
//! from the held copy. A larger body cannot be held: it is forwarded and
//! recorded as `unscannable: too-large`, with `inspect.actions.unscannable`
//! applied (block refuses it before anything is sent), so an unscanned upload
//! is never recorded as clean.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rampart_inspect::{Inspector, ScanContext, VerdictAction};

use crate::inspection::{self, FindingRecord, InspectionRecord, Judgement};
use crate::policy_stage::{self, Blocked};
use crate::proxy::body::{FlowLog, MeteredBody, ProxyBody};
use crate::proxy::{blocked_response, error_response};
use crate::response_gate::HeldRequest;
use crate::state::GatewayState;
use http::{Response, StatusCode};

/// The most of one upload held in memory to scan it before forwarding.
pub const UPLOAD_HOLD: usize = 8 * 1024 * 1024;

/// What holding an upload gave.
pub enum Upload {
    /// No body, or inspection off: forward as it comes.
    Stream(Incoming),
    /// Held and judged; forward `held` then `rest` unless the judgement blocks.
    Judged {
        held: VecDeque<Bytes>,
        rest: Option<Incoming>,
        judgement: Box<Judgement>,
    },
}

/// Reading the client's body failed while it was held.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("malformed request body from the client: {0}")]
    Client(String),
    #[error("the client sent its request body too slowly (inspect.hold_timeout)")]
    Timeout,
}

/// Holds and scans `body` when inspection is on and it has one.
pub async fn hold(
    inspector: Option<&Arc<Inspector>>,
    body: Incoming,
    headers: &http::HeaderMap,
    path: &str,
) -> Result<Upload, UploadError> {
    let Some(inspector) = inspector else {
        return Ok(Upload::Stream(body));
    };
    if body.is_end_stream() {
        return Ok(Upload::Stream(body));
    }
    let mut body = body;
    let name = inspection::download_name(headers, path);
    let mut context = ScanContext::upload();
    if let Some(n) = &name {
        context = context.with_file_name(n.clone());
    }
    let mut session = inspector.session(context);
    let timeout = inspector.config().hold_timeout;
    let mut held: VecDeque<Bytes> = VecDeque::new();
    let mut have = 0usize;
    let mut ended = false;
    let read = async {
        while have <= UPLOAD_HOLD {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // A spool failure is reported by the verdict, never dropped.
                        let _ = session.feed(&data);
                        have += data.len();
                        held.push_back(data);
                    }
                }
                Some(Err(e)) => return Err(UploadError::Client(e.to_string())),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(UploadError::Timeout),
    }
    let actions = &inspector.config().actions;
    let judgement = if ended {
        let size = session.size();
        match inspection::finish(inspector, session, timeout).await {
            Some(report) => inspection::judge(&report, actions, "upload", name),
            None => inspection::timed_out(actions, "upload", name, size),
        }
    } else {
        too_large(actions.unscannable, name, have as u64)
    };
    Ok(Upload::Judged {
        held,
        rest: (!ended).then_some(body),
        judgement: Box::new(judgement),
    })
}

/// The request phase for an upload: holds and scans `body` (when inspection is
/// on), lets the policy decide on the verdict when a rule waits for it
/// (`direction = "upload"`, `dlp`, `verdicts`), applies `[inspect.actions]`
/// otherwise, and gives the body to forward — or the block page, sent before
/// the origin sees a byte.
pub async fn screen(
    state: &GatewayState,
    held: &HeldRequest<'_>,
    pending: bool,
    body: Incoming,
    headers: &http::HeaderMap,
    mut log: FlowLog,
) -> Result<(MeteredBody, FlowLog), Response<ProxyBody>> {
    let upload = match hold(state.inspector.as_ref(), body, headers, held.path).await {
        Ok(upload) => upload,
        Err(e) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                log,
                Some("client_body"),
            ))
        }
    };
    let (held_bytes, rest, judgement) = match upload {
        Upload::Stream(body) => {
            let counter = log.request_counter();
            return Ok((MeteredBody::new(body, counter), log));
        }
        Upload::Judged {
            held,
            rest,
            judgement,
        } => (held, rest, judgement),
    };
    let Judgement { record, block } = *judgement;
    if pending {
        let verdicts = record.verdict_names();
        let dlp = record.dlp_profiles();
        let facts = rampart_policy::InspectionFacts {
            file_type: Some(record.file_type),
            verdicts: &verdicts,
            dlp: &dlp,
            direction: Some(rampart_policy::Direction::Upload),
            size: Some(record.size),
        };
        let mut probe = log.record.clone();
        let stage = policy_stage::response_phase(
            &state.policy,
            &held.facts,
            held.method,
            held.path,
            facts,
            &mut probe,
        );
        if let Some(blocked) = &stage.blocked {
            log.record.policy = probe.policy;
            log.record.upload_inspection = Some(record);
            return Err(blocked_response(
                blocked,
                held.accept.as_ref(),
                Some(&held.url),
                log,
            ));
        }
        if inspection::policy_decided_verdict(&probe) {
            // The policy allowed this verdict on purpose: no default action.
            log.record.upload_inspection = Some(record);
            let counter = log.request_counter();
            return Ok((MeteredBody::held(held_bytes, rest, counter), log));
        }
    }
    let reason = inspection::block_reason(&record);
    log.record.upload_inspection = Some(record);
    if block {
        log.metrics().error("inspection");
        let blocked = Blocked {
            rule: Arc::from(reason.as_str()),
            category: None,
        };
        return Err(blocked_response(
            &blocked,
            held.accept.as_ref(),
            Some(&held.url),
            log,
        ));
    }
    let counter = log.request_counter();
    Ok((MeteredBody::held(held_bytes, rest, counter), log))
}

/// The record of an upload too large to hold: never clean, the unscannable action applies.
fn too_large(action: VerdictAction, name: Option<String>, held: u64) -> Judgement {
    let block = action == VerdictAction::Block;
    Judgement {
        block,
        record: InspectionRecord {
            direction: "upload",
            verdict: "unscannable: too-large".into(),
            file_type: "unknown",
            file_name: name.clone(),
            sha256: String::new(),
            size: held,
            action: match action {
                VerdictAction::Block => "block",
                VerdictAction::Alert => "alert",
                VerdictAction::Allow => "allow",
            },
            decided_by: "inspect.actions.unscannable".into(),
            findings: vec![FindingRecord {
                verdict: "unscannable",
                reason: Some("too-large"),
                path: name.unwrap_or_else(|| "upload".into()),
                engine: "scanner",
                rule: format!("larger than the upload hold ({} MiB)", UPLOAD_HOLD >> 20),
                file_type: "unknown",
                sha256: String::new(),
                size: held,
                masked: Vec::new(),
                fail: None,
            }],
            scan_ms: 0,
            engine_times: None,
        },
    }
}
