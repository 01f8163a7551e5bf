//! Any bytes, as a download or an upload, must give a report: sniffing, the
//! archive walker (zip, gzip, tar, 7z, nested), the multipart/form-data
//! splitter (uploads declared as forms), encryption checks, hash
//! lists and DLP never panic, and the small limits keep memory and time
//! bounded however the headers lie.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rampart_inspect::{ArchiveLimits, InspectConfig, Inspector, ScanContext, Verdict};

fn inspector() -> &'static Inspector {
    static INSPECTOR: OnceLock<Inspector> = OnceLock::new();
    INSPECTOR.get_or_init(|| {
        let spool = std::env::temp_dir().join("rampart-inspect-fuzz-spool");
        Inspector::new(InspectConfig {
            spool_dir: Some(spool),
            memory_threshold: 64 * 1024,
            max_scan_size: 8 * 1024 * 1024,
            scan_timeout: Duration::from_secs(5),
            archive: ArchiveLimits {
                max_depth: 3,
                max_entries: 64,
                max_expanded_size: 16 * 1024 * 1024,
                max_ratio: 50,
                ratio_floor: 256 * 1024,
                sevenz_memory_kib: 16 * 1024,
            },
            ..InspectConfig::default()
        })
        .expect("fuzz inspector config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let file_type = rampart_inspect::sniff(data);
    assert!(rampart_inspect::FileType::ALL_NAMES.contains(&file_type.name()));
    let flags = data.first().copied().unwrap_or(0);
    let context = if flags & 1 == 1 {
        ScanContext::upload()
    } else {
        ScanContext::download()
    };
    // Uploads declared as forms also go through the multipart splitter.
    let context = if flags & 3 == 3 {
        context.with_content_type("multipart/form-data; boundary=XyZ")
    } else {
        context
    };
    let report = inspector().scan_bytes(context.with_file_name("fuzz.bin"), data);
    assert_eq!(report.size, data.len() as u64);
    // A verdict is the worst finding's; clean only without findings.
    assert_eq!(report.verdict == Verdict::Clean, report.findings.is_empty());
});
