//! The access log: one line per proxied request or tunnel, as JSON lines (the
//! default) or in Squid's native format so existing Squid tooling keeps
//! working. A flow's finish phase formats its line straight from the flow's
//! record into a shared buffer (`line`: no serde, no allocation); a writer
//! thread swaps the buffer out on a timer and writes it with one `write(2)`,
//! so a slow disk never stalls proxying and handing a line over wakes no
//! thread (lines beyond the buffer's bound, and lines whose write failed, are
//! counted as dropped). The file rotates by size and age and is reopened on
//! request (`file`).

mod file;
mod line;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_policy::{MatchedObject, Stage};
use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::decision::{PolicyAction, TlsDecision};

/// Bytes of lines waiting to be written before new ones are counted as
/// dropped (about 100,000 lines: seconds of a stalled disk at full load).
const MAX_PENDING_BYTES: usize = 32 << 20;

/// What the pending buffer and the writer's batch start with.
const BUFFER_CAPACITY: usize = 64 << 10;

/// How often the writer thread drains the queue: records reach the file within this.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// What happened to one request or tunnel, built up along the flow and logged once at its end.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord {
    /// Time-ordered unique id of this record (UUIDv7); block pages and events show it.
    pub id: uuid::Uuid,
    /// The client connection's flow id when this record is one request of a
    /// decrypted tunnel: the tunnel's record id, shared by all its requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<uuid::Uuid>,
    /// Unix time of the start of the request, with milliseconds.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub client: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub method: String,
    /// Absolute URL, or `host:port` for CONNECT.
    pub target: String,
    pub status: u16,
    /// Request body bytes from the client (for tunnels: all bytes client → origin).
    pub bytes_from_client: u64,
    /// Response body bytes to the client (for tunnels: all bytes origin → client).
    pub bytes_to_client: u64,
    #[serde(serialize_with = "serialize_millis")]
    pub duration_ms: Duration,
    /// `direct`, `direct@SOURCE-IP` or `GROUP/PROXY:PORT`; absent when nothing was connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Arc<str>>,
    /// The origin (or upstream proxy) address connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
    /// Short reason for denials and failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The response body's file type by magic bytes, when the response phase classified it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<&'static str>,
    /// What content inspection found and did, when the body was scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inspection: Option<crate::inspection::InspectionRecord>,
    /// What content inspection found in the request body (an upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_inspection: Option<crate::inspection::InspectionRecord>,
    /// The policy decision that applied, when a rule (or a stage default) decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRecord>,
    /// The decryption rule that decided a tunnel (absent when the stage default
    /// did), with the objects it matched, e.g. `app dropbox`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decryption: Option<PolicyRecord>,
    /// The enrolled device (agent tunnel flows: from its client certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Arc<str>>,
    /// The endpoint process that opened the flow, as reported by an authenticated agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRecord>,
    /// TLS interception facts: set on CONNECT tunnels to TLS ports and on every
    /// request served inside a decrypted tunnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRecord>,
}

/// What the gateway saw and decided about a TLS connection.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRecord {
    pub decision: TlsDecision,
    /// Why, e.g. `default`, `tls.do_not_decrypt *.bank.example`, `policy rule "banks"`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The negotiated version with the client (decrypted) or the highest offered (spliced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// ALPN protocol in use inside a decrypted tunnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// The origin certificate problem (`expired`, `wrong_host`, ...), blocked or allowed by exception.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_problem: Option<String>,
    /// Set when the client rejected Rampart's certificate (a certificate-pinning client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_client: Option<String>,
}

impl TlsRecord {
    /// A record of `decision` for `reason`, the facts (SNI, version...) still unknown.
    pub fn new(decision: TlsDecision, reason: String) -> Self {
        TlsRecord {
            decision,
            reason,
            sni: None,
            version: None,
            alpn: None,
            origin_problem: None,
            pinned_client: None,
        }
    }
}

/// The endpoint process behind an agent tunnel flow (the agent's metadata headers).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessRecord {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The local account on the endpoint (not the enrolled user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The agent's steering action: `steer` or `tunnel-bypass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steering: Option<String>,
}

