//! Against a real clamd (Debian clamav-daemon) started by the test with a
//! database directory holding only a signature the test writes: no
//! freshclam, no downloads. Fails (never skips) when clamd is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::write;
use rampart_inspect::clamd::{ClamdClient, ClamdVerdict};
use rampart_inspect::{
    ClamdConfig, Engine, FailMode, InspectConfig, Inspector, ScanContext, UnscannableReason,
    Verdict,
};

const CLAMD: &str = "/usr/sbin/clamd";
const MARKER: &str = "RAMPART-CLAMAV-TEST-MARKER";

/// Kills the clamd this test started (by its own pid) even when the test
/// panics.
struct Clamd(Child);

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_clamd(dir: &Path) -> (Clamd, PathBuf) {
    assert!(
        Path::new(CLAMD).exists(),
        "{CLAMD} is missing: install Debian clamav-daemon (scripts/install-test-deps.sh or apt-get install -y clamav-daemon)"
    );
    let db = dir.join("db");
    std::fs::create_dir(&db).unwrap();
    // An extended signature (.ndb): name, any file type (0), any offset, hex.
    write(
        &db,
        "rampart-test.ndb",
        format!("Rampart.Test.Marker:0:*:{}\n", hex::encode(MARKER)).as_bytes(),
    );
    let socket = dir.join("clamd.sock");
    let conf = write(
        dir,
        "clamd.conf",
        format!(
            "LocalSocket {sock}\nForeground yes\nDatabaseDirectory {db}\nTemporaryDirectory {tmp}\n\
             StreamMaxLength 1M\nMaxThreads 2\nBytecode no\nLogVerbose no\n",
            sock = socket.display(),
            db = db.display(),
            tmp = dir.display()
        )
        .as_bytes(),
    );
    let child = Command::new(CLAMD)
        .arg("--config-file")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CLAMD}: {e}"));
    let clamd = Clamd(child);
    let client = ClamdClient::new(&config(&socket)).unwrap();
    let started = Instant::now();
    while client.ping().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "clamd did not answer PING on {} within 120 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (clamd, socket)
}

fn config(socket: &Path) -> ClamdConfig {
    ClamdConfig {
        address: format!("unix:{}", socket.display()),
        io_timeout: Duration::from_secs(20),
        chunk_size: 4096,
        max_stream_size: 1024 * 1024,
        fail: FailMode::Open,
        ..ClamdConfig::default()
    }
}

#[test]
fn real_clamd_finds_its_signature_and_clamd_down_is_engine_error() {
    let dir = tempfile::tempdir().unwrap();
    let (clamd, socket) = start_clamd(dir.path());
    let insp = Inspector::new(InspectConfig {
        spool_dir: Some(dir.path().to_path_buf()),
        clamav: Some(config(&socket)),
        ..InspectConfig::default()
    })
    .unwrap();

    // Direct client: several chunks (4 KiB each) and the zero terminator.
    let client = ClamdClient::new(&config(&socket)).unwrap();
    let mut body = vec![b'a'; 10_000];
    body.extend_from_slice(MARKER.as_bytes());
    assert_eq!(
        client.scan(&mut &body[..]).unwrap(),
        ClamdVerdict::Found("Rampart.Test.Marker.UNOFFICIAL".into())
    );
    assert_eq!(
        client.scan(&mut &b"clean body"[..]).unwrap(),
        ClamdVerdict::Clean
    );

    let clean = insp.scan_bytes(ScanContext::download(), b"just a clean body\n");
    assert_eq!(clean.verdict, Verdict::Clean, "{clean:#?}");
    let found = insp.scan_bytes(ScanContext::download().with_file_name("x.bin"), &body);
    assert_eq!(found.verdict, Verdict::Malicious, "{found:#?}");
    assert_eq!(found.findings[0].engine, Engine::Clamav);
    assert!(found.findings[0]
        .rule_or_signature
        .starts_with("Rampart.Test.Marker"));

    // Over clamd's StreamMaxLength: not sent, and not clean.
    let big = vec![b'b'; 2 * 1024 * 1024];
    let too_large = insp.scan_bytes(ScanContext::download(), &big);
    assert_eq!(
        too_large.verdict,
        Verdict::Unscannable(UnscannableReason::TooLarge)
    );
    // Not an engine failure: inspect.actions.unscannable decides, not the fail mode.
    assert_eq!(too_large.findings[0].fail, None);

    // clamd stopped: unscannable engine-error with the fail mode recorded.
    drop(clamd);
    let down = insp.scan_bytes(ScanContext::download(), b"just a clean body\n");
    assert_eq!(
        down.verdict,
        Verdict::Unscannable(UnscannableReason::EngineError),
        "{down:#?}"
    );
    assert_eq!(down.findings[0].engine, Engine::Clamav);
    assert_eq!(down.findings[0].fail, Some(FailMode::Open));
    assert!(down.fails_open());
}

