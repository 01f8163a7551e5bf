//! Helpers for the integration tests: fixtures made at run time with the
//! real tools (Debian zip, p7zip-full, qpdf, tar; msoffcrypto-tool from the
//! test venv). A missing tool fails the test with the package to install.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_inspect::{InspectConfig, Inspector};

pub const EICAR: &[u8] = rampart_inspect::hash_list::EICAR;

/// Runs `program` in `dir`, failing clearly if it is not installed.
pub fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program:?} ({e}): install it (scripts/install-test-deps.sh; \
                 Debian packages zip, p7zip-full, qpdf, tar; msoffcrypto-tool in /opt/rampart-test-venv)"
            )
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, data).unwrap();
    p
}

pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// An inspector spooling into its own temp dir (kept alive by the caller).
pub fn inspector(spool: &Path, tweak: impl FnOnce(&mut InspectConfig)) -> Inspector {
    let mut config = InspectConfig {
        spool_dir: Some(spool.to_path_buf()),
        ..InspectConfig::default()
    };
    tweak(&mut config);
    Inspector::new(config).unwrap()
}
