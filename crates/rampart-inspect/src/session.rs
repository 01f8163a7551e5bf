//! One body's scan: fed chunk by chunk while the gateway forwards it, then
//! finished (blocking; call it under `spawn_blocking`) for the verdict.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::clamd::{ClamdError, ClamdStream, ClamdVerdict};
use crate::error::InspectError;
use crate::file_type::{sniff, FileType, ISO_SNIFF_LEN};
use crate::inspector::Inner;
use crate::scanner::Walk;
use crate::spool::Spool;
use crate::verdict::{Direction, Engine, Finding, ScanReport, UnscannableReason, Verdict};

/// What the gateway knows about a body. Only used for naming and for the
/// direction: the type always comes from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanContext {
    pub direction: Direction,
    /// From `Content-Disposition`, a multipart part or the URL path.
    pub file_name: Option<String>,
    pub content_type: Option<String>,
}

impl ScanContext {
    pub fn download() -> ScanContext {
        ScanContext {
            direction: Direction::Download,
            file_name: None,
            content_type: None,
        }
    }

    pub fn upload() -> ScanContext {
        ScanContext {
            direction: Direction::Upload,
            file_name: None,
            content_type: None,
        }
    }

    pub fn with_file_name(mut self, name: impl Into<String>) -> ScanContext {
        self.file_name = Some(name.into());
        self
    }

    /// The body's `Content-Type`: an upload sent as `multipart/form-data` is
    /// scanned part by part, each named by its file name.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> ScanContext {
        self.content_type = Some(content_type.into());
        self
    }
}

/// A body being scanned. Memory is bounded by `memory_threshold`; the spool
/// file (if any) is deleted when the session drops.
///
/// Chunks are taken in one of two ways. Inline (the default), [`feed`]
/// hashes and spools each chunk on the caller's thread: right for short
/// bodies and for uploads, which are held whole anyway. Once a download is
/// known to be long, [`stream_in_background`] moves that work to a thread of
/// the session's own, so the gateway's thread only forwards: chunks are
/// handed over by reference ([`feed_bytes`], no copy), hashed and spooled
/// there while the body streams, and — with clamd configured — sent to clamd
/// as they arrive, so that at the end only the engines that need the whole
/// body (archives, YARA) remain. The queue between the two is bounded
/// ([`poll_ready`]), so a slow engine slows the download instead of growing
/// memory.
///
/// [`feed`]: ScanSession::feed
/// [`feed_bytes`]: ScanSession::feed_bytes
/// [`poll_ready`]: ScanSession::poll_ready
/// [`stream_in_background`]: ScanSession::stream_in_background
pub struct ScanSession {
    inner: Arc<Inner>,
    context: ScanContext,
    /// Bytes fed so far (also those still queued for the background thread).
    size: u64,
    intake: IntakeState,
}

enum IntakeState {
    Inline(Box<Intake>),
    Background(Background),
    /// The background thread panicked: the body was not scanned.
    Lost(String),
}

/// What is done with every chunk as it arrives, on whichever thread runs it.
struct Intake {
    inner: Arc<Inner>,
    hasher: Sha256,
    /// MD5 and SHA-1 of the whole body, kept only when an imported hash
    /// list has such digests (no second pass over the spool at the end).
    legacy: Option<(Md5, Sha1)>,
    spool: Spool,
    /// Past `max_scan_size`: still hashed, no longer kept.
    truncated: bool,
    spool_error: Option<String>,
    /// clamd fed while the body streams (background sessions only).
    clamd: ClamdFeed,
    /// Time spent sending to clamd while streaming.
    clamd_time: Duration,
    /// False once a streaming body is known to need no second look at its
    /// bytes (see [`Intake::decide_spooling`]): the rest is hashed and sent
    /// to clamd but not written to the spool.
    spooling: bool,
    /// Whether [`Intake::decide_spooling`] has seen enough of the body to
    /// decide (a streaming body's first chunks may be shorter than the sniff).
    spooling_decided: bool,
    /// Bytes kept for the scan but not spooled (counted as kept).
    unspooled: u64,
    /// YARA's presence scan of the kept bytes, when the rule set streams
    /// (background sessions only).
    #[cfg(feature = "yara")]
    yara: Option<crate::yara::YaraStream>,
}

