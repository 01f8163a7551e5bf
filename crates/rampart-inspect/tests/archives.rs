//! Archives, encryption and limits, with fixtures made by the real tools.

mod common;

use std::io::Write;

use common::{inspector, read, run, write, EICAR};
use rampart_inspect::{Engine, FileType, ScanContext, UnscannableReason, Verdict};

#[test]
fn eicar_download_is_malicious_by_the_builtin_hash_list() {
    let spool = tempfile::tempdir().unwrap();
    let report = inspector(spool.path(), |_| {})
        .scan_bytes(ScanContext::download().with_file_name("eicar.com"), EICAR);
    assert_eq!(report.verdict, Verdict::Malicious);
    assert_eq!(report.verdict.as_str(), "malicious");
    assert_eq!(report.findings[0].engine, Engine::Hash);
    assert_eq!(report.findings[0].container_path, "eicar.com");
    assert_eq!(
        report.findings[0].rule_or_signature,
        "builtin:EICAR-Test-File"
    );
    assert_eq!(
        report.sha256,
        "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    );
}

#[test]
fn clean_text_download_is_clean_with_no_findings() {
    let spool = tempfile::tempdir().unwrap();
    let report =
        inspector(spool.path(), |_| {}).scan_bytes(ScanContext::download(), b"hello, world\n");
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(report.file_type, FileType::Text);
    assert!(report.findings.is_empty());
    assert_eq!(report.verdict_names(), vec!["clean"]);
}

#[test]
fn eicar_in_a_zip_in_a_tar_gz_is_found_at_depth_three_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "eicar.com", EICAR);
    write(d, "readme.txt", b"nothing to see\n");
    run(d, "zip", &["-q", "inner.zip", "eicar.com", "readme.txt"]);
    std::fs::create_dir(d.join("bundle")).unwrap();
    std::fs::rename(d.join("inner.zip"), d.join("bundle/inner.zip")).unwrap();
    run(d, "tar", &["czf", "bundle.tar.gz", "bundle"]);
    let body = read(d, "bundle.tar.gz");

    let report = inspector(d, |_| {}).scan_bytes(
        ScanContext::download().with_file_name("bundle.tar.gz"),
        &body,
    );
    assert_eq!(report.file_type, FileType::Gzip);
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    let f = &report.findings[0];
    assert_eq!(
        f.container_path,
        "bundle.tar.gz!/bundle.tar!/bundle/inner.zip!/eicar.com"
    );
    assert_eq!(f.file_type, FileType::Text);
    assert_eq!(f.size, 68);
    assert_eq!(report.findings.len(), 1);
}

#[test]
fn password_protected_zip_entry_is_encrypted_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "payload.exe", b"MZ not really an exe");
    write(d, "notes.txt", b"plain\n");
    run(
        d,
        "zip",
        &["-q", "-P", "secret", "invoice.zip", "payload.exe"],
    );
    run(d, "zip", &["-q", "invoice.zip", "notes.txt"]);
    let report = inspector(d, |_| {}).scan_bytes(
        ScanContext::download().with_file_name("invoice.zip"),
        &read(d, "invoice.zip"),
    );
    assert_eq!(report.verdict, Verdict::Encrypted, "{report:#?}");
    assert_eq!(report.findings.len(), 1);
    assert_eq!(
        report.findings[0].container_path,
        "invoice.zip!/payload.exe"
    );
    assert_eq!(report.findings[0].engine, Engine::Encryption);
}

#[test]
fn sevenz_with_encrypted_headers_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "payload.exe", b"MZ payload");
    run(
        d,
        "7z",
        &[
            "a",
            "-bd",
            "-psecret",
            "-mhe=on",
            "locked.7z",
            "payload.exe",
        ],
    );
    let report = inspector(d, |_| {}).scan_bytes(
        ScanContext::download().with_file_name("locked.7z"),
        &read(d, "locked.7z"),
    );
    assert_eq!(report.file_type, FileType::SevenZip);
    assert_eq!(report.verdict, Verdict::Encrypted, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "locked.7z");
    assert_eq!(report.findings[0].rule_or_signature, "7z-encrypted-headers");
}

