//! Body wrappers that count bytes as they stream (nothing is buffered); the
//! response body carries its flow ([`Flow`]) and finishes it with the last byte.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::flow::Flow;

/// A client's request body on its way to the origin, counted: streamed, or
/// held whole first (an upload that inspection scanned before forwarding),
/// with the rest still streaming when only its start was held.
pub struct MeteredBody {
    held: VecDeque<Bytes>,
    /// An upload held on disk by inspection, forwarded before `inner`.
    spooled: Option<crate::upload_gate::SpooledUpload>,
    inner: Option<Incoming>,
    counter: Arc<AtomicU64>,
}

impl MeteredBody {
    pub fn new(inner: Incoming, counter: Arc<AtomicU64>) -> Self {
        MeteredBody {
            held: VecDeque::new(),
            spooled: None,
            inner: Some(inner),
            counter,
        }
    }

    /// `held` first (already read from the client), then `rest` if any.
    pub fn held(
        held: crate::upload_gate::HeldBody,
        rest: Option<Incoming>,
        counter: Arc<AtomicU64>,
    ) -> Self {
        let (held, spooled) = match held {
            crate::upload_gate::HeldBody::Memory(held) => (held, None),
            crate::upload_gate::HeldBody::Spooled(s) => (VecDeque::new(), Some(s)),
        };
        MeteredBody {
            held,
            spooled,
            inner: rest,
            counter,
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    // The client's failures are marked `ClientBodyError`, so a failure to read
    // its body is never blamed on the origin.
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.held.pop_front() {
            this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(spooled) = this.spooled.as_mut() {
            match std::task::ready!(spooled.poll_chunk(cx)) {
                Some(Ok(data)) => {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.spooled = None,
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled.map(|frame| {
            frame.map(|r| r.map_err(|e| Box::new(crate::error::ClientBodyError(e)) as BoxError))
        })
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty()
            && self.spooled.is_none()
            && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self.held.iter().map(|b| b.len() as u64).sum::<u64>()
            + self.spooled.as_ref().map_or(0, |s| s.remaining());
        match &self.inner {
            Some(inner) => {
                let hint = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + held);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + held);
                }
                out
            }
            None => SizeHint::with_exact(held),
        }
    }
}

type Inner = Either<Incoming, Either<Full<Bytes>, Empty<Bytes>>>;

pin_project_lite::pin_project! {
    /// Every response the proxy sends: an origin's streamed body or a body of
    /// its own, carrying the flow log.
    pub struct ProxyBody {
        #[pin]
        inner: Inner,
        log: Option<Flow>,
        // Bytes the response phase held to classify the body, sent first.
        held: Option<VecDeque<Bytes>>,
        // A long body scanned while it streams (content inspection).
        scan: Option<Box<BodyScan>>,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the response phase needs to decide a streamed body once its verdict is
/// known: owned copies of the request's facts (the body outlives the handler).
pub struct PolicyRecheck {
    policy: Arc<rampart_policy::Policy>,
    identity: rampart_policy::Identity,
    process: Option<rampart_policy::Process>,
    host: String,
    also_host: Option<String>,
    dst_ip: Option<std::net::IpAddr>,
    port: u16,
    method: String,
    path: String,
}

impl PolicyRecheck {
    pub fn new(
        state: &crate::state::GatewayState,
        held: &crate::response_gate::HeldRequest<'_>,
    ) -> PolicyRecheck {
        PolicyRecheck {
            policy: state.policy.clone(),
            identity: held.facts.identity.clone(),
            process: held.facts.process.cloned(),
            host: held.facts.host.to_string(),
            also_host: held.facts.also_host.map(str::to_string),
            dst_ip: held.facts.dst_ip,
            port: held.facts.port,
            method: held.method.to_string(),
            path: held.path.to_string(),
        }
    }

    /// The response phase with the scan's facts; the rule's block, if any.
    fn blocks(
        &self,
        record: &crate::inspection::InspectionRecord,
        log: &mut Flow,
    ) -> Option<crate::policy_stage::Blocked> {
        let facts = crate::policy_stage::FlowFacts {
            identity: &self.identity,
            process: self.process.as_ref(),
            host: &self.host,
            dst_ip: self.dst_ip,
            port: self.port,
            last: rampart_policy::EvalPoint::Response,
            also_host: self.also_host.as_deref(),
        };
        let verdicts = record.verdict_names();
        let dlp = record.dlp_profiles();
        let inspection = rampart_policy::InspectionFacts {
            file_type: Some(record.file_type),
            verdicts: &verdicts,
            dlp: &dlp,
            direction: Some(rampart_policy::Direction::Download),
            size: Some(record.size),
        };
        crate::policy_stage::response_phase(
            &self.policy,
            &facts,
            &self.method,
            &self.path,
            inspection,
            &mut log.record,
        )
        .blocked
    }
}

/// The scan of a body too long to hold whole: every chunk is fed to the
/// scanner as it passes, the last one is held until the verdict, and a body
/// the verdict refuses is cut before it (never delivered as if clean).
pub struct BodyScan {
    inspector: Arc<rampart_inspect::Inspector>,
    session: Option<rampart_inspect::ScanSession>,
    name: Option<String>,
    timeout: std::time::Duration,
    held_last: Option<Bytes>,
    finishing:
        Option<Pin<Box<dyn std::future::Future<Output = crate::inspection::Judgement> + Send>>>,
    done: bool,
    /// Set when a policy rule waits for the response: it decides with the verdict.
    recheck: Option<PolicyRecheck>,
}

impl BodyScan {
    pub fn new(
        inspector: Arc<rampart_inspect::Inspector>,
        session: rampart_inspect::ScanSession,
        name: Option<String>,
        timeout: std::time::Duration,
        recheck: Option<PolicyRecheck>,
    ) -> Box<BodyScan> {
        let mut session = session;
        // A body too long to hold: hashing, spooling and clamd run on the
        // session's own thread while this one forwards.
        session.stream_in_background();
        Box::new(BodyScan {
            inspector,
            session: Some(session),
            name,
            timeout,
            held_last: None,
            finishing: None,
            done: false,
            recheck,
        })
    }

    fn start_finish(&mut self) {
        let Some(session) = self.session.take() else {
            self.done = true;
            return;
        };
        let inspector = self.inspector.clone();
        let name = self.name.take();
        let timeout = self.timeout;
        self.finishing = Some(Box::pin(async move {
            let size = session.size();
            let actions = inspector.config().actions.clone();
            match crate::inspection::finish(&inspector, session, timeout).await {
                Some(report) => crate::inspection::judge(
                    &report,
                    &actions,
                    rampart_policy::Direction::Download,
                    name,
                ),
                None => crate::inspection::timed_out(
                    &actions,
                    rampart_policy::Direction::Download,
                    name,
                    size,
                ),
            }
        }));
    }

    fn poll(
        &mut self,
        mut inner: Pin<&mut Inner>,
        log: &mut Option<Flow>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(self.held_last.take().map(|last| {
                    if let Some(log) = log.as_mut() {
                        log.record.bytes_to_client += last.len() as u64;
                    }
                    Ok(Frame::data(last))
                }));
            }
            if let Some(finishing) = self.finishing.as_mut() {
                let mut judgement = std::task::ready!(finishing.as_mut().poll(cx));
                self.finishing = None;
                self.done = true;
                if let Some(log) = log.as_mut() {
                    let mut reason = crate::inspection::block_reason(&judgement.record);
                    if let Some(recheck) = &self.recheck {
                        match recheck.blocks(&judgement.record, log) {
                            Some(blocked) => {
                                judgement.block = true;
                                reason = format!("blocked by rule \"{}\"", blocked.rule);
                            }
                            // A rule that allowed this verdict on purpose wins over the default.
                            None if crate::inspection::policy_decided_verdict(&log.record) => {
                                judgement.block = false;
                            }
                            None => {}
                        }
                    }
                    if judgement.block {
                        log.record.error =
                            Some(format!("download cut before its last bytes: {reason}"));
                        log.metrics().error("inspection");
                    }
                    log.record.inspection = Some(judgement.record);
                }
                if judgement.block {
                    self.held_last = None;
                    return Poll::Ready(Some(Err("refused by content inspection".into())));
                }
                continue;
            }
            if let Some(session) = self.session.as_mut() {
                // The scan's queue is full: read on once it caught up, so a
                // slow engine slows the download rather than grow memory.
                std::task::ready!(session.poll_ready(cx));
            }
            match std::task::ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(session) = self.session.as_mut() {
                            // Shared, not copied. A spool failure is recorded in
                            // the session and reported by its verdict
                            // (unscannable), never dropped.
                            session.feed_bytes(data.clone());
                        }
                        if let Some(previous) = self.held_last.replace(data) {
                            if let Some(log) = log.as_mut() {
                                log.record.bytes_to_client += previous.len() as u64;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(previous))));
                        }
                    }
                    // Trailers end the body (they are not forwarded after a scan).
                    Err(_) => self.start_finish(),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.start_finish(),
            }
        }
    }
}