/// The state of a streamed clamd scan of the top-level body.
enum ClamdFeed {
    /// Not streamed: clamd (if configured) scans from the spool at the end.
    Off,
    Open(ClamdStream),
    /// Longer than `clamav.max_stream_size`: the stream was dropped and the
    /// end reports `too-large` for clamav, as an unstreamed scan would.
    TooLarge,
    Failed(ClamdError),
}

/// What the streamed clamd scan left for the end of the body.
pub(crate) enum ClamdOutcome {
    Verdict(Result<ClamdVerdict, ClamdError>),
    /// The whole body was sent and the stream ended: clamd scans while the
    /// other engines run, its answer is read when clamd's turn comes.
    Awaiting(ClamdStream),
    TooLarge,
}

/// What the intake computed while the body streamed, for the top-level
/// object's engines at the end.
#[derive(Default)]
pub(crate) struct Streamed {
    pub(crate) legacy: Option<([u8; 16], [u8; 20])>,
    pub(crate) clamd: Option<ClamdOutcome>,
    /// The body's kept length when its spool holds only its start (the
    /// rest needed no second look).
    pub(crate) kept: Option<u64>,
    /// The strings YARA found in the kept bytes while they streamed.
    #[cfg(feature = "yara")]
    pub(crate) yara: Option<crate::yara::Witness>,
}

impl Intake {
    fn new(inner: Arc<Inner>) -> Intake {
        let spool = Spool::new(inner.config.memory_threshold, &inner.spool_dir);
        let legacy = inner
            .hashes
            .needs_legacy_digests()
            .then(|| (Md5::new(), Sha1::new()));
        Intake {
            inner,
            hasher: Sha256::new(),
            legacy,
            spool,
            truncated: false,
            spool_error: None,
            clamd: ClamdFeed::Off,
            clamd_time: Duration::ZERO,
            spooling: true,
            spooling_decided: false,
            unspooled: 0,
            #[cfg(feature = "yara")]
            yara: None,
        }
    }

    /// Takes a chunk the caller keeps: copied into the spool.
    fn take(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        self.take_with(chunk, |spool, keep| spool.write(&chunk[..keep]))
    }

    /// Takes a shared chunk: kept by reference while the spool is in memory.
    fn take_shared(&mut self, chunk: &Bytes) -> Result<(), InspectError> {
        self.take_with(chunk, |spool, keep| spool.push(chunk.slice(..keep)))
    }

    /// Hashes `chunk` and keeps its first `keep` bytes that fit under
    /// `max_scan_size` with `keep_into` (when spooling).
    fn take_with(
        &mut self,
        chunk: &[u8],
        keep_into: impl FnOnce(&mut Spool, usize) -> std::io::Result<()>,
    ) -> Result<(), InspectError> {
        // The hash covers every byte, also past the cap, so hash lists still
        // recognise a file too large to scan.
        self.hasher.update(chunk);
        if let Some((md5, sha1)) = &mut self.legacy {
            md5.update(chunk);
            sha1.update(chunk);
        }
        if self.truncated || self.spool_error.is_some() {
            return Ok(());
        }
        let max = self.inner.config.max_scan_size;
        let room = max.saturating_sub(self.kept());
        let keep = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if !self.spooling {
            self.unspooled += keep.len() as u64;
        } else if let Err(e) = keep_into(&mut self.spool, keep.len()) {
            self.spool_error = Some(e.to_string());
            return Err(InspectError::Spool(e));
        }
        if keep.len() < chunk.len() {
            self.truncated = true;
            // A truncated body is not sent to clamd (as before streaming).
            self.clamd = ClamdFeed::Off;
        }
        self.send_to_clamd(keep);
        #[cfg(feature = "yara")]
        if let Some(yara) = &mut self.yara {
            yara.feed(keep);
        }
        Ok(())
    }