/// Which policy rule decided a flow, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub revision: Arc<str>,
    /// `access` or `decryption`.
    #[serde(serialize_with = "crate::decision::serialize_stage")]
    pub stage: Stage,
    pub rule_id: Arc<str>,
    pub rule: Arc<str>,
    pub action: PolicyAction,
    /// The objects the rule matched, as the policy returned them; written as
    /// `category news`, `group engineering`.
    #[serde(serialize_with = "crate::decision::serialize_matched")]
    pub matched: Vec<MatchedObject>,
    /// `user-alert` only: the user had proceeded past the coaching page, so the request passed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proceeded: bool,
    /// Rules passed over because they need facts this flow never has (a URL
    /// path or method inside a tunnel that is not decrypted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Arc<str>>,
}

/// RFC 3339 with exactly three fraction digits, the events' format: fixed width,
/// so lines sort as strings in time order.
fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    s.serialize_str(&rampart_events::render::time_text(ms))
}

fn serialize_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl FlowRecord {
    pub fn new(client: SocketAddr, method: &str, target: String) -> Self {
        FlowRecord {
            id: uuid::Uuid::now_v7(),
            flow_id: None,
            time: SystemTime::now(),
            client,
            user: None,
            groups: Vec::new(),
            method: method.to_string(),
            target,
            status: 0,
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: Duration::ZERO,
            egress: None,
            server: None,
            error: None,
            content_type: None,
            file_type: None,
            inspection: None,
            upload_inspection: None,
            policy: None,
            decryption: None,
            device: None,
            process: None,
            tls: None,
        }
    }

    /// One JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        line::write_json(self, &mut out);
        out.pop();
        // The writer copies `str`s and writes ASCII around them.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Squid's native format (`logformat squid`):
    /// `time elapsed client code/status bytes method URL user hierarchy/peer type`.
    pub fn to_squid(&self) -> String {
        let mut out = Vec::with_capacity(256);
        line::write_squid(self, &mut out);
        out.pop();
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The sending side, cloned into every flow.
#[derive(Clone)]
pub struct AccessLog {
    /// `None` when access logging is disabled.
    pending: Option<Arc<Pending>>,
    dropped: Arc<AtomicU64>,
    /// Set by [`AccessLog::reopen`]; the writer reopens the file at its next tick.
    reopen: Arc<AtomicBool>,
}

/// Lines formatted by the data path and not yet written: the writer thread
/// swaps the buffer out every [`WRITE_INTERVAL`]. A flow formats its line on
/// its own thread and copies it in under the lock (a few hundred bytes, no
/// allocation once the buffer has grown), so handing a line over costs no
/// channel, no wake-up and no cross-thread free.
struct Pending {
    lines: Mutex<Lines>,
    format: AccessLogFormat,
}

#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    records: u64,
}

impl Pending {
    /// Appends one formatted line; false when the buffer is at its bound
    /// (the disk has stalled for a while) or the lock is poisoned.
    fn append(&self, line: &[u8]) -> bool {
        let Ok(mut lines) = self.lines.lock() else {
            return false;
        };
        if lines.bytes.len() + line.len() > MAX_PENDING_BYTES {
            return false;
        }
        lines.bytes.extend_from_slice(line);
        lines.records += 1;
        true
    }
}

thread_local! {
    /// Each proxy thread's line being formatted (its capacity reused).
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Where the writer thread puts lines.
enum Output {
    Stdout(std::io::Stdout),
    File(file::LogFile),
}

impl Output {
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(out) => write_batch(out, batch),
            Output::File(log) => log.write_batch(batch),
        }
    }

    fn reopen(&mut self) {
        if let Output::File(log) = self {
            log.reopen();
        }
    }
}

