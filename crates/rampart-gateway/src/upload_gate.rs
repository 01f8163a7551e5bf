//! Uploads (request bodies of plain HTTP and decrypted requests) are scanned
//! before they are forwarded (DESIGN §6a: DLP, malware, encrypted files going
//! out). The body is held whole, scanned, and then either refused with the
//! block page — the origin never sees a byte — or forwarded from the held copy.
//!
//! Memory per upload is bounded: up to `inspect.memory_threshold` the body is
//! held in memory; past it, the scan's own spool file under the data dir holds
//! it (written once, read back for forwarding, unlinked when the flow ends).
//! A body larger than `inspect.max_scan_size` cannot be held: reading stops
//! there, the upload is recorded as `unscannable: too-large` with
//! `inspect.actions.unscannable` applied (block refuses it before anything is
//! sent), and otherwise the held part is forwarded followed by the rest as it
//! comes — an unscanned upload is never recorded as clean.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rampart_inspect::{
    Inspector, ScanContext, ScanSession, UnscannableReason, Verdict, VerdictAction,
};
use rampart_policy::Direction;

use crate::flow::Flow;
use crate::inspection::{self, FindingRecord, InspectionRecord, Judgement};
use crate::policy_stage::{self, Blocked};
use crate::proxy::body::{MeteredBody, ProxyBody};
use crate::proxy::{blocked_response, error_response};
use crate::response_gate::HeldRequest;
use crate::state::GatewayState;
use http::{Response, StatusCode};

/// Bytes read back from the spool file per chunk forwarded.
const SPOOL_READ_CHUNK: u64 = 256 * 1024;

/// An upload held on disk: the scan's spool file (the first `len` bytes of
/// the body), read back in chunks on the blocking pool, then `tail` — bytes
/// read from the client but not kept by the scan (past `max_scan_size`).
pub struct SpooledUpload {
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    reading: Option<tokio::task::JoinHandle<io::Result<Bytes>>>,
    tail: VecDeque<Bytes>,
}

impl SpooledUpload {
    fn new(file: std::fs::File, len: u64, tail: VecDeque<Bytes>) -> SpooledUpload {
        SpooledUpload {
            file: Arc::new(file),
            offset: 0,
            len,
            reading: None,
            tail,
        }
    }

    /// Bytes still to forward.
    pub fn remaining(&self) -> u64 {
        self.len - self.offset + self.tail.iter().map(|b| b.len() as u64).sum::<u64>()
    }

    /// The next chunk to forward; `None` once everything held went out.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Some(reading) = self.reading.as_mut() {
                let result = std::task::ready!(Pin::new(reading).poll(cx));
                self.reading = None;
                let chunk = match result {
                    Ok(Ok(chunk)) if chunk.is_empty() => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the held upload's spool file ended early",
                    )),
                    Ok(Ok(chunk)) => {
                        self.offset += chunk.len() as u64;
                        Ok(chunk)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                return Poll::Ready(Some(chunk.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading the held upload back from its spool file: {e}"),
                    )
                })));
            }
            if self.offset < self.len {
                let file = self.file.clone();
                let offset = self.offset;
                let n = SPOOL_READ_CHUNK.min(self.len - offset) as usize;
                // Positioned reads: the scan may still be moving the shared offset.
                self.reading = Some(tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    let got = file.read_at(&mut buf, offset)?;
                    buf.truncate(got);
                    Ok(Bytes::from(buf))
                }));
                continue;
            }
            return Poll::Ready(self.tail.pop_front().map(Ok));
        }
    }
}

/// Where a held upload is.
pub enum HeldBody {
    /// In memory, whole or up to `max_scan_size`.
    Memory(VecDeque<Bytes>),
    /// On disk (past `memory_threshold`).
    Spooled(SpooledUpload),
}

/// What holding an upload gave.
pub enum Upload {
    /// No body, or inspection off: forward as it comes.
    Stream(Incoming),
    /// Held and judged; forward `held` then `rest` unless the judgement blocks.
    Judged {
        held: HeldBody,
        rest: Option<Incoming>,
        judgement: Box<Judgement>,
    },
}