    /// Bytes kept for the scan (spooled or not), at most `max_scan_size`.
    fn kept(&self) -> u64 {
        self.spool.len() + self.unspooled
    }

    /// Whether the rest of a streaming body needs its spool: only the
    /// engines that read the body again at the end do (the archive walk,
    /// the encryption checks of Office and PDF files, YARA, DLP on a textual
    /// body). Hashes and clamd take the bytes as they pass, and the type
    /// comes from the start, which is already spooled. A body whose start
    /// is shorter than the type sniff needs keeps spooling.
    fn decide_spooling(&mut self, direction: Direction) {
        let Ok(head) = self.spool.head(ISO_SNIFF_LEN) else {
            return;
        };
        if head.len() < ISO_SNIFF_LEN && !self.truncated {
            return;
        }
        self.spooling_decided = true;
        let file_type = sniff(&head);
        let textual = matches!(
            file_type,
            FileType::Text | FileType::Html | FileType::Script | FileType::Unknown
        );
        let dlp_wanted = !self.inner.dlp.is_empty()
            && textual
            && (direction == Direction::Upload || self.inner.config.dlp.downloads);
        // YARA rereads the body unless its rules are decided while it streams.
        #[cfg(feature = "yara")]
        let yara = match (&self.inner.yara, &self.yara) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(rules), Some(_)) => rules.streamed_body_needs_rereading(),
        };
        #[cfg(not(feature = "yara"))]
        let yara = false;
        let reread = file_type.is_archive()
            || matches!(file_type, FileType::Ole | FileType::Pdf)
            || yara
            || dlp_wanted;
        self.spooling = reread;
    }

    /// Starts the engines that take the body as it streams — clamd's
    /// INSTREAM, YARA's presence scan — and gives them what was kept so far
    /// (the held start of the body, in memory or a small spool file).
    fn open_streamed_engines(&mut self) {
        if self.truncated || self.spool_error.is_some() {
            return;
        }
        #[cfg(feature = "yara")]
        let yara = self.inner.yara.as_ref().and_then(|rules| rules.stream());
        #[cfg(not(feature = "yara"))]
        let yara: Option<()> = None;
        if self.inner.clamd.is_none() && yara.is_none() {
            return;
        }
        #[cfg(feature = "yara")]
        let mut yara = yara;
        if let Some(client) = &self.inner.clamd {
            let started = Instant::now();
            self.clamd = match client.instream() {
                Ok(stream) => ClamdFeed::Open(stream),
                Err(e) => ClamdFeed::Failed(e),
            };
            self.clamd_time += started.elapsed();
        }
        // The kept start goes to the engines a block at a time: no copy of
        // the whole of it (up to memory_threshold) per flow.
        let mut block = vec![0u8; KEPT_BLOCK.min(self.spool.len() as usize).max(1)];
        let max = self.clamd_max();
        let (clamd, clamd_time) = (&mut self.clamd, &mut self.clamd_time);
        let fed = self.spool.reader().and_then(|mut r| loop {
            let n = r.read(&mut block)?;
            if n == 0 {
                return Ok(());
            }
            #[cfg(feature = "yara")]
            if let Some(yara) = &mut yara {
                yara.feed(&block[..n]);
            }
            send_to_clamd(clamd, clamd_time, max, &block[..n]);
        });
        match fed {
            Ok(()) => {
                #[cfg(feature = "yara")]
                {
                    self.yara = yara;
                }
            }
            // Unreadable start: no YARA stream (the whole-body scan
            // decides), and clamd's scan fails as an engine error.
            Err(e) => {
                if !matches!(self.clamd, ClamdFeed::Off) {
                    self.clamd = ClamdFeed::Failed(ClamdError::Io(e));
                }
            }
        }
    }

    fn send_to_clamd(&mut self, data: &[u8]) {
        let max = self.clamd_max();
        send_to_clamd(&mut self.clamd, &mut self.clamd_time, max, data);
    }

    fn clamd_max(&self) -> u64 {
        self.inner
            .config
            .clamav
            .as_ref()
            .map_or(u64::MAX, |c| c.max_stream_size)
    }

    /// Ends the streamed engines: clamd's stream (its answer is read later),
    /// the legacy digests.
    fn streamed(&mut self) -> Streamed {
        let legacy = self.legacy.take().map(|(md5, sha1)| {
            let md5: [u8; 16] = md5.finalize().into();
            let sha1: [u8; 20] = sha1.finalize().into();
            (md5, sha1)
        });
        let clamd = match std::mem::replace(&mut self.clamd, ClamdFeed::Off) {
            ClamdFeed::Off => None,
            ClamdFeed::TooLarge => Some(ClamdOutcome::TooLarge),
            ClamdFeed::Failed(e) => Some(ClamdOutcome::Verdict(Err(e))),
            ClamdFeed::Open(mut stream) => Some(match stream.end() {
                Ok(()) => ClamdOutcome::Awaiting(stream),
                Err(e) => ClamdOutcome::Verdict(Err(e)),
            }),
        };
        Streamed {
            legacy,
            clamd,
            kept: (!self.spooling).then(|| self.kept()),
            #[cfg(feature = "yara")]
            yara: self.yara.take().map(crate::yara::YaraStream::finish),
        }
    }
}

