//! Content inspection of downloads end to end, with the real engines and
//! files made by the real tools: a real clamd (its database written by the
//! test) on plain HTTP and inside intercepted TLS over HTTP/2, clamd stopped
//! under the gateway; zip bombs (nested and overlapping) with memory bounded;
//! a body past `max_scan_size`; YARA rules and a broken rule file at reload;
//! encrypted 7z (`7z -p`), docx (`msoffcrypto-tool`) and PDF (`qpdf --encrypt`).

mod gateway_inspection_common;
#[path = "support/https_fixtures.rs"]
mod https_fixtures;
mod support;

use std::path::Path;
use std::time::Duration;

use gateway_inspection_common::{
    api, files_origins_and_gateway, gateway, require, sh, Clamd, FileOrigin, CLAMD_MARKER,
    CLAMD_SIGNATURE,
};
use support::{curl, eventually, free_port};

/// `curl -w '\n%{http_code} %{http_version}'` through the gateway; the body
/// and the last line's status and HTTP version.
fn fetch(gw: &support::Rampart, args: &[&str]) -> (String, String) {
    let mut all = vec![
        "-s",
        "-H",
        "Accept: text/html",
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    all.extend_from_slice(args);
    let (_, out, _) = curl(&gw.proxy_url(), &all);
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
    (body.to_owned(), last.to_owned())
}

fn alerts_containing(gw: &support::Rampart, needle: &str) -> String {
    let mut text = String::new();
    eventually(Duration::from_secs(15), || {
        text = serde_json::to_string(&gw.search_events("type = alert", "ocsf")).unwrap();
        text.contains(needle)
    });
    text
}

#[test]
fn clamd_finds_its_signature_plain_and_over_intercepted_http2_and_clamd_down_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("marker.bin"),
        format!("harmless prefix {CLAMD_MARKER} harmless suffix\n"),
    )
    .unwrap();
    std::fs::write(root.join("clean.txt"), "nothing to see here\n").unwrap();
    let mut clamd = Clamd::start(dir.path());
    let (plain, tls, gw) = files_origins_and_gateway(
        dir.path(),
        &root,
        &format!("[inspect.clamav]\naddress = \"{}\"\n", clamd.address()),
    );
    let ca = gw.gateway_ca();
    let ca = ca.to_str().unwrap();

    // Plain HTTP: clamd's signature blocks the download with the block page.
    let url = format!("http://files.test:{}/marker.bin", plain.port);
    let (page, status) = fetch(&gw, &[&url]);
    assert!(status.starts_with("403"), "{status}: {page}");
    assert!(page.contains("threat protection: malicious"), "{page}");
    assert!(page.contains(CLAMD_SIGNATURE), "{page}");
    assert!(page.contains("marker.bin"), "{page}");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    let finding = &record["inspection"]["findings"][0];
    assert_eq!(finding["engine"], "clamav", "{record}");
    assert_eq!(finding["rule"], CLAMD_SIGNATURE, "{record}");

    // Inside intercepted TLS, HTTP/2 between curl and the gateway.
    let url = format!("https://files.test:{}/marker.bin", tls.port);
    let (page, status) = fetch(&gw, &["--http2", "--cacert", ca, &url]);
    assert_eq!(status, "403 2", "{page}");
    assert!(page.contains(CLAMD_SIGNATURE), "{page}");
    let clean = format!("https://files.test:{}/clean.txt", tls.port);
    let (body, status) = fetch(&gw, &["--http2", "--cacert", ca, &clean]);
    assert_eq!(
        (body.as_str(), status.as_str()),
        ("nothing to see here\n", "200 2")
    );

    // Each block is a Detection Finding naming clamd's signature and the file.
    let text = alerts_containing(&gw, CLAMD_SIGNATURE);
    assert!(text.contains("Malware blocked: marker.bin"), "{text}");
    assert!(text.contains("\"class_uid\":2004"), "{text}");

    // clamd stops: nothing passes as clean; fail = "closed" (the default) blocks.
    clamd.stop();
    let url = format!("http://files.test:{}/clean.txt", plain.port);
    let (page, status) = fetch(&gw, &[&url]);
    assert!(
        status.starts_with("403"),
        "clamd down passed a body: {status} {page}"
    );
    let record = gw.find_record(|r| r["target"] == url.as_str());
    let inspection = &record["inspection"];
    assert_eq!(
        inspection["verdict"], "unscannable: engine-error",
        "{record}"
    );
    assert_eq!(inspection["action"], "block", "{record}");
    assert_eq!(inspection["findings"][0]["engine"], "clamav", "{record}");
    assert_eq!(inspection["findings"][0]["fail"], "closed", "{record}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("rampart_inspect_engine_errors_total{engine=\"clamav\"}"),
        "{metrics}"
    );
}

