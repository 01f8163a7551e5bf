//! Content inspection of uploads end to end: multipart/form-data parts named
//! by their file name (curl -F, plain and inside intercepted TLS over
//! HTTP/2), DLP on JSON sent by Python requests with only the masked match in
//! the log and events, uploads past `memory_threshold` held in the spool file
//! under the data dir and scanned to their last byte, and uploads past
//! `max_scan_size` forwarded whole as `unscannable: too-large`.

mod gateway_inspection_common;
#[path = "support/https_fixtures.rs"]
mod https_fixtures;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateway_inspection_common::{
    files_origins_and_gateway, gateway, require, sha256_of, FileOrigin, EICAR,
};
use support::{curl, eventually, free_port, run, Rampart};

const CARD: &str = "4111 1111 1111 1111";
const CARD_MASKED: &str = "4111 **** **** 1111";

/// Everything the gateway wrote about flows and findings: the access log and
/// every event in the store.
fn everything_recorded(gw: &Rampart) -> String {
    let log = std::fs::read_to_string(gw.data_dir().join("access.log")).unwrap_or_default();
    let events = serde_json::to_string(&gw.search_events("type = alert", "ocsf")).unwrap();
    format!("{log}\n{events}")
}

fn status_line(out: &str) -> &str {
    out.rsplit('\n').next().unwrap_or(out)
}