/// Sends `data` on the streamed clamd scan, if one is open; past `max`
/// bytes the stream is dropped (the end reports `too-large`).
fn send_to_clamd(clamd: &mut ClamdFeed, time: &mut Duration, max: u64, data: &[u8]) {
    let ClamdFeed::Open(stream) = clamd else {
        return;
    };
    if stream.sent() + data.len() as u64 > max {
        // Dropping the connection ends clamd's side of the scan.
        *clamd = ClamdFeed::TooLarge;
        return;
    }
    let started = Instant::now();
    if let Err(e) = stream.send(data) {
        *clamd = ClamdFeed::Failed(e);
    }
    *time += started.elapsed();
}

/// Chunks queued for the background thread, with the waker of a feeder
/// waiting for room.
struct Queue {
    state: Mutex<QueueState>,
    arrived: Condvar,
}

#[derive(Default)]
struct QueueState {
    chunks: VecDeque<Bytes>,
    queued: usize,
    /// No more chunks will come: the thread drains the queue and returns.
    closed: bool,
    /// The session was dropped: the thread stops at once.
    abandoned: bool,
    /// The thread has ended (returned or panicked): chunks are no longer
    /// queued and a waiting feeder is released (a panic ends as
    /// `unscannable: engine-error` at `finish`).
    gone: bool,
    waiting: Option<Waker>,
}

/// Block in which the kept start of a body is handed to the streamed
/// engines when the background thread starts.
const KEPT_BLOCK: usize = 64 * 1024;

/// Most bytes queued for the background thread per body: past this the
/// feeder waits ([`ScanSession::poll_ready`]), so memory per flow stays
/// bounded when the thread falls behind (clamd busy, a slow disk).
const QUEUE_LIMIT: usize = 1024 * 1024;

struct Background {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<Option<Intake>>>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (each update is a single push or pop).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background thread: takes every queued chunk, then returns the
/// intake for the end of the scan.
/// Marks the queue `gone` when the thread ends, also by a panic, so that a
/// feeder waiting in `poll_ready` is never left waiting.
struct GoneOnExit(Arc<Queue>);

impl Drop for GoneOnExit {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.gone = true;
        state.chunks.clear();
        state.queued = 0;
        if let Some(waker) = state.waiting.take() {
            waker.wake();
        }
    }
}

