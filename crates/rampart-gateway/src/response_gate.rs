//! The response phase: holds the response head and the first bytes of its
//! body when something needs them —
//!
//! - the request phase left access pending on a rule that needs the response
//!   (`file_types`): the whole access stage is evaluated again with the file
//!   type found by magic bytes (`rampart_inspect::file_type`);
//! - content inspection is on (`[inspect]`, DESIGN §6a): the body is scanned.
//!
//! A body that ends within the hold (`inspect.memory_threshold`, 1 MiB by
//! default) is scanned whole before a byte goes out, so a refused download gets
//! the block page naming the file and the reason. A longer body streams while
//! it is scanned, its last chunk held until the verdict; a refused one is cut
//! before that chunk (the client sees an incomplete transfer, never a clean
//! one). Allowed: the held bytes go out first, then the rest streams.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rampart_policy::Direction;

use crate::flow::Flow;
use crate::inspection::{self, Judgement};
use crate::policy_stage::{self, Blocked, FlowFacts};
use crate::proxy::body::{BodyScan, PolicyRecheck, ProxyBody};
use crate::proxy::{blocked_response, error_response};
use crate::state::GatewayState;

/// What the request phase knew, for the response phase to decide with.
pub struct HeldRequest<'a> {
    pub facts: FlowFacts<'a>,
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The request's `Accept`, for the block page's form.
    pub accept: Option<HeaderValue>,
    /// The URL the block page names.
    pub url: String,
}

/// Whether the response phase must see this response at all: with nothing
/// pending and inspection off, the response streams untouched.
pub fn needed(state: &GatewayState, pending: bool) -> bool {
    pending || state.inspector.is_some()
}

/// Bytes held to classify a body when only a file-type rule needs them.
const SNIFF_HOLD: usize = rampart_inspect::SNIFF_LEN;

/// Bytes held of a body declared longer than `inspect.memory_threshold`:
/// enough for the scan to type it (ISO images included) before it streams.
const LONG_BODY_HOLD: usize = rampart_inspect::ISO_SNIFF_LEN;