#[test]
fn clamd_down_with_fail_open_passes_the_download_with_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("clean.txt"), "nothing to see here\n").unwrap();
    let origin = FileOrigin::plain(&root);
    // A port nothing listens on: clamd is down from the start.
    let gw = gateway(
        "",
        &format!(
            "[inspect.clamav]\naddress = \"tcp:127.0.0.1:{}\"\nfail = \"open\"\n",
            free_port()
        ),
        free_port(),
        &[],
    );
    let url = format!("http://files.test:{}/clean.txt", origin.port);
    let (body, status) = fetch(&gw, &[&url]);
    assert_eq!(
        (body.as_str(), status.as_str()),
        ("nothing to see here\n", "200 1.1")
    );
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(
        record["inspection"]["verdict"], "unscannable: engine-error",
        "{record}"
    );
    assert_eq!(record["inspection"]["action"], "alert", "{record}");
    assert_eq!(
        record["inspection"]["findings"][0]["fail"], "open",
        "{record}"
    );
    alerts_containing(&gw, "engine-error");
}

/// Writes `overlap.zip` in `root`: a central directory of `entries` entries
/// that all point at one deflated run of `len` zero bytes (the
/// overlapping-entries bomb), built byte by byte with Python's zlib.
fn overlapping_zip(root: &Path, entries: u32, len: u32) {
    sh(
        root,
        &format!(
            r#"python3 - <<'EOF'
import struct, zlib
entries, size = {entries}, {len}
zeros = bytes(size)
c = zlib.compressobj(9, zlib.DEFLATED, -15)
data = c.compress(zeros) + c.flush()
crc = zlib.crc32(zeros)
out = bytearray(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0, crc, len(data), size, 4, 0) + b"kern" + data)
directory = len(out)
for i in range(entries):
    name = b"f%07d" % i
    out += b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0) + name
out += b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, len(out) - directory, directory, 0)
open("overlap.zip", "wb").write(out)
EOF"#
        ),
    );
}

