//! The web console in a real headless Chromium (Debian's `chromium`) driven by
//! Playwright for Python (tests/console/browser_test.py), against the real
//! server with events made by proxied curl requests. Screenshots of each page
//! are kept under the test's output directory (printed).

#[path = "console/common.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Console, ADMIN_PASSWORD, ANALYST_PASSWORD};

const INSTALL: &str = "bash scripts/install-test-deps.sh (Debian `chromium`, and PyPI `playwright` in /opt/rampart-test-venv; never `playwright install`)";

fn venv_python() -> PathBuf {
    let venv =
        std::env::var("RAMPART_TEST_VENV").unwrap_or_else(|_| "/opt/rampart-test-venv".into());
    Path::new(&venv).join("bin/python")
}

#[test]
fn login_search_detail_devices_isolation_explain_roles_csrf_and_redirects_work_in_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: install it with {INSTALL}"
    );
    let python = venv_python();
    let has_playwright = Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_playwright,
        "{} cannot import playwright: install it with {INSTALL}",
        python.display()
    );

    let c = Console::start();
    let device = c.enroll_device("alice");
    // Kept after the test so a reviewer can look at the pages.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("screenshot dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser_test.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg(c.base())
        .arg(&out)
        .arg(ADMIN_PASSWORD)
        .arg(ANALYST_PASSWORD)
        .arg(&device)
        .output()
        .expect("run the browser script");
    println!("screenshots in {}", out.display());
    println!("{}", String::from_utf8_lossy(&run.stdout));
    assert!(
        run.status.success(),
        "browser checks failed ({}):\n{}\n{}\nserver log:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        c.server.stderr()
    );
    for shot in [
        "02-events-search.png",
        "02b-events-columns.png",
        "08-devices.png",
        "09-device-isolated.png",
        "11-audit-events.png",
    ] {
        assert!(out.join(shot).exists(), "{shot} missing");
    }
}