/// Holds `response` as the phase needs, decides, and answers with the block
/// page or the response (held bytes first).
pub async fn respond(
    state: &GatewayState,
    held: HeldRequest<'_>,
    pending: bool,
    response: Response<Incoming>,
    mut log: Flow,
) -> Response<ProxyBody> {
    let (parts, mut body) = response.into_parts();
    // HEAD, 204, 304: nothing to classify or scan; a pending rule on the
    // response's type cannot match a response without a body.
    if body.is_end_stream() {
        if pending {
            if let Some(blocked) = policy_blocks(state, &held, Default::default(), &mut log) {
                return blocked_response(&blocked, held.accept.as_ref(), Some(&held.url), log);
            }
        }
        return Response::from_parts(parts, ProxyBody::origin(body, log));
    }
    let inspector = state.inspector.clone();
    let limit = match &inspector {
        // A body whose declared length is past the hold cannot end within
        // it: it streams anyway, so only the bytes that type it are held
        // (not memory_threshold of them per flow while the hold lasts).
        Some(i) if body.size_hint().lower() > i.config().memory_threshold => LONG_BODY_HOLD,
        Some(i) => (i.config().memory_threshold as usize).max(SNIFF_HOLD),
        None => SNIFF_HOLD,
    };
    let hold_timeout = inspector
        .as_ref()
        .map_or(Duration::from_secs(30), |i| i.config().hold_timeout);
    let mut scan = inspector
        .as_ref()
        .map(|i| inspection::download_session(i, &parts.headers, held.path));
    let mut prefix: VecDeque<Bytes> = VecDeque::new();
    let mut have = 0usize;
    let mut ended = false;
    let read = async {
        while have < limit {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if let Some((session, _)) = scan.as_mut() {
                            // Shared with `prefix`, not copied.
                            session
                                .feed_shared(data.clone())
                                .map_err(|e| e.to_string())?;
                        }
                        have += data.len();
                        prefix.push_back(data);
                    }
                    // Trailers end the body; they are not forwarded here.
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        Ok(())
    };
    // A small response's body usually came with its head: then it is held
    // without arming the hold timer.
    let mut read = std::pin::pin!(read);
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let held_in_time = match first {
        Poll::Ready(outcome) => Ok(outcome),
        Poll::Pending => tokio::time::timeout(hold_timeout, read).await,
    };
    match held_in_time {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let reason = format!("the origin's response body failed while it was held: {e}");
            return error_response(StatusCode::BAD_GATEWAY, &reason, log, Some("origin"));
        }
        Err(_) => {
            // Never passed without a decision: a body that does not come is
            // refused like any origin that does not answer.
            let reason = format!(
                "the origin's body did not arrive within {}s (inspect.hold_timeout)",
                hold_timeout.as_secs()
            );
            return error_response(StatusCode::GATEWAY_TIMEOUT, &reason, log, Some("timeout"));
        }
    }

    if ended {
        // The whole body is here: scan it, then decide before a byte goes out.
        let judgement = match (scan, &inspector) {
            (Some((session, name)), Some(inspector)) => {
                let size = session.size();
                Some(
                    match inspection::finish(inspector, session, hold_timeout).await {
                        Some(report) => inspection::judge(
                            &report,
                            &inspector.config().actions,
                            Direction::Download,
                            name,
                        ),
                        None => inspection::timed_out(
                            &inspector.config().actions,
                            Direction::Download,
                            name,
                            size,
                        ),
                    },
                )
            }
            _ => None,
        };
        let file_type = match &judgement {
            Some(j) => j.record.file_type,
            None => sniff(&prefix),
        };
        log.record.file_type = Some(file_type);
        let mut policy_decided = false;
        if pending {
            let verdicts = judgement
                .as_ref()
                .map(|j| j.record.verdict_names())
                .unwrap_or_default();
            let dlp = judgement
                .as_ref()
                .map(|j| j.record.dlp_profiles())
                .unwrap_or_default();
            let size = prefix.iter().map(|b| b.len() as u64).sum();
            let facts = rampart_policy::InspectionFacts {
                file_type: Some(file_type),
                verdicts: &verdicts,
                dlp: &dlp,
                direction: Some(rampart_policy::Direction::Download),
                size: Some(size),
            };
            if let Some(blocked) = policy_blocks(state, &held, facts, &mut log) {
                if let Some(j) = judgement {
                    log.record.inspection = Some(j.record);
                }
                return blocked_response(&blocked, held.accept.as_ref(), Some(&held.url), log);
            }
            policy_decided = inspection::policy_decided_verdict(&log.record);
        }
        if let Some(Judgement { record, block }) = judgement {
            let reason = inspection::block_reason(&record);
            log.record.inspection = Some(record);
            // A policy rule that allowed this verdict on purpose wins over the default.
            if block && !policy_decided {
                log.metrics().error("inspection");
                let blocked = Blocked {
                    rule: Arc::from(reason.as_str()),
                    category: None,
                };
                return blocked_response(&blocked, held.accept.as_ref(), Some(&held.url), log);
            }
        }
        return Response::from_parts(parts, ProxyBody::held(prefix, None, log));
    }

    // A long body: the type is known from its first bytes; the verdict comes at its end.
    let file_type = rampart_inspect::sniff(&head_of(&prefix)).name();
    log.record.file_type = Some(file_type);
    if pending && inspector.is_none() {
        // Not scanned: the type is all the response phase will ever know.
        let facts = rampart_policy::InspectionFacts {
            file_type: Some(file_type),
            direction: Some(rampart_policy::Direction::Download),
            ..Default::default()
        };
        if let Some(blocked) = policy_blocks(state, &held, facts, &mut log) {
            return blocked_response(&blocked, held.accept.as_ref(), Some(&held.url), log);
        }
    }
    // Scanned while it streams: the response phase runs when the verdict is
    // known, with every fact at once (BodyScan), and cuts the body if it blocks.
    match (scan, inspector) {
        (Some((session, name)), Some(inspector)) => {
            let recheck = pending.then(|| PolicyRecheck::new(state, &held));
            let scan = BodyScan::new(inspector, session, name, hold_timeout, recheck);
            Response::from_parts(parts, ProxyBody::scanned(prefix, body, scan, log))
        }
        _ => Response::from_parts(parts, ProxyBody::held(prefix, Some(body), log)),
    }
}

/// The response phase's policy decision with what is known of the body:
/// the block, if a rule blocks.
fn policy_blocks(
    state: &GatewayState,
    held: &HeldRequest<'_>,
    inspection: rampart_policy::InspectionFacts<'_>,
    log: &mut Flow,
) -> Option<Blocked> {
    policy_stage::response_phase(
        &state.policy,
        &held.facts,
        held.method,
        held.path,
        inspection,
        &mut log.record,
    )
    .blocked
}

/// The first [`SNIFF_HOLD`] bytes of the held chunks.
fn head_of(prefix: &VecDeque<Bytes>) -> Vec<u8> {
    let mut head = Vec::with_capacity(SNIFF_HOLD);
    for chunk in prefix {
        let want = SNIFF_HOLD - head.len();
        if want == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..want.min(chunk.len())]);
    }
    head
}

fn sniff(prefix: &VecDeque<Bytes>) -> &'static str {
    let head = head_of(prefix);
    // An empty body has no type: rules on file types cannot match it.
    if head.is_empty() {
        return "empty";
    }
    rampart_inspect::sniff(&head).name()
}