#[test]
fn multipart_uploads_name_the_part_file_in_the_finding_plain_and_over_intercepted_http2() {
    require(&["curl"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let (plain, tls, gw) = files_origins_and_gateway(
        dir.path(),
        &root,
        "[inspect.actions]\nsensitive = \"block\"\n",
    );
    let ca = gw.gateway_ca();
    let payment = dir.path().join("payment.txt");
    std::fs::write(&payment, format!("name: Alice\ncard: {CARD}\nexp: 12/29\n")).unwrap();
    let eicar = dir.path().join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();

    let file_arg = format!("document=@{}", payment.display());
    let cases = [
        (format!("http://files.test:{}/upload", plain.port), "1.1"),
        (format!("https://files.test:{}/upload", tls.port), "2"),
    ];
    for (url, version) in &cases {
        let (_, out, err) = curl(
            &gw.proxy_url(),
            &[
                "--http2",
                "--cacert",
                ca.to_str().unwrap(),
                "-H",
                "Accept: text/html",
                "-F",
                "comment=see attached",
                "-F",
                &file_arg,
                "-w",
                "\n%{http_code} %{http_version}",
                url,
            ],
        );
        assert_eq!(
            status_line(&out),
            format!("403 {version}"),
            "{url}: {out} {err}"
        );
        assert!(
            out.contains("threat protection: sensitive (payment-card) in payment.txt"),
            "{out}"
        );
        let record = gw.find_record(|r| r["target"] == url.as_str());
        let finding = &record["upload_inspection"]["findings"][0];
        assert_eq!(finding["path"], "payment.txt", "{record}");
        assert_eq!(finding["engine"], "dlp", "{record}");
        assert_eq!(finding["masked"][0], CARD_MASKED, "{record}");
    }
    // A malicious file part is found by its own hash, named by its file name.
    let url = format!("http://files.test:{}/avatar", plain.port);
    let (_, out, _) = curl(
        &gw.proxy_url(),
        &[
            "-F",
            &format!("avatar=@{}", eicar.display()),
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert!(out.ends_with("403"), "{out}");
    assert!(
        out.contains("malicious (builtin:EICAR-Test-File) in eicar.com"),
        "{out}"
    );
    // None of them reached an origin.
    assert!(
        !root.join("uploads.log").exists(),
        "a refused upload was forwarded"
    );
    let recorded = everything_recorded(&gw);
    assert!(!recorded.contains(CARD), "the card number was recorded");
}

const REQUESTS_PY: &str = r#"
import json, sys, requests
proxy, ca, url, card = sys.argv[1:5]
r = requests.post(url, json={"order": 17, "card": card},
                  proxies={"http": proxy, "https": proxy}, verify=ca, timeout=30)
print(r.status_code)
print(r.text)
"#;

/// POSTs `{"order": 17, "card": CARD}` with Python requests through the
/// gateway; (status, body).
fn post_json_with_requests(gw: &Rampart, ca: &Path, url: &str, card: &str) -> (u16, String) {
    require(&["python3"]);
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(REQUESTS_PY)
        .arg(gw.proxy_url())
        .arg(ca)
        .arg(url)
        .arg(card));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python requests failed (Debian python3-requests installed?): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (status.trim().parse().unwrap_or(0), body.trim().to_owned())
}

#[test]
fn dlp_finds_a_luhn_valid_card_in_json_from_python_requests_and_records_only_the_masked_match() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    // Default inspection policy: sensitive uploads are alerted on and pass.
    let (plain, tls, gw) = files_origins_and_gateway(dir.path(), &root, "");
    let ca = gw.gateway_ca();
    for url in [
        format!("http://files.test:{}/orders", plain.port),
        format!("https://files.test:{}/orders", tls.port),
    ] {
        let (status, _) = post_json_with_requests(&gw, &ca, &url, CARD);
        assert_eq!(status, 200, "{url}");
        let record = gw.find_record(|r| r["target"] == url.as_str());
        let inspection = &record["upload_inspection"];
        assert_eq!(inspection["verdict"], "sensitive", "{record}");
        assert_eq!(inspection["action"], "alert", "{record}");
        assert_eq!(
            inspection["findings"][0]["rule"], "payment-card",
            "{record}"
        );
        assert_eq!(
            inspection["findings"][0]["masked"][0], CARD_MASKED,
            "{record}"
        );
    }
    // A number that fails the Luhn check is not a card: clean.
    let url = format!("http://files.test:{}/not-a-card", plain.port);
    let (status, _) = post_json_with_requests(&gw, &ca, &url, "4111 1111 1111 1112");
    assert_eq!(status, 200);
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["upload_inspection"]["verdict"], "clean", "{record}");

    // The findings are events with the masked match, never the number.
    let mut alerts = String::new();
    eventually(Duration::from_secs(15), || {
        alerts = serde_json::to_string(&gw.search_events("type = alert", "ocsf")).unwrap();
        alerts.matches("Sensitive data").count() >= 2
    });
    assert!(alerts.contains(CARD_MASKED), "{alerts}");
    let recorded = everything_recorded(&gw);
    assert!(
        !recorded.contains(CARD),
        "the card number was recorded: {recorded}"
    );
    assert!(!recorded.contains("4111111111111111"), "{recorded}");
}

/// Writes `len` bytes of text to `path`, ending with `tail`.
fn text_file(path: &Path, len: usize, tail: &str) {
    let line = "the quick brown fox jumps over the lazy dog 0123456789\n";
    let mut text = line.repeat((len - tail.len()) / line.len() + 1);
    text.truncate(len - tail.len());
    text.push_str(tail);
    std::fs::write(path, text).unwrap();
}

#[test]
fn uploads_past_memory_threshold_spool_to_the_data_dir_and_a_match_at_their_end_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let (plain, tls, gw) = files_origins_and_gateway(
        dir.path(),
        &root,
        "[inspect.actions]\nsensitive = \"block\"\n",
    );
    let ca = gw.gateway_ca();
    const LEN: usize = 40 << 20;
    let marked = dir.path().join("marked.txt");
    text_file(&marked, LEN, &format!("\ncard: {CARD}\n"));
    let clean = dir.path().join("clean.txt");
    text_file(&clean, LEN, "\nthe end\n");
    let rss_before = gw.rss_kib();

    // 40 MiB, a card number in its last bytes: found, refused before the
    // origin sees a byte.
    let url = format!("http://files.test:{}/big", plain.port);
    let data = format!("@{}", marked.display());
    let (_, out, err) = curl(
        &gw.proxy_url(),
        &[
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &data,
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert!(out.ends_with("403"), "{out} {err}");
    assert!(
        out.contains("threat protection: sensitive (payment-card)"),
        "{out}"
    );
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["upload_inspection"]["size"], LEN as u64, "{record}");
    assert!(
        !root.join("uploads.log").exists(),
        "the refused upload was forwarded"
    );

    // A clean 40 MiB upload is forwarded intact from the spool, over
    // intercepted TLS with HTTP/2 on both sides.
    let url = format!("https://files.test:{}/big", tls.port);
    let data = format!("@{}", clean.display());
    let (_, out, err) = curl(
        &gw.proxy_url(),
        &[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &data,
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ],
    );
    assert_eq!(out, format!("{LEN}\n200 2"), "{err}");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(record["upload_inspection"]["verdict"], "clean", "{record}");
    assert_eq!(record["bytes_from_client"], LEN as u64, "{record}");
    assert_eq!(sha256_of(&root.join("received-0")), sha256_of(&clean));

    // Held on disk, not in memory: the gateway grew by far less than the
    // 80 MiB it held, and the spool directory is under the data dir, empty
    // once the flows ended (spool files are unlinked at creation).
    let peak = gw.peak_rss_kib();
    assert!(
        peak < rss_before + 30 * 1024,
        "peak RSS {peak} KiB, {rss_before} KiB before the uploads"
    );
    let spool = gw.data_dir().join("inspect-spool");
    assert!(spool.is_dir(), "no spool directory under the data dir");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}

#[test]
fn an_upload_past_max_scan_size_is_unscannable_too_large_and_forwarded_whole_with_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let origin = FileOrigin::plain(&root);
    let gw = gateway("", "[inspect]\nmax_scan_size = 3000000\n", free_port(), &[]);
    let body = dir.path().join("body.bin");
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 5000000 /dev/urandom > {}", body.display())));
    assert!(out.status.success());
    let url = format!("http://files.test:{}/big", origin.port);
    let data = format!("@{}", body.display());
    let (code, answer, err) = curl(&gw.proxy_url(), &["--data-binary", &data, &url]);
    assert_eq!(code, 0, "{err}");
    // The origin got every byte, in order.
    assert_eq!(answer, format!("5000000 {}", sha256_of(&body)));
    let record = gw.find_record(|r| r["target"] == url.as_str());
    let inspection = &record["upload_inspection"];
    assert_eq!(inspection["verdict"], "unscannable: too-large", "{record}");
    assert_eq!(inspection["action"], "alert", "{record}");
    assert!(
        inspection["findings"][0]["rule"]
            .as_str()
            .unwrap_or("")
            .contains("max_scan_size"),
        "{record}"
    );
}