#[test]
fn zip_bombs_nested_and_overlapping_end_unscannable_bomb_with_memory_bounded() {
    require(&["zip"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    // Overlapping: 8,000 entries over one 8 MiB run of zeros (64 GiB claimed).
    overlapping_zip(&root, 8_000, 8 << 20);
    // Nested (42.zip kind): 16 x 16 copies of 8 MiB of zeros, stored at each level.
    sh(
        &root,
        "head -c 8388608 /dev/zero > zeros && zip -q l0.zip zeros && rm zeros && \
         for i in $(seq -w 1 16); do cp l0.zip a$i.zip; done && zip -q -0 l1.zip a*.zip && \
         for i in $(seq -w 1 16); do cp l1.zip b$i.zip; done && zip -q -0 nested.zip b*.zip && \
         rm -f a*.zip b*.zip l0.zip l1.zip",
    );
    let origin = FileOrigin::plain(&root);
    // The configured action for unscannable content: block.
    let gw = gateway(
        "",
        "[inspect.actions]\nunscannable = \"block\"\n",
        free_port(),
        &[],
    );
    let rss_before = gw.rss_kib();
    // The overlapping bomb (under memory_threshold) is held whole: the block page.
    let url = format!("http://files.test:{}/overlap.zip", origin.port);
    let (page, status) = fetch(&gw, &[&url]);
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert!(status.starts_with("403"), "{status} {record}");
    assert!(
        page.contains("threat protection: unscannable: bomb"),
        "{page}"
    );
    assert_eq!(
        record["inspection"]["verdict"], "unscannable: bomb",
        "{record}"
    );
    assert_eq!(record["inspection"]["action"], "block", "{record}");
    // The nested one (2 MiB) streams while scanned and is cut before its end.
    let url = format!("http://files.test:{}/nested.zip", origin.port);
    let out = dir.path().join("nested.out");
    let (code, _, _) = curl(&gw.proxy_url(), &["-sS", "-o", out.to_str().unwrap(), &url]);
    assert_ne!(code, 0, "the nested bomb was delivered whole");
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(
        record["inspection"]["verdict"], "unscannable: bomb",
        "{record}"
    );
    assert!(
        record["error"]
            .as_str()
            .unwrap_or("")
            .contains("cut before its last bytes"),
        "{record}"
    );
    // Bombs expand into the spool and are stopped by what they produce:
    // the gateway's memory grows by far less than what they claim.
    let peak = gw.peak_rss_kib();
    assert!(
        peak < rss_before + 200 * 1024,
        "peak RSS {peak} KiB (before: {rss_before} KiB)"
    );
}

#[test]
fn a_download_past_max_scan_size_is_unscannable_too_large_and_streams_whole_with_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    sh(&root, "head -c 5000000 /dev/urandom > big.bin");
    let origin = FileOrigin::plain(&root);
    let gw = gateway("", "[inspect]\nmax_scan_size = 2000000\n", free_port(), &[]);
    let url = format!("http://files.test:{}/big.bin", origin.port);
    let out = dir.path().join("big.out");
    let (code, _, err) = curl(&gw.proxy_url(), &["-sS", "-o", out.to_str().unwrap(), &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 5_000_000);
    let record = gw.find_record(|r| r["target"] == url.as_str());
    assert_eq!(
        record["inspection"]["verdict"], "unscannable: too-large",
        "{record}"
    );
    assert_eq!(record["inspection"]["action"], "alert", "{record}");
    assert_eq!(record["inspection"]["size"], 5_000_000, "{record}");
    alerts_containing(&gw, "too-large");
}

const MARKER_RULE: &str = "rule Rampart_Marker_One\n{\n    strings:\n        $m = \"RAMPART-YARA-MARKER-ONE\"\n    condition:\n        $m\n}\n";
const SECOND_RULE: &str = "rule Rampart_Marker_Two\n{\n    strings:\n        $m = \"RAMPART-YARA-MARKER-TWO\"\n    condition:\n        $m\n}\n";
const BROKEN_RULE: &str =
    "rule Broken\n{\n    strings:\n        $m = \"unterminated\n    condition:\n        $m\n}\n";

#[test]
fn a_yara_rule_blocks_a_download_and_a_broken_rule_file_is_refused_at_reload_the_old_rules_keep_blocking(
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("one.txt"), "text RAMPART-YARA-MARKER-ONE text\n").unwrap();
    std::fs::write(root.join("two.txt"), "text RAMPART-YARA-MARKER-TWO text\n").unwrap();
    let rules = dir.path().join("rules.yar");
    std::fs::write(&rules, MARKER_RULE).unwrap();
    let origin = FileOrigin::plain(&root);
    let gw = gateway(
        "",
        &format!(
            "[inspect.yara]\nrules = [{:?}]\n",
            rules.display().to_string()
        ),
        free_port(),
        &[],
    );
    let one = format!("http://files.test:{}/one.txt", origin.port);
    let two = format!("http://files.test:{}/two.txt", origin.port);
    let (page, status) = fetch(&gw, &[&one]);
    assert!(status.starts_with("403"), "{status}: {page}");
    assert!(page.contains("Rampart_Marker_One"), "{page}");
    let record = gw.find_record(|r| r["target"] == one.as_str());
    assert_eq!(
        record["inspection"]["findings"][0]["engine"], "yara",
        "{record}"
    );
    assert!(fetch(&gw, &[&two]).1.starts_with("200"));

    // The rule file is replaced by one that does not compile: refused, with
    // the file and line, and the running rules keep blocking.
    std::fs::write(&rules, BROKEN_RULE).unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload");
    assert_ne!(code, 200, "a broken YARA file was accepted: {status}");
    let message = status["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, status) = api(&gw, "GET", "/api/v1/policy/status");
    let message = format!("{message} {}", status["last_error"]["message"]);
    assert!(
        message.contains(&format!("{}:4", rules.display())),
        "{message}"
    );
    assert!(
        fetch(&gw, &[&one]).1.starts_with("403"),
        "old rules stopped blocking"
    );

    // A valid edit of the same file is applied by the next reload.
    std::fs::write(&rules, SECOND_RULE).unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload");
    assert_eq!(code, 200, "{status}");
    let (page, status) = fetch(&gw, &[&two]);
    assert!(
        status.starts_with("403") && page.contains("Rampart_Marker_Two"),
        "{page}"
    );
    assert!(fetch(&gw, &[&one]).1.starts_with("200"));
}

/// Makes the encrypted fixtures in `root` with the real tools: locked.docx
/// (msoffcrypto-tool), locked.pdf (qpdf), data.7z (encrypted data, names
/// visible) and hidden.7z (encrypted headers too).
fn encrypted_fixtures(root: &Path) {
    require(&["7z", "qpdf"]);
    let msoffcrypto = "/opt/rampart-test-venv/bin/msoffcrypto-tool";
    assert!(
        Path::new(msoffcrypto).exists(),
        "{msoffcrypto} is missing: run scripts/install-test-deps.sh (pip install msoffcrypto-tool)"
    );
    std::fs::write(root.join("report.txt"), "quarterly figures\n").unwrap();
    sh(root, "7z a -bd -y -psecret data.7z report.txt >/dev/null");
    sh(
        root,
        "7z a -bd -y -psecret -mhe=on hidden.7z report.txt >/dev/null",
    );
    sh(root, "qpdf --empty --encrypt user owner 256 -- locked.pdf");
    // A minimal Word document, then encrypted (ECMA-376 agile encryption).
    sh(
        root,
        r#"python3 - <<'EOF'
import zipfile
ct = '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
rels = '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>'
doc = '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>secret plans</w:t></w:r></w:p></w:body></w:document>'
with zipfile.ZipFile("plain.docx", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("[Content_Types].xml", ct)
    z.writestr("_rels/.rels", rels)
    z.writestr("word/document.xml", doc)
EOF"#,
    );
    sh(
        root,
        &format!("{msoffcrypto} -e -p secret plain.docx locked.docx"),
    );
}

#[test]
fn encrypted_7z_docx_and_pdf_downloads_are_found_encrypted_and_handled_per_the_actions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    encrypted_fixtures(&root);
    let (plain, tls, blocking) = files_origins_and_gateway(
        dir.path(),
        &root,
        "[inspect.actions]\nencrypted = \"block\"\n",
    );
    for (file, path, rule) in [
        ("data.7z", "data.7z!/report.txt", "7z-encrypted-entry"),
        ("hidden.7z", "hidden.7z", "7z-encrypted-headers"),
        ("locked.docx", "locked.docx", "ooxml-encrypted-package"),
        ("locked.pdf", "locked.pdf", "pdf-encrypt"),
    ] {
        let url = format!("http://files.test:{}/{file}", plain.port);
        let (page, status) = fetch(&blocking, &[&url]);
        assert!(status.starts_with("403"), "{file}: {status}");
        assert!(
            page.contains("threat protection: encrypted"),
            "{file}: {page}"
        );
        let record = blocking.find_record(|r| r["target"] == url.as_str());
        let inspection = &record["inspection"];
        assert_eq!(inspection["verdict"], "encrypted", "{record}");
        assert_eq!(inspection["findings"][0]["path"], path, "{record}");
        assert_eq!(inspection["findings"][0]["rule"], rule, "{record}");
    }
    // Inside intercepted TLS over HTTP/2 as well.
    let ca = blocking.gateway_ca();
    let url = format!("https://files.test:{}/locked.docx", tls.port);
    let (page, status) = fetch(
        &blocking,
        &["--http2", "--cacert", ca.to_str().unwrap(), &url],
    );
    assert_eq!(status, "403 2", "{page}");
    assert!(page.contains("locked.docx"), "{page}");

    // With the default action (alert) the same files pass, whole, with a finding.
    let alerting = gateway("", "", free_port(), &[]);
    for file in ["data.7z", "hidden.7z", "locked.docx", "locked.pdf"] {
        let url = format!("http://files.test:{}/{file}", plain.port);
        let out = dir.path().join(format!("{file}.out"));
        let (code, _, err) = curl(
            &alerting.proxy_url(),
            &["-sS", "-o", out.to_str().unwrap(), &url],
        );
        assert_eq!(code, 0, "{file}: {err}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(root.join(file)).unwrap(),
            "{file} was changed in transit"
        );
        let record = alerting.find_record(|r| r["target"] == url.as_str());
        assert_eq!(record["inspection"]["verdict"], "encrypted", "{record}");
        assert_eq!(record["inspection"]["action"], "alert", "{record}");
    }
    alerts_containing(&alerting, "Encrypted content allowed");
}

/// Rules that all stream (`docs/inspection.md`, "YARA while the body
/// streams"): a marker alone, and two halves that must both occur.
const STREAMING_RULES: &str = "rule Rampart_Stream_Marker { strings: $m = \"RAMPART-STREAM-YARA-MARKER\" condition: $m }\n\
rule Rampart_Stream_Pair { strings: $a = \"PAIR-HALF-ONE\" $b = { 50 41 49 52 [0-2] 54 57 4F } condition: $a and $b }\n";

/// `len` bytes of noise with `plants` written at their offsets.
fn noise_file(path: &Path, len: usize, plants: &[(usize, &[u8])]) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data[0] = 0;
    for (at, plant) in plants {
        data[*at..*at + plant.len()].copy_from_slice(plant);
    }
    std::fs::write(path, data).unwrap();
}

#[test]
fn yara_rules_decided_while_a_long_download_streams_cut_it_plain_and_over_intercepted_http2_and_clean_ones_pass_whole(
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    // rampart_inspect::YARA_STREAM_BLOCK: the size of the blocks YARA scans.
    let block = 256 * 1024;
    let len = 6 * 1024 * 1024;
    // The marker across a scan block boundary; the pair's halves megabytes
    // apart, the second across another boundary.
    noise_file(
        &root.join("marker.bin"),
        len,
        &[(9 * block - 11, b"RAMPART-STREAM-YARA-MARKER")],
    );
    noise_file(
        &root.join("pair.bin"),
        len,
        &[
            (100_000, b"PAIR-HALF-ONE"),
            (17 * block - 3, b"PAIR\x00TWO"),
        ],
    );
    noise_file(
        &root.join("half.bin"),
        len,
        &[(17 * block - 3, b"PAIR\x00TWO")],
    );
    let rules = dir.path().join("streaming.yar");
    std::fs::write(&rules, STREAMING_RULES).unwrap();
    let (plain, tls, gw) = files_origins_and_gateway(
        dir.path(),
        &root,
        &format!(
            "[inspect.yara]\nrules = [{:?}]\n",
            rules.display().to_string()
        ),
    );
    let ca = gw.gateway_ca();
    let ca = ca.to_str().unwrap();
    let out = dir.path().join("out.bin");
    let cases = [
        (format!("http://files.test:{}", plain.port), vec![]),
        (
            format!("https://files.test:{}", tls.port),
            vec!["--http2", "--cacert", ca],
        ),
    ];
    for (base, extra) in &cases {
        for (file, rule) in [
            ("marker.bin", Some("Rampart_Stream_Marker")),
            ("pair.bin", Some("Rampart_Stream_Pair")),
            ("half.bin", None),
        ] {
            let url = format!("{base}/{file}");
            let _ = std::fs::remove_file(&out);
            let mut args = vec!["-sS", "-o", out.to_str().unwrap()];
            args.extend_from_slice(extra);
            args.push(&url);
            let (code, _, err) = curl(&gw.proxy_url(), &args);
            let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            let record = gw.find_record(|r| r["target"] == url.as_str());
            match rule {
                Some(rule) => {
                    assert_ne!(code, 0, "{url}: a malicious long download completed: {err}");
                    assert!(got < len as u64, "{url}: {got} of {len} bytes delivered");
                    assert_eq!(record["inspection"]["verdict"], "malicious", "{record}");
                    let finding = &record["inspection"]["findings"][0];
                    assert_eq!(finding["engine"], "yara", "{record}");
                    assert_eq!(finding["rule"], rule, "{record}");
                }
                None => {
                    assert_eq!(code, 0, "{url}: {err}");
                    assert_eq!(got, len as u64, "{url}");
                    assert_eq!(record["inspection"]["verdict"], "clean", "{record}");
                    assert_eq!(record["inspection"]["size"], len, "{record}");
                }
            }
        }
    }
}