/// Reading the client's body failed while it was held, or it could not be held.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("malformed request body from the client: {0}")]
    Client(String),
    #[error("the client sent its request body too slowly (inspect.hold_timeout)")]
    Timeout,
    /// Never forwarded unscanned: the upload is refused.
    #[error("the upload could not be held for inspection: cannot spool it to disk ({0}); check the spool directory (inspect.spool_dir) and free space")]
    Spool(String),
}

impl UploadError {
    fn status(&self) -> StatusCode {
        match self {
            UploadError::Client(_) | UploadError::Timeout => StatusCode::BAD_REQUEST,
            UploadError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            UploadError::Client(_) | UploadError::Timeout => "client_body",
            UploadError::Spool(_) => "inspection",
        }
    }
}

/// An upload being read from the client: in memory until the scan's spool
/// spills to disk, then from the spool file.
struct Holding {
    memory: VecDeque<Bytes>,
    file: Option<std::fs::File>,
    /// Bytes read but not kept by the scan (past `max_scan_size`).
    tail: VecDeque<Bytes>,
    read: u64,
}

impl Holding {
    /// Feeds `data` to the scan and keeps it where the body is held.
    fn take(&mut self, session: &mut ScanSession, data: Bytes) -> Result<(), UploadError> {
        let kept_before = session.kept_len();
        // Shared with `memory` below while the scan's spool is in memory:
        // the upload is held once, not twice.
        session
            .feed_shared(data.clone())
            .map_err(|e| UploadError::Spool(e.to_string()))?;
        self.read += data.len() as u64;
        if self.file.is_none() {
            if let Some(file) = session.spool_file() {
                // The spool file now holds every byte kept so far: the
                // in-memory copy is no longer needed.
                self.file = Some(file.map_err(|e| UploadError::Spool(e.to_string()))?);
                self.memory.clear();
            } else {
                self.memory.push_back(data);
                return Ok(());
            }
        }
        let kept = (session.kept_len() - kept_before) as usize;
        if kept < data.len() {
            self.tail.push_back(data.slice(kept..));
        }
        Ok(())
    }

    fn into_body(self, kept_len: u64) -> HeldBody {
        match self.file {
            Some(file) => HeldBody::Spooled(SpooledUpload::new(file, kept_len, self.tail)),
            None => HeldBody::Memory(self.memory),
        }
    }
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
    if let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        context = context.with_content_type(ct);
    }
    let mut session = inspector.session(context);
    let timeout = inspector.config().hold_timeout;
    let limit = inspector.config().max_scan_size;
    let mut holding = Holding {
        memory: VecDeque::new(),
        file: None,
        tail: VecDeque::new(),
        read: 0,
    };
    let mut ended = false;
    let read = async {
        while holding.read <= limit {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        holding.take(&mut session, data)?;
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
    let read = holding.read;
    let kept_len = session.kept_len();
    let judgement = if ended {
        match inspection::finish(inspector, session, timeout).await {
            Some(report) => inspection::judge(&report, actions, Direction::Upload, name),
            None => inspection::timed_out(actions, Direction::Upload, name, read),
        }
    } else {
        too_large(actions.unscannable, name, read, limit)
    };
    Ok(Upload::Judged {
        held: holding.into_body(kept_len),
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
    mut log: Flow,
) -> Result<(MeteredBody, Flow), Response<ProxyBody>> {
    let upload = match hold(state.inspector.as_ref(), body, headers, held.path).await {
        Ok(upload) => upload,
        Err(e) => {
            return Err(error_response(
                e.status(),
                &e.to_string(),
                log,
                Some(e.kind()),
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
fn too_large(action: VerdictAction, name: Option<String>, held: u64, limit: u64) -> Judgement {
    let block = action == VerdictAction::Block;
    Judgement {
        block,
        record: InspectionRecord {
            direction: Direction::Upload,
            verdict: Verdict::Unscannable(UnscannableReason::TooLarge),
            file_type: "unknown",
            file_name: name.clone(),
            sha256: String::new(),
            size: held,
            action,
            decided_by: "inspect.actions.unscannable".into(),
            findings: vec![FindingRecord {
                verdict: "unscannable",
                reason: Some("too-large"),
                path: name.unwrap_or_else(|| "upload".into()),
                engine: "scanner",
                rule: format!("larger than max_scan_size ({limit} bytes)"),
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
