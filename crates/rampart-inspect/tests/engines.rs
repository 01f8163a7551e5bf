//! Hash lists, YARA rules and DLP through the whole session.

mod common;

use common::{inspector, run, write, EICAR};
use md5::Digest as _;
use rampart_inspect::{InspectConfig, Inspector, ScanContext, Verdict};

#[cfg(feature = "yara")]
const MARKER_RULE: &str = r#"
rule Rampart_Test_Marker
{
    strings:
        $m = "RAMPART-YARA-TEST-MARKER"
    condition:
        $m
}
"#;

#[test]
#[cfg(feature = "yara")]
fn yara_rule_matching_a_marker_makes_a_download_malicious() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = write(d, "marker.yar", MARKER_RULE.as_bytes());
    let insp = inspector(d, |c| c.yara.rules = vec![rules]);
    let report = insp.scan_bytes(
        ScanContext::download(),
        b"some text RAMPART-YARA-TEST-MARKER more text",
    );
    assert_eq!(report.verdict, Verdict::Malicious);
    assert_eq!(report.findings[0].engine, rampart_inspect::Engine::Yara);
    assert_eq!(report.findings[0].rule_or_signature, "Rampart_Test_Marker");
    let clean = insp.scan_bytes(ScanContext::download(), b"nothing here");
    assert_eq!(clean.verdict, Verdict::Clean);
}

#[test]
#[cfg(feature = "yara")]
fn yara_rules_see_archive_entries_and_spooled_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = write(d, "marker.yar", MARKER_RULE.as_bytes());
    let mut big = vec![b'z'; 2 * 1024 * 1024];
    big.extend_from_slice(b"RAMPART-YARA-TEST-MARKER");
    write(d, "big.bin", &big);
    run(d, "zip", &["-q", "pack.zip", "big.bin"]);
    let insp = inspector(d, |c| {
        c.yara.rules = vec![rules];
        c.memory_threshold = 64 * 1024;
        c.archive.max_ratio = 10_000;
    });
    let report = insp.scan_bytes(
        ScanContext::download().with_file_name("pack.zip"),
        &std::fs::read(d.join("pack.zip")).unwrap(),
    );
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "pack.zip!/big.bin");
    // The spooled (2 MiB > 64 KiB) plain body too.
    let report = insp.scan_bytes(ScanContext::download(), &big);
    assert_eq!(report.verdict, Verdict::Malicious);
}

#[test]
#[cfg(feature = "yara")]
fn broken_yara_rule_file_is_rejected_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = write(d, "broken.yar", b"rule ok { condition: true }\n\nrule broken {\n  strings: $a = \"x\"\n  condition: $b\n}\n");
    let config = InspectConfig {
        spool_dir: Some(d.to_path_buf()),
        yara: rampart_inspect::YaraConfig {
            rules: vec![bad.clone()],
            ..Default::default()
        },
        ..InspectConfig::default()
    };
    let err = Inspector::new(config)
        .err()
        .expect("broken rules must not build");
    assert!(matches!(
        err,
        rampart_inspect::InspectError::YaraCompile { .. }
    ));
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:5:", bad.display())), "{msg}");
}

#[test]
fn hash_list_files_with_md5_and_sha1_feeds_match() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let body = b"a known bad file\n";
    let md5 = hex::encode(md5::Md5::digest(body));
    let list = write(
        d,
        "feed.txt",
        format!("# imported feed\n{md5} Bad.Sample\n").as_bytes(),
    );
    let insp = inspector(d, |c| c.hash_lists.files = vec![list]);
    let report = insp.scan_bytes(ScanContext::download(), body);
    assert_eq!(report.verdict, Verdict::Malicious);
    assert_eq!(report.findings[0].rule_or_signature, "feed:Bad.Sample");
    // The built-in list stays on beside files.
    assert_eq!(
        insp.scan_bytes(ScanContext::download(), EICAR).verdict,
        Verdict::Malicious
    );
}