#[test]
fn sevenz_with_encrypted_data_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "payload.exe", b"MZ payload");
    run(
        d,
        "7z",
        &["a", "-bd", "-psecret", "locked.7z", "payload.exe"],
    );
    let report = inspector(d, |_| {}).scan_bytes(
        ScanContext::download().with_file_name("locked.7z"),
        &read(d, "locked.7z"),
    );
    assert_eq!(report.verdict, Verdict::Encrypted, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "locked.7z!/payload.exe");
    assert_eq!(report.findings[0].rule_or_signature, "7z-encrypted-entry");
}

#[test]
fn eicar_in_a_plain_7z_is_malicious() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "eicar.com", EICAR);
    write(d, "other.txt", b"other\n");
    run(d, "7z", &["a", "-bd", "plain.7z", "eicar.com", "other.txt"]);
    let report = inspector(d, |_| {}).scan_bytes(
        ScanContext::download().with_file_name("plain.7z"),
        &read(d, "plain.7z"),
    );
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "plain.7z!/eicar.com");
}

#[test]
fn encrypted_docx_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "[Content_Types].xml", br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#);
    write(d, "_rels/.rels", br#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#);
    write(d, "word/document.xml", br#"<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>secret plans</w:t></w:r></w:p></w:body></w:document>"#);
    run(
        d,
        "zip",
        &[
            "-q",
            "-X",
            "plain.docx",
            "[Content_Types].xml",
            "_rels/.rels",
            "word/document.xml",
        ],
    );
    let plain = read(d, "plain.docx");
    assert_eq!(rampart_inspect::sniff(&plain), FileType::Docx);
    let spool = tempfile::tempdir().unwrap();
    let plain_report = inspector(spool.path(), |_| {}).scan_bytes(ScanContext::download(), &plain);
    assert_eq!(plain_report.verdict, Verdict::Clean, "{plain_report:#?}");

    run(
        d,
        "/opt/rampart-test-venv/bin/msoffcrypto-tool",
        &["-e", "-p", "secret", "plain.docx", "locked.docx"],
    );
    let report = inspector(spool.path(), |_| {}).scan_bytes(
        ScanContext::download().with_file_name("locked.docx"),
        &read(d, "locked.docx"),
    );
    assert_eq!(report.file_type, FileType::Ole);
    assert_eq!(report.verdict, Verdict::Encrypted, "{report:#?}");
    assert_eq!(
        report.findings[0].rule_or_signature,
        "ooxml-encrypted-package"
    );
}

#[test]
fn encrypted_pdf_is_encrypted_and_a_plain_one_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "qpdf", &["--empty", "plain.pdf"]);
    run(
        d,
        "qpdf",
        &[
            "--encrypt",
            "u",
            "o",
            "256",
            "--",
            "plain.pdf",
            "locked.pdf",
        ],
    );
    let insp = inspector(d, |_| {});
    let plain = insp.scan_bytes(ScanContext::download(), &read(d, "plain.pdf"));
    assert_eq!(plain.file_type, FileType::Pdf);
    assert_eq!(plain.verdict, Verdict::Clean, "{plain:#?}");
    let locked = insp.scan_bytes(
        ScanContext::download().with_file_name("report.pdf"),
        &read(d, "locked.pdf"),
    );
    assert_eq!(locked.verdict, Verdict::Encrypted, "{locked:#?}");
    assert_eq!(locked.findings[0].container_path, "report.pdf");
}

#[test]
fn zip_bomb_is_unscannable_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "zeros", &vec![0u8; 50 * 1024 * 1024]);
    run(d, "zip", &["-q", "bomb.zip", "zeros"]);
    std::fs::remove_file(d.join("zeros")).unwrap();
    let body = read(d, "bomb.zip");
    assert!(body.len() < 100 * 1024);
    let report =
        inspector(d, |_| {}).scan_bytes(ScanContext::download().with_file_name("bomb.zip"), &body);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Bomb),
        "{report:#?}"
    );
    assert_eq!(report.verdict.as_str(), "unscannable");
}

