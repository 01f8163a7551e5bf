//! Rampart content inspection: the scanner the gateway feeds with response
//! (download) and request (upload) bodies (DESIGN.md §6a).
//!
//! ```no_run
//! use rampart_inspect::{InspectConfig, Inspector, ScanContext};
//! let inspector = Inspector::new(InspectConfig::default())?;
//! let mut session = inspector.session(ScanContext::download().with_file_name("setup.exe"));
//! session.feed(b"MZ...")?;          // per chunk, while forwarding
//! let report = session.finish();    // blocking: under spawn_blocking
//! println!("{} {}", report.verdict, report.sha256);
//! # Ok::<(), rampart_inspect::InspectError>(())
//! ```
//!
//! Modules: [`file_type`] (magic bytes), `archive` (zip, gzip, bzip2, xz, tar, 7z with
//! limits), `encryption`, [`hash_list`], `yara` (boreal), [`clamd`]
//! (INSTREAM), [`dlp`], `session`/`spool` (bounded buffering) and
//! [`verdict`] (what comes out).

mod archive;
pub mod clamd;
pub mod config;
pub mod dlp;
mod encryption;
mod error;
pub mod file_type;
pub mod hash_list;
mod inspector;
mod multipart;
mod scanner;
mod session;
mod spool;
pub mod verdict;
#[cfg(feature = "yara")]
mod yara;

pub use config::{
    ArchiveLimits, ClamdConfig, CustomDlpProfile, DlpConfig, FailMode, HashListConfig,
    InspectConfig, VerdictAction, VerdictActions, YaraConfig,
};
pub use error::InspectError;
pub use file_type::{sniff, FileType, ISO_SNIFF_LEN, SNIFF_LEN};
pub use inspector::Inspector;
pub use session::{Leftovers, ScanContext, ScanSession};
pub use verdict::{
    Direction, Engine, EngineTimes, Finding, ScanReport, UnscannableReason, Verdict,
};
#[cfg(feature = "yara")]
pub use yara::{YaraPlan, STREAM_BLOCK as YARA_STREAM_BLOCK};

/// The gateway shares one Inspector across tasks and moves sessions into
/// `spawn_blocking`.
#[allow(dead_code)]
fn _assert_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Inspector>();
    send::<ScanSession>();
    send_sync::<ScanReport>();
}