#[test]
fn a_body_past_max_stream_size_is_too_large_for_clamd_without_its_fail_mode() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the body must not even be sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp:{}", listener.local_addr().unwrap());
    drop(listener);
    let mut config = InspectConfig {
        spool_dir: Some(dir.path().to_path_buf()),
        ..InspectConfig::default()
    };
    config.clamav = Some(ClamdConfig {
        address,
        max_stream_size: 1000,
        fail: FailMode::Closed,
        ..ClamdConfig::default()
    });
    let insp = Inspector::new(config).unwrap();
    let report = insp.scan_bytes(ScanContext::download(), &vec![b'a'; 5000]);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::TooLarge),
        "{report:#?}"
    );
    let finding = &report.findings[0];
    assert_eq!(finding.engine, Engine::Clamav);
    // The unscannable action decides, not clamd's fail = "closed".
    assert_eq!(finding.fail, None, "{report:#?}");
    assert!(!report.fails_open());
}

/// A download fed to a session streaming in the background: clamd gets the
/// body while it arrives (INSTREAM opened at the hand-over), and the verdicts
/// are those of a scan from the spool.
fn stream(insp: &Inspector, body: &[u8], chunk: usize) -> rampart_inspect::ScanReport {
    let mut session = insp.session(ScanContext::download().with_file_name("x.bin"));
    // The first bytes are fed inline, as the gateway does while it holds them.
    let (held, rest) = body.split_at(body.len().min(chunk));
    session.feed(held).unwrap();
    session.stream_in_background();
    assert!(session.is_streaming());
    for piece in rest.chunks(chunk) {
        session.feed_bytes(bytes::Bytes::copy_from_slice(piece));
    }
    session.finish()
}

#[test]
fn clamd_is_fed_while_the_body_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (clamd, socket) = start_clamd(dir.path());
    let insp = Inspector::new(InspectConfig {
        spool_dir: Some(dir.path().to_path_buf()),
        memory_threshold: 4096,
        clamav: Some(config(&socket)),
        ..InspectConfig::default()
    })
    .unwrap();

    // The marker straddles two chunks of 1000 bytes.
    let mut body = vec![b'a'; 2990];
    body.extend_from_slice(MARKER.as_bytes());
    body.extend_from_slice(&[b'z'; 50_000]);
    let found = stream(&insp, &body, 1000);
    assert_eq!(found.verdict, Verdict::Malicious, "{found:#?}");
    assert_eq!(found.findings[0].engine, Engine::Clamav);
    assert!(found.findings[0]
        .rule_or_signature
        .starts_with("Rampart.Test.Marker"));
    assert_eq!(found.size, body.len() as u64);
    assert!(found.engine_times.clamav > Duration::ZERO);

    let clean = stream(&insp, &vec![b'c'; 300_000], 16 * 1024);
    assert_eq!(clean.verdict, Verdict::Clean, "{clean:#?}");

    // Past clamd's StreamMaxLength (1 MiB here): dropped mid-stream, too-large
    // for clamav under the unscannable action, never clean.
    let too_large = stream(&insp, &vec![b'b'; 2 * 1024 * 1024], 64 * 1024);
    assert_eq!(
        too_large.verdict,
        Verdict::Unscannable(UnscannableReason::TooLarge),
        "{too_large:#?}"
    );
    assert_eq!(too_large.findings[0].engine, Engine::Clamav);
    assert_eq!(too_large.findings[0].fail, None);

    // clamd stopped: the stream cannot open; engine-error with the fail mode.
    drop(clamd);
    let down = stream(&insp, &vec![b'd'; 100_000], 10_000);
    assert_eq!(
        down.verdict,
        Verdict::Unscannable(UnscannableReason::EngineError),
        "{down:#?}"
    );
    assert_eq!(down.findings[0].engine, Engine::Clamav);
    assert_eq!(down.findings[0].fail, Some(FailMode::Open));
}