#[test]
fn nested_42_style_bomb_is_unscannable_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Level 0: 4 MiB of zeros (under the 1 MiB floor times nothing: each
    // entry alone is fine); each level holds 16 copies of the one below.
    write(d, "zeros", &vec![0u8; 4 * 1024 * 1024]);
    run(d, "zip", &["-q", "l0.zip", "zeros"]);
    for level in 1..=3 {
        let names: Vec<String> = (0..16).map(|i| format!("{i:02}.zip")).collect();
        for n in &names {
            std::fs::copy(d.join(format!("l{}.zip", level - 1)), d.join(n)).unwrap();
        }
        let mut args = vec!["-q".to_owned(), "-0".to_owned(), format!("l{level}.zip")];
        args.extend(names.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(d, "zip", &args);
    }
    // 16^3 * 4 MiB = 16 GiB when fully expanded.
    let body = read(d, "l3.zip");
    let report = inspector(d, |c| c.archive.max_ratio = 1_000_000)
        .scan_bytes(ScanContext::download().with_file_name("42.zip"), &body);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Bomb),
        "{report:#?}"
    );
    assert!(
        report.findings[0]
            .rule_or_signature
            .contains("max_expanded_size"),
        "{report:#?}"
    );
}

/// A zip whose central directory lists many entries that all point at the
/// same compressed data (the "overlapping files" bomb).
fn overlapping_zip(entries: usize, payload_len: usize) -> Vec<u8> {
    let payload = vec![0u8; payload_len];
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&payload).unwrap();
    let data = enc.finish().unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(&payload);
    let crc = crc.sum();
    let name = b"zeros";
    let mut out = Vec::new();
    // One local header + data.
    out.extend_from_slice(b"PK\x03\x04");
    out.extend_from_slice(&[20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&data);
    let cd_start = out.len();
    for i in 0..entries {
        let cd_name = format!("z{i:04}");
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(payload_len as u32).to_le_bytes());
        out.extend_from_slice(&(cd_name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 12]); // extra, comment, disk, attrs
        out.extend_from_slice(&0u32.to_le_bytes()); // local header offset 0
        out.extend_from_slice(cd_name.as_bytes());
    }
    let cd_len = out.len() - cd_start;
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    out.extend_from_slice(&(cd_len as u32).to_le_bytes());
    out.extend_from_slice(&(cd_start as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[test]
fn overlapping_entry_zip_is_unscannable_bomb() {
    let spool = tempfile::tempdir().unwrap();
    let body = overlapping_zip(1000, 2 * 1024 * 1024);
    let report = inspector(spool.path(), |_| {}).scan_bytes(ScanContext::download(), &body);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Bomb),
        "{report:#?}"
    );
}

#[test]
fn archives_nested_past_max_depth_are_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.txt", b"deep\n");
    run(d, "zip", &["-q", "z0.zip", "a.txt"]);
    for level in 1..=3 {
        run(
            d,
            "zip",
            &[
                "-q",
                &format!("z{level}.zip"),
                &format!("z{}.zip", level - 1),
            ],
        );
    }
    let report = inspector(d, |c| c.archive.max_depth = 2).scan_bytes(
        ScanContext::download().with_file_name("z3.zip"),
        &read(d, "z3.zip"),
    );
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::TooDeep),
        "{report:#?}"
    );
    assert_eq!(report.findings[0].container_path, "z3.zip!/z2.zip!/z1.zip");
}

#[test]
fn too_many_entries_is_a_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut names = Vec::new();
    for i in 0..20 {
        let n = format!("f{i}.txt");
        write(d, &n, b"x\n");
        names.push(n);
    }
    let mut args = vec!["-q", "many.zip"];
    args.extend(names.iter().map(String::as_str));
    run(d, "zip", &args);
    let report = inspector(d, |c| c.archive.max_entries = 10)
        .scan_bytes(ScanContext::download(), &read(d, "many.zip"));
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Bomb),
        "{report:#?}"
    );
}