fn run_intake(mut intake: Intake, queue: Arc<Queue>, direction: Direction) -> Intake {
    let _gone = GoneOnExit(queue.clone());
    intake.open_streamed_engines();
    intake.decide_spooling(direction);
    // A body streamed in the background is longer than memory_threshold:
    // what it keeps goes to the file at once rather than first filling (and
    // pinning the gateway's chunks in) memory up to the threshold.
    if intake.spool_error.is_none() {
        if let Err(e) = intake.spool.spill() {
            intake.spool_error = Some(e.to_string());
        }
    }
    loop {
        let chunk = {
            let mut state = queue.lock();
            loop {
                if state.abandoned {
                    return intake;
                }
                if let Some(chunk) = state.chunks.pop_front() {
                    state.queued -= chunk.len();
                    if state.queued < QUEUE_LIMIT {
                        if let Some(waker) = state.waiting.take() {
                            waker.wake();
                        }
                    }
                    break chunk;
                }
                if state.closed {
                    return intake;
                }
                state = queue.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A spool failure is recorded in the intake and reported at the end.
        let _ = intake.take_shared(&chunk);
        if !intake.spooling_decided {
            intake.decide_spooling(direction);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The body was abandoned mid-stream (client gone, error): the thread
        // stops after its current chunk and drops the spool.
        let mut state = self.queue.lock();
        state.abandoned = true;
        state.chunks.clear();
        drop(state);
        self.queue.arrived.notify_one();
    }
}

impl ScanSession {
    pub(crate) fn new(inner: Arc<Inner>, context: ScanContext) -> ScanSession {
        let intake = Intake::new(inner.clone());
        ScanSession {
            inner,
            context,
            size: 0,
            intake: IntakeState::Inline(Box::new(intake)),
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the body has passed `max_scan_size` (its verdict will be
    /// `unscannable: too-large`, or worse). Always false while the body
    /// streams in the background (the thread decides; the verdict says).
    pub fn is_too_large(&self) -> bool {
        match &self.intake {
            IntakeState::Inline(i) => i.truncated,
            _ => false,
        }
    }

    /// Whether chunks are taken by the session's background thread
    /// ([`ScanSession::stream_in_background`]); its `finish` then waits for
    /// that thread and must run off the async workers.
    pub fn is_streaming(&self) -> bool {
        matches!(self.intake, IntakeState::Background(_))
    }

    /// Moves the per-chunk work (hashing, spooling, clamd) of a long
    /// download to a thread of its own; see [`ScanSession`]. Not for uploads
    /// held in the spool ([`ScanSession::spool_file`] needs the inline
    /// intake) nor for forms. When the thread cannot be started the session
    /// stays inline: slower, the same verdict.
    pub fn stream_in_background(&mut self) {
        if self.form_boundary().is_some() {
            return;
        }
        let IntakeState::Inline(_) = &self.intake else {
            return;
        };
        let IntakeState::Inline(intake) =
            std::mem::replace(&mut self.intake, IntakeState::Lost(String::new()))
        else {
            return;
        };
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            arrived: Condvar::new(),
        });
        // The intake is handed over once the thread runs: if it cannot be
        // started, the intake is still here and the session stays inline.
        let (hand_over, received) = std::sync::mpsc::sync_channel::<Intake>(1);
        let direction = self.context.direction;
        let thread_queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("rampart-scan".into())
            .spawn(move || {
                received
                    .recv()
                    .ok()
                    .map(|intake| run_intake(intake, thread_queue, direction))
            });
        self.intake = match spawned {
            Ok(thread) => match hand_over.send(*intake) {
                Ok(()) => IntakeState::Background(Background {
                    queue,
                    thread: Some(thread),
                }),
                Err(std::sync::mpsc::SendError(intake)) => IntakeState::Inline(Box::new(intake)),
            },
            Err(_) => IntakeState::Inline(intake),
        };
    }

    /// Adds the next chunk of the body. Errors only when the spool file
    /// cannot be written; the session then finishes as `unscannable:
    /// engine-error`, so the gateway may ignore the error and carry on.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        match &mut self.intake {
            IntakeState::Inline(intake) => {
                self.size += chunk.len() as u64;
                intake.take(chunk)
            }
            _ => {
                self.feed_bytes(Bytes::copy_from_slice(chunk));
                Ok(())
            }
        }
    }

    /// [`ScanSession::feed`] for a chunk the caller holds as `Bytes`: a
    /// background session queues it without copying. Check
    /// [`ScanSession::poll_ready`] before reading the next chunk.
    pub fn feed_bytes(&mut self, chunk: Bytes) {
        // A spool failure is recorded in the session and reported by finish.
        let _ = self.feed_shared(chunk);
    }

    /// [`ScanSession::feed_bytes`], telling the caller when an inline
    /// session could not spool the chunk (as [`ScanSession::feed`] does).
    /// While the spool is in memory the chunk is kept by reference: the
    /// caller's held copy of the body is the only one.
    pub fn feed_shared(&mut self, chunk: Bytes) -> Result<(), InspectError> {
        match &mut self.intake {
            IntakeState::Inline(intake) => {
                self.size += chunk.len() as u64;
                return intake.take_shared(&chunk);
            }
            IntakeState::Background(background) => {
                self.size += chunk.len() as u64;
                let mut state = background.queue.lock();
                if state.gone {
                    return Ok(());
                }
                state.queued += chunk.len();
                state.chunks.push_back(chunk);
                drop(state);
                background.queue.arrived.notify_one();
            }
            IntakeState::Lost(_) => self.size += chunk.len() as u64,
        }
        Ok(())
    }

    /// Ready when the session takes another chunk without going past its
    /// queue bound; otherwise `Pending`, and `cx` is woken when the
    /// background thread has caught up. Always ready inline.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let IntakeState::Background(background) = &self.intake else {
            return Poll::Ready(());
        };
        let mut state = background.queue.lock();
        if state.queued < QUEUE_LIMIT {
            return Poll::Ready(());
        }
        state.waiting = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The boundary of an upload sent as `multipart/form-data`.
    fn form_boundary(&self) -> Option<String> {
        if self.context.direction != Direction::Upload {
            return None;
        }
        crate::multipart::boundary(self.context.content_type.as_deref()?)
    }

    /// How many bytes of the body are kept for the scan: every byte fed, up
    /// to `max_scan_size` (inline sessions; 0 while streaming in the background).
    pub fn kept_len(&self) -> u64 {
        match &self.intake {
            IntakeState::Inline(i) => i.spool.len(),
            _ => 0,
        }
    }

    /// A second handle on the spool file, once the kept bytes have spilled
    /// past `memory_threshold` to disk (`None` while they are in memory, and
    /// for a session streaming in the background): the gateway forwards a
    /// held upload from it, with positioned reads (`FileExt::read_at`)
    /// because the scan moves the shared file offset. The file holds the
    /// first [`ScanSession::kept_len`] bytes of the body and stays readable
    /// through this handle after the session is dropped.
    pub fn spool_file(&self) -> Option<std::io::Result<std::fs::File>> {
        match &self.intake {
            IntakeState::Inline(i) => i.spool.file().map(std::fs::File::try_clone),
            _ => None,
        }
    }

    /// Scans what was fed and returns the report. Blocking (file I/O,
    /// decompression, rule engines, clamd, the background thread): run it
    /// off the async workers.
    pub fn finish(self) -> ScanReport {
        self.finish_deferred().0
    }

    /// [`ScanSession::finish`], leaving the release of the body's spool
    /// (unmapping and freeing a large file's pages takes milliseconds) to
    /// whoever drops the returned [`Leftovers`], after the verdict is out.
    pub fn finish_deferred(mut self) -> (ScanReport, Leftovers) {
        let started = Instant::now();
        let intake = match std::mem::replace(&mut self.intake, IntakeState::Lost(String::new())) {
            IntakeState::Inline(intake) => Ok(*intake),
            IntakeState::Background(mut background) => {
                {
                    let mut state = background.queue.lock();
                    state.closed = true;
                }
                background.queue.arrived.notify_one();
                match background.thread.take().map(JoinHandle::join) {
                    Some(Ok(Some(intake))) => Ok(intake),
                    _ => Err("the scan thread panicked".to_owned()),
                }
            }
            IntakeState::Lost(reason) => Err(if reason.is_empty() {
                "the scan thread was lost".to_owned()
            } else {
                reason
            }),
        };
        match intake {
            Ok(intake) => self.scan(intake, started),
            Err(reason) => (self.lost(&reason, started), Leftovers { _spool: None }),
        }
    }

    /// The report of a body whose intake was lost: never clean.
    fn lost(&self, reason: &str, started: Instant) -> ScanReport {
        let root = root_name(&self.context);
        let finding = Finding {
            verdict: Verdict::Unscannable(UnscannableReason::EngineError),
            reason: Some(UnscannableReason::EngineError),
            container_path: root,
            engine: Engine::Scanner,
            rule_or_signature: reason.to_owned(),
            file_type: crate::file_type::FileType::Unknown,
            sha256: String::new(),
            size: self.size,
            count: 0,
            masked_matches: Vec::new(),
            fail: None,
        };
        ScanReport::new(
            crate::file_type::FileType::Unknown,
            self.size,
            String::new(),
            vec![finding],
            started.elapsed(),
            Default::default(),
        )
    }

    fn scan(&self, mut intake: Intake, started: Instant) -> (ScanReport, Leftovers) {
        let streamed = intake.streamed();
        let sha256: [u8; 32] = intake.hasher.clone().finalize().into();
        let sha_hex = hex::encode(sha256);
        let root = root_name(&self.context);
        let spool = &intake.spool;
        let file_type = spool
            .with_head(ISO_SNIFF_LEN, sniff)
            .unwrap_or(FileType::Unknown);
        let mut walk = Walk::new(&self.inner, self.context.direction, started);
        walk.times.clamav += intake.clamd_time;
        if let Some(message) = &intake.spool_error {
            walk.findings.push(Finding {
                verdict: Verdict::Unscannable(UnscannableReason::EngineError),
                reason: Some(UnscannableReason::EngineError),
                container_path: root.clone(),
                engine: Engine::Scanner,
                rule_or_signature: format!("spool: {message}"),
                file_type,
                sha256: sha_hex.clone(),
                size: self.size,
                count: 0,
                masked_matches: Vec::new(),
                fail: None,
            });
            walk.check_hashes_only(&root, file_type, &sha256, self.size);
        } else if intake.truncated {
            walk.findings.push(Finding {
                verdict: Verdict::Unscannable(UnscannableReason::TooLarge),
                reason: Some(UnscannableReason::TooLarge),
                container_path: root.clone(),
                engine: Engine::Scanner,
                rule_or_signature: format!(
                    "larger than max_scan_size ({} bytes)",
                    self.inner.config.max_scan_size
                ),
                file_type,
                sha256: sha_hex.clone(),
                size: self.size,
                count: 0,
                masked_matches: Vec::new(),
                fail: None,
            });
            walk.check_hashes_only(&root, file_type, &sha256, self.size);
            // Rules and DLP still look at the part that was kept (YARA
            // from what its presence scan found in it, if it streamed).
            #[cfg(feature = "yara")]
            {
                walk.streamed.yara = streamed.yara;
            }
            walk.scan_prefix(&root, spool, file_type, &sha_hex);
        } else if let Some(boundary) = self.form_boundary() {
            walk.scan_form(&root, spool, &sha256, &boundary);
        } else {
            walk.streamed = streamed;
            // Typed and hex-encoded once for the report and the top-level object.
            walk.root = Some((file_type, sha_hex.clone()));
            walk.scan_object(&root, spool, &sha256, 0);
        }
        let times = walk.times;
        let report = ScanReport::new(
            file_type,
            self.size,
            sha_hex,
            walk.findings,
            started.elapsed(),
            times,
        );
        (
            report,
            Leftovers {
                _spool: Some(intake.spool),
            },
        )
    }
}

/// What a finished scan still holds (the body's spool): dropping it frees
/// the memory or file. See [`ScanSession::finish_deferred`].
pub struct Leftovers {
    _spool: Option<Spool>,
}

/// The top-level name in container paths: the file name's last path
/// segment, or `body`.
fn root_name(context: &ScanContext) -> String {
    context
        .file_name
        .as_deref()
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .filter(|n| !n.is_empty())
        .unwrap_or("body")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_name_is_the_last_segment() {
        let c = ScanContext::download().with_file_name("dir/sub/invoice.zip");
        assert_eq!(root_name(&c), "invoice.zip");
        assert_eq!(root_name(&ScanContext::upload()), "body");
    }
}