impl ProxyBody {
    pub fn origin(inner: Incoming, log: Flow) -> Self {
        ProxyBody {
            inner: Either::Left(inner),
            log: Some(log),
            held: None,
            scan: None,
        }
    }

    /// An origin's body whose first bytes the response phase held: `held`
    /// goes out first, then `rest` (absent when the body had ended).
    pub fn held(held: VecDeque<Bytes>, rest: Option<Incoming>, log: Flow) -> Self {
        let inner = match rest {
            Some(rest) => Either::Left(rest),
            None => Either::Right(Either::Right(Empty::new())),
        };
        ProxyBody {
            inner,
            log: Some(log),
            held: Some(held),
            scan: None,
        }
    }

    /// An origin's body scanned while it streams: `held` (already fed to the
    /// scan) goes out first, then `rest` through the scan.
    pub fn scanned(held: VecDeque<Bytes>, rest: Incoming, scan: Box<BodyScan>, log: Flow) -> Self {
        ProxyBody {
            inner: Either::Left(rest),
            log: Some(log),
            held: Some(held),
            scan: Some(scan),
        }
    }

    pub fn full(bytes: impl Into<Bytes>, log: Option<Flow>) -> Self {
        ProxyBody {
            inner: Either::Right(Either::Left(Full::new(bytes.into()))),
            log,
            held: None,
            scan: None,
        }
    }

    pub fn empty(log: Option<Flow>) -> Self {
        ProxyBody {
            inner: Either::Right(Either::Right(Empty::new())),
            log,
            held: None,
            scan: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Some(held) = this.held.as_mut() {
            if let Some(data) = held.pop_front() {
                if let Some(log) = this.log.as_mut() {
                    log.record.bytes_to_client += data.len() as u64;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            *this.held = None;
        }
        if let Some(scan) = this.scan.as_mut() {
            return scan.poll(this.inner, this.log, cx);
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                log.record.bytes_to_client += data.len() as u64;
            }
        }
        if let (Poll::Ready(Some(Err(e))), Some(log)) = (&polled, this.log.as_mut()) {
            // The status already went out; the log says why the body did not.
            log.record.error = Some(format!("the origin's response body failed: {e}"));
        }
        // The finish phase with the body's last frame: the flow's event is
        // handed on as the last bytes go out, not whenever hyper drops the
        // body (a connection kept alive may hold it until its next request).
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(flow) = this.log.take() {
                flow.finish();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.as_ref().is_none_or(VecDeque::is_empty)
            && self.scan.is_none()
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .held
            .as_ref()
            .map_or(0, |h| h.iter().map(|b| b.len() as u64).sum());
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