impl AccessLog {
    /// A log that discards everything (access logging disabled).
    pub fn disabled() -> Self {
        AccessLog {
            pending: None,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks the writer to close the file and open its path again (SIGUSR1,
    /// after logrotate moved it away); done within one write interval.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
    }

    /// Opens the destination and starts the writer thread.
    pub fn start(config: &AccessLogConfig, data_dir: &std::path::Path) -> std::io::Result<Self> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let mut out = if config.path == "-" {
            Output::Stdout(std::io::stdout())
        } else {
            let mut path = PathBuf::from(&config.path);
            if path.is_relative() {
                path = data_dir.join(path);
            }
            Output::File(file::LogFile::open(
                path,
                file::Rotation::from_config(config),
            )?)
        };
        let pending = Arc::new(Pending {
            lines: Mutex::new(Lines {
                bytes: Vec::with_capacity(BUFFER_CAPACITY),
                records: 0,
            }),
            format: config.format,
        });
        let writer_pending = pending.clone();
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        let reopen = Arc::new(AtomicBool::new(false));
        let writer_reopen = reopen.clone();
        // A plain thread: file writes block, and this keeps them off the runtime.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(BUFFER_CAPACITY);
                let mut failing = false;
                // Wake on a short timer, never per line: the data path only
                // appends to the shared buffer.
                loop {
                    std::thread::sleep(WRITE_INTERVAL);
                    if writer_reopen.swap(false, Ordering::SeqCst) {
                        out.reopen();
                    }
                    let records = {
                        let Ok(mut lines) = writer_pending.lines.lock() else {
                            return;
                        };
                        std::mem::swap(&mut lines.bytes, &mut batch);
                        std::mem::take(&mut lines.records)
                    };
                    if records > 0 {
                        let written = out.write_batch(&batch);
                        failing = account(&writer_dropped, records, written, failing);
                    }
                    batch.clear();
                    if batch.capacity() > 4 * BUFFER_CAPACITY {
                        // A burst grew it: don't keep megabytes for the next tick.
                        batch = Vec::with_capacity(BUFFER_CAPACITY);
                    }
                    // Every `AccessLog` is gone (the gateway stopped): the last
                    // lines are written, nothing more can come.
                    if Arc::strong_count(&writer_pending) == 1 {
                        let rest = writer_pending
                            .lines
                            .lock()
                            .map(|mut l| (std::mem::take(&mut l.bytes), l.records))
                            .unwrap_or_default();
                        if rest.1 > 0 {
                            let written = out.write_batch(&rest.0);
                            account(&writer_dropped, rest.1, written, failing);
                        }
                        return;
                    }
                }
            })?;
        Ok(AccessLog {
            pending: Some(pending),
            dropped,
            reopen,
        })
    }

    /// Appends the flow's line to the pending buffer; the writer thread writes
    /// it within [`WRITE_INTERVAL`]. A line that would grow the buffer past
    /// [`MAX_PENDING_BYTES`] (the disk has stalled for a while) is counted as
    /// dropped instead.
    pub fn log(&self, record: &FlowRecord) {
        let Some(pending) = &self.pending else {
            return;
        };
        // Formatted outside the lock into this thread's scratch buffer, so
        // proxy threads hold the lock only for a copy of a few hundred bytes.
        let appended = LINE.try_with(|scratch| {
            let Ok(mut line) = scratch.try_borrow_mut() else {
                return false;
            };
            line.clear();
            match pending.format {
                AccessLogFormat::Json => line::write_json(record, &mut line),
                AccessLogFormat::Squid => line::write_squid(record, &mut line),
            }
            let appended = pending.append(&line);
            if line.capacity() > 64 << 10 {
                // A rare huge line (many findings): don't keep its buffer.
                *line = Vec::with_capacity(1024);
            }
            appended
        });
        if !appended.unwrap_or(false) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes one tick's records with one `write_all` and flushes.
fn write_batch(out: &mut dyn std::io::Write, batch: &[u8]) -> std::io::Result<()> {
    out.write_all(batch)?;
    out.flush()
}

/// Counts the records of a batch that could not be written (ENOSPC, EIO, a closed
/// pipe) as dropped, like records that found the queue full: `access_log_dropped`
/// must move whenever lines are missing from the log. Logs the first failure and the
/// recovery, not every tick. Returns whether writes are failing now.
fn account(
    dropped: &AtomicU64,
    records: u64,
    written: std::io::Result<()>,
    was_failing: bool,
) -> bool {
    match written {
        Ok(()) => {
            if was_failing {
                tracing::info!("writing the access log works again");
            }
            false
        }
        Err(e) => {
            // A partial write may have left part of the batch in the file; the
            // whole batch is counted, since no line of it is known to be whole.
            dropped.fetch_add(records, Ordering::Relaxed);
            if !was_failing {
                tracing::error!(
                    error = %e,
                    records,
                    "writing the access log failed; records are counted in access_log_dropped"
                );
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FlowRecord {
        let mut r = FlowRecord::new(
            "10.0.0.5:5555".parse().unwrap(),
            "GET",
            "http://a.example/x".into(),
        );
        r.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        r.status = 200;
        r.bytes_to_client = 1024;
        r.duration_ms = Duration::from_millis(12);
        r.egress = Some("direct".into());
        r.server = Some("192.0.2.1:80".parse().unwrap());
        r.user = Some("alice".into());
        r.content_type = Some("text/html".into());
        r
    }

    #[test]
    fn squid_format_matches_squid_native_layout() {
        assert_eq!(
            record().to_squid(),
            "1700000000.123     12 10.0.0.5 TCP_MISS/200 1024 GET http://a.example/x alice HIER_DIRECT/192.0.2.1 text/html"
        );
    }

    /// A destination that refuses every write, as a full disk does.
    struct FullDisk;
    impl std::io::Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_as_dropped() {
        let dropped = AtomicU64::new(0);
        let failing = account(&dropped, 3, write_batch(&mut FullDisk, b"a\nb\nc\n"), false);
        assert!(failing);
        let failing = account(&dropped, 2, write_batch(&mut FullDisk, b"d\ne\n"), failing);
        assert_eq!(dropped.load(Ordering::Relaxed), 5);
        let mut ok = Vec::new();
        assert!(!account(&dropped, 1, write_batch(&mut ok, b"f\n"), failing));
        assert_eq!(dropped.load(Ordering::Relaxed), 5);
        assert_eq!(ok, b"f\n");
    }

    /// Lines handed over by several threads reach the file whole, each once,
    /// within a few write intervals; the last ones are written when the log
    /// is dropped (the gateway stops).
    #[test]
    fn lines_from_several_threads_reach_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        for format in [AccessLogFormat::Json, AccessLogFormat::Squid] {
            let config = AccessLogConfig {
                path: format!("{format:?}.log"),
                format,
                ..AccessLogConfig::default()
            };
            let log = AccessLog::start(&config, dir.path()).unwrap();
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        for i in 0..500u64 {
                            let mut r = record();
                            r.bytes_to_client = t * 1000 + i;
                            log.log(&r);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            drop(log);
            let path = dir.path().join(&config.path);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut text = String::new();
            while std::time::Instant::now() < deadline {
                text = std::fs::read_to_string(&path).unwrap();
                if text.lines().count() >= 2000 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut seen: Vec<u64> = text
                .lines()
                .map(|line| match format {
                    AccessLogFormat::Json => {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap();
                        v["bytes_to_client"].as_u64().unwrap()
                    }
                    AccessLogFormat::Squid => {
                        line.split_whitespace().nth(4).unwrap().parse().unwrap()
                    }
                })
                .collect();
            seen.sort_unstable();
            let expected: Vec<u64> = (0..4u64)
                .flat_map(|t| (0..500u64).map(move |i| t * 1000 + i))
                .collect();
            assert_eq!(seen, expected, "{format:?}");
        }
    }

    #[test]
    fn a_full_buffer_refuses_lines() {
        let pending = Pending {
            lines: Mutex::new(Lines::default()),
            format: AccessLogFormat::Json,
        };
        let line = vec![b'x'; 1 << 20];
        let mut taken = 0;
        while pending.append(&line) {
            taken += 1;
        }
        assert_eq!(taken, MAX_PENDING_BYTES >> 20);
        assert_eq!(pending.lines.lock().unwrap().records, taken as u64);
    }

    #[test]
    fn time_has_a_fixed_width_fraction() {
        let mut r = record();
        r.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn json_has_every_field_name() {
        let v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "10.0.0.5:5555");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_to_client"], 1024);
        assert_eq!(v["duration_ms"], 12);
        assert_eq!(v["egress"], "direct");
    }
}
