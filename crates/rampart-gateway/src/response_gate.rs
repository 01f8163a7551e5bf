//! The response phase's hold: when the request phase left access pending on a
//! rule that needs the response (a `file_types` condition), the response head
//! and its first bytes are held, the file type is classified by magic bytes
//! (`rampart_inspect::file_type`), and the whole access stage is evaluated
//! again. Blocked: the client gets the block page and the origin's body is
//! dropped. Allowed: the held bytes go out first, then the rest streams.
//!
//! With no pending rule this module is not entered: a flow without response
//! rules pays nothing for it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::policy_stage::{self, FlowFacts};
use crate::proxy::body::{FlowLog, ProxyBody};
use crate::proxy::{blocked_response, error_response};
use rampart_policy::Policy;

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

/// How long the origin may take to send the first bytes of a held body.
const HOLD_TIMEOUT: Duration = Duration::from_secs(30);

/// Holds `response` until its file type is known, runs the response phase, and
/// answers with the block page or the response (held bytes first).
pub async fn decide(
    policy: &Policy,
    held: HeldRequest<'_>,
    response: Response<Incoming>,
    mut log: FlowLog,
) -> Response<ProxyBody> {
    let (parts, mut body) = response.into_parts();
    let mut prefix: VecDeque<Bytes> = VecDeque::new();
    let mut have = 0usize;
    let mut ended = false;
    let read = async {
        while have < rampart_inspect::file_type::SNIFF_LEN {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        have += data.len();
                        prefix.push_back(data);
                    }
                    // Trailers end the body; they are not forwarded here.
                }
                Some(Err(e)) => return Err(e),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(HOLD_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let reason = format!("the origin's response body failed before its type was known: {e}");
            return error_response(StatusCode::BAD_GATEWAY, &reason, log, Some("origin"));
        }
        Err(_) => {
            // Never passed without a decision: a body that does not start is
            // refused like any origin that does not answer.
            let reason = format!(
                "the origin sent no body within {}s, so its file type could not be checked",
                HOLD_TIMEOUT.as_secs()
            );
            return error_response(StatusCode::GATEWAY_TIMEOUT, &reason, log, Some("timeout"));
        }
    }
    let head: Vec<u8> = prefix.iter().flat_map(|b| b.iter().copied()).collect();
    // An empty body has no type: rules on file types cannot match it.
    let file_type = (!head.is_empty()).then(|| rampart_inspect::file_type::sniff(&head).name());
    log.record.file_type = file_type;
    let stage = policy_stage::response_phase(
        policy,
        &held.facts,
        held.method,
        held.path,
        rampart_policy::InspectionFacts {
            file_type,
            ..Default::default()
        },
        &mut log.record,
    );
    if let Some(blocked) = &stage.blocked {
        return blocked_response(blocked, held.accept.as_ref(), Some(&held.url), log);
    }
    let rest = (!ended).then_some(body);
    Response::from_parts(parts, ProxyBody::held(prefix, rest, log))
}