#[test]
fn hash_list_with_a_bad_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = write(
        dir.path(),
        "feed.txt",
        b"# ok\n275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f\nnot-a-hash\n",
    );
    let config = InspectConfig {
        spool_dir: Some(dir.path().to_path_buf()),
        hash_lists: rampart_inspect::HashListConfig {
            builtin: true,
            files: vec![list.clone()],
        },
        ..InspectConfig::default()
    };
    let msg = Inspector::new(config).err().unwrap().to_string();
    assert!(msg.starts_with(&format!("{}:3: ", list.display())), "{msg}");
}

#[test]
fn card_number_upload_as_json_and_multipart_is_sensitive_and_masked() {
    let spool = tempfile::tempdir().unwrap();
    let insp = inspector(spool.path(), |_| {});
    let json = br#"{"name":"Alice","card":"4111 1111 1111 1111","exp":"12/29"}"#;
    let report = insp.scan_bytes(ScanContext::upload(), json);
    assert_eq!(report.verdict, Verdict::Sensitive);
    assert_eq!(report.dlp_profiles(), vec!["payment-card"]);
    let f = &report.findings[0];
    assert_eq!(f.count, 1);
    assert_eq!(f.masked_matches, vec!["4111 **** **** 1111"]);
    let event = serde_json::to_string(&report).unwrap();
    assert!(!event.contains("4111 1111 1111 1111"), "{event}");

    let multipart =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cards.csv\"\r\n\
        Content-Type: text/csv\r\n\r\nname,card\r\nbob,5500-0000-0000-0004\r\n--XyZ--\r\n";
    let report = insp.scan_bytes(ScanContext::upload().with_file_name("cards.csv"), multipart);
    assert_eq!(report.verdict, Verdict::Sensitive);
    assert_eq!(
        report.findings[0].masked_matches,
        vec!["5500 **** **** 0004"]
    );

    // With its Content-Type, the form is scanned part by part: the finding
    // names the uploaded file, and an EICAR file part is found by its hash.
    let context = ScanContext::upload()
        .with_file_name("upload")
        .with_content_type("multipart/form-data; boundary=XyZ");
    let report = insp.scan_bytes(context.clone(), multipart);
    assert_eq!(report.verdict, Verdict::Sensitive);
    assert_eq!(report.findings[0].container_path, "cards.csv");
    let mut form =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"x/eicar.com\"\r\n\r\n"
            .to_vec();
    form.extend_from_slice(EICAR);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let report = insp.scan_bytes(context, &form);
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "eicar.com");
}

#[test]
fn card_number_failing_luhn_is_clean_and_downloads_are_not_dlp_scanned() {
    let spool = tempfile::tempdir().unwrap();
    let insp = inspector(spool.path(), |_| {});
    let report = insp.scan_bytes(ScanContext::upload(), br#"{"card":"4111 1111 1111 1112"}"#);
    assert_eq!(report.verdict, Verdict::Clean, "{report:#?}");
    let report = insp.scan_bytes(
        ScanContext::download(),
        br#"{"card":"4111 1111 1111 1111"}"#,
    );
    assert_eq!(report.verdict, Verdict::Clean);
}

#[test]
fn card_number_split_across_fed_chunks_is_found_once() {
    let spool = tempfile::tempdir().unwrap();
    let insp = inspector(spool.path(), |c| c.memory_threshold = 1024);
    let mut body = vec![b' '; 100_000];
    body.extend_from_slice(b"4111 1111 1111 1111");
    body.extend(vec![b' '; 100_000]);
    let mut session = insp.session(ScanContext::upload());
    for chunk in body.chunks(100_010) {
        session.feed(chunk).unwrap();
    }
    let report = session.finish();
    assert_eq!(report.verdict, Verdict::Sensitive);
    assert_eq!(report.findings[0].count, 1);
}

#[test]
fn dlp_looks_inside_uploaded_archives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "keys.txt", b"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n");
    run(d, "zip", &["-q", "keys.zip", "keys.txt"]);
    let insp = inspector(d, |_| {});
    let report = insp.scan_bytes(
        ScanContext::upload().with_file_name("keys.zip"),
        &std::fs::read(d.join("keys.zip")).unwrap(),
    );
    assert_eq!(report.verdict, Verdict::Sensitive, "{report:#?}");
    assert_eq!(report.findings[0].container_path, "keys.zip!/keys.txt");
    assert_eq!(
        report.findings[0].masked_matches,
        vec!["AKIA************MPLE"]
    );
}