#[test]
fn truncated_zip_is_unscannable_corrupt_never_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.txt", &vec![b'a'; 10_000]);
    run(d, "zip", &["-q", "a.zip", "a.txt"]);
    let body = read(d, "a.zip");
    let report = inspector(d, |_| {}).scan_bytes(ScanContext::download(), &body[..body.len() / 2]);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Corrupt),
        "{report:#?}"
    );
}

#[test]
fn body_past_max_scan_size_is_too_large_but_its_hash_is_still_checked() {
    let spool = tempfile::tempdir().unwrap();
    let insp = inspector(spool.path(), |c| {
        c.max_scan_size = 1000;
        c.memory_threshold = 100;
    });
    let mut session = insp.session(ScanContext::download());
    for _ in 0..100 {
        session.feed(&[b'x'; 1000]).unwrap();
    }
    assert!(session.is_too_large());
    let report = session.finish();
    assert_eq!(report.size, 100_000);
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::TooLarge)
    );

    // EICAR is 68 bytes: with a 10-byte cap the full hash still names it.
    let insp = inspector(spool.path(), |c| c.max_scan_size = 10);
    let report = insp.scan_bytes(ScanContext::download(), EICAR);
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert!(report.verdict_names().contains(&"unscannable"));
}

#[test]
fn spooled_body_is_scanned_like_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut big = vec![b'.'; 3 * 1024 * 1024];
    big.extend_from_slice(b"\n");
    write(d, "big.txt", &big);
    write(d, "eicar.com", EICAR);
    run(d, "zip", &["-q", "-0", "mixed.zip", "big.txt", "eicar.com"]);
    let spool = tempfile::tempdir().unwrap();
    let insp = inspector(spool.path(), |c| c.memory_threshold = 64 * 1024);
    let body = read(d, "mixed.zip");
    let mut session = insp.session(ScanContext::download().with_file_name("mixed.zip"));
    for chunk in body.chunks(16 * 1024) {
        session.feed(chunk).unwrap();
    }
    let report = session.finish();
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "mixed.zip!/eicar.com");
    // Spool files are unlinked: nothing is left behind.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

#[test]
fn scan_time_budget_exhausted_is_unscannable_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.txt", b"a\n");
    run(d, "zip", &["-q", "a.zip", "a.txt"]);
    let insp = inspector(d, |c| c.scan_timeout = std::time::Duration::from_nanos(1));
    let report = insp.scan_bytes(ScanContext::download(), &read(d, "a.zip"));
    assert_eq!(
        report.verdict,
        Verdict::Unscannable(UnscannableReason::Timeout),
        "{report:#?}"
    );
}

#[test]
fn gzip_encoded_eicar_is_malicious() {
    // A `Content-Encoding: gzip` body fed as it travels, not decoded first.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(EICAR).unwrap();
    let body = enc.finish().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let report = inspector(spool.path(), |_| {}).scan_bytes(
        ScanContext::download().with_file_name("eicar.com.gz"),
        &body,
    );
    assert_eq!(report.file_type, FileType::Gzip);
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "eicar.com.gz!/eicar.com");
}

#[test]
fn eicar_in_tar_bz2_and_tar_xz_is_malicious() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "eicar.com", EICAR);
    run(d, "tar", &["cjf", "e.tar.bz2", "eicar.com"]);
    run(d, "tar", &["cJf", "e.tar.xz", "eicar.com"]);
    let insp = inspector(d, |_| {});
    for (name, file_type) in [("e.tar.bz2", FileType::Bzip2), ("e.tar.xz", FileType::Xz)] {
        let report = insp.scan_bytes(ScanContext::download().with_file_name(name), &read(d, name));
        assert_eq!(report.file_type, file_type);
        assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
        assert_eq!(
            report.findings[0].container_path,
            format!("{name}!/e.tar!/eicar.com")
        );
    }
}
