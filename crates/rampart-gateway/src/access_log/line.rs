//! The access line of a flow record, written straight into the caller's
//! buffer: JSON (byte for byte what `serde_json` would write for
//! [`FlowRecord`], which a test checks) or Squid's native format.
//!
//! This runs once per request on the proxy thread, so it avoids what made the
//! serde path cost: strings are copied whole unless a byte needs escaping,
//! numbers go through `itoa`, the time's date and second are formatted once a
//! second, and nothing is allocated.

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rampart_policy::MatchedObject;

use rampart_inspect::{Verdict, VerdictAction};

use super::{FlowRecord, PolicyRecord, ProcessRecord, TlsRecord};
use crate::inspection::InspectionRecord;

/// Appends `record` as one JSON object and a newline.
pub(crate) fn write_json(record: &FlowRecord, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.key("id");
    let mut id = uuid::Uuid::encode_buffer();
    o.raw_str(record.id.hyphenated().encode_lower(&mut id).as_bytes());
    if let Some(flow_id) = &record.flow_id {
        o.key("flow_id");
        o.raw_str(flow_id.hyphenated().encode_lower(&mut id).as_bytes());
    }
    o.key("time");
    o.out.push(b'"');
    write_time(record.time, o.out);
    o.out.push(b'"');
    o.key("client");
    o.addr(&record.client);
    o.opt_str("user", record.user.as_deref());
    if !record.groups.is_empty() {
        o.key("groups");
        o.str_array(record.groups.iter().map(String::as_str));
    }
    o.key("method");
    o.str(&record.method);
    o.key("target");
    o.str(&record.target);
    o.key("status");
    o.num(u64::from(record.status));
    o.key("bytes_from_client");
    o.num(record.bytes_from_client);
    o.key("bytes_to_client");
    o.num(record.bytes_to_client);
    o.key("duration_ms");
    o.num(record.duration_ms.as_millis() as u64);
    o.opt_str("egress", record.egress.as_deref());
    if let Some(server) = &record.server {
        o.key("server");
        o.addr(server);
    }
    o.opt_str("error", record.error.as_deref());
    o.opt_str("content_type", record.content_type.as_deref());
    o.opt_str("file_type", record.file_type);
    // On the defaults every download is inspected, so a (clean) inspection
    // record is on most lines: written by hand like the rest.
    for (key, inspection) in [
        ("inspection", &record.inspection),
        ("upload_inspection", &record.upload_inspection),
    ] {
        if let Some(inspection) = inspection {
            o.key(key);
            write_inspection(inspection, o.out);
        }
    }
    if let Some(policy) = &record.policy {
        o.key("policy");
        write_policy(policy, o.out);
    }
    if let Some(decryption) = &record.decryption {
        o.key("decryption");
        write_policy(decryption, o.out);
    }
    o.opt_str("device", record.device.as_deref());
    if let Some(process) = &record.process {
        o.key("process");
        write_process(process, o.out);
    }
    if let Some(tls) = &record.tls {
        o.key("tls");
        write_tls(tls, o.out);
    }
    o.close();
    out.push(b'\n');
}

/// An inspection record as serde writes it. The destructuring names every
/// field, so a field added to the record fails to compile here rather than
/// going missing from the line.
fn write_inspection(r: &InspectionRecord, out: &mut Vec<u8>) {
    let InspectionRecord {
        direction,
        verdict,
        file_type,
        file_name,
        sha256,
        size,
        action,
        decided_by,
        findings,
        scan_ms,
        engine_times: _,
    } = r;
    let mut o = Object::open(out);
    o.key("direction");
    o.str(direction.as_str());
    o.key("verdict");
    match verdict {
        Verdict::Unscannable(reason) => {
            o.out.extend_from_slice(b"\"unscannable: ");
            write_escaped_content(reason.as_str(), o.out);
            o.out.push(b'"');
        }
        v => o.str(v.as_str()),
    }
    o.key("file_type");
    o.str(file_type);
    o.opt_str("file_name", file_name.as_deref());
    o.key("sha256");
    o.str(sha256);
    o.key("size");
    o.num(*size);
    o.key("action");
    o.str(match action {
        VerdictAction::Block => "block",
        VerdictAction::Alert => "alert",
        VerdictAction::Allow => "allow",
    });
    o.key("decided_by");
    o.str(decided_by);
    if !findings.is_empty() {
        // Findings are rare (a non-clean body): serde's writer is fine for them.
        o.key("findings");
        if serde_json::to_writer(&mut *o.out, findings).is_err() {
            o.out.extend_from_slice(b"null");
        }
    }
    o.key("scan_ms");
    o.num(*scan_ms);
    o.close();
}

fn write_policy(p: &PolicyRecord, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.key("revision");
    o.str(&p.revision);
    o.key("stage");
    o.str(p.stage.as_str());
    o.key("rule_id");
    o.str(&p.rule_id);
    o.key("rule");
    o.str(&p.rule);
    o.key("action");
    o.str(p.action.as_str());
    o.key("matched");
    o.matched_array(&p.matched);
    if p.proceeded {
        o.key("proceeded");
        o.out.extend_from_slice(b"true");
    }
    if !p.skipped.is_empty() {
        o.key("skipped");
        o.str_array(p.skipped.iter().map(|s| &**s));
    }
    o.close();
}

fn write_process(p: &ProcessRecord, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.key("name");
    o.str(&p.name);
    o.opt_str("path", p.path.as_deref());
    if let Some(pid) = p.pid {
        o.key("pid");
        o.num(u64::from(pid));
    }
    if let Some(uid) = p.uid {
        o.key("uid");
        o.num(u64::from(uid));
    }
    o.opt_str("user", p.user.as_deref());
    o.opt_str("steering", p.steering.as_deref());
    o.close();
}

fn write_tls(t: &TlsRecord, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.key("decision");
    o.str(t.decision.as_str());
    o.key("reason");
    o.str(&t.reason);
    o.opt_str("sni", t.sni.as_deref());
    o.opt_str("version", t.version.as_deref());
    o.opt_str("alpn", t.alpn.as_deref());
    o.opt_str("origin_problem", t.origin_problem.as_deref());
    o.opt_str("pinned_client", t.pinned_client.as_deref());
    o.close();
}

/// A JSON object being written: keys get their commas.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    /// Keys are this module's literals: nothing to escape.
    fn key(&mut self, key: &str) {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, value: &str) {
        write_escaped(value, self.out);
    }

    /// A value known to need no escaping (a UUID's hex and hyphens).
    fn raw_str(&mut self, value: &[u8]) {
        self.out.push(b'"');
        self.out.extend_from_slice(value);
        self.out.push(b'"');
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.key(key);
            self.str(value);
        }
    }

    fn num(&mut self, n: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn addr(&mut self, addr: &SocketAddr) {
        // `Display` of an address has nothing to escape. IPv4, nearly every
        // client, is written digit by digit: `fmt` costs several times more.
        self.out.push(b'"');
        match addr {
            SocketAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.ip().octets().iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out.extend_from_slice(digits.format(*octet).as_bytes());
                }
                self.out.push(b':');
                self.out
                    .extend_from_slice(digits.format(v4.port()).as_bytes());
            }
            SocketAddr::V6(_) => {
                let _ = write!(self.out, "{addr}");
            }
        }
        self.out.push(b'"');
    }

    fn str_array<'s>(&mut self, values: impl Iterator<Item = &'s str>) {
        self.out.push(b'[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_escaped(v, self.out);
        }
        self.out.push(b']');
    }

    /// Matched objects as their text, `"category news"`, written from the
    /// typed object (the kind's name needs no escaping, the object's name may).
    fn matched_array(&mut self, matched: &[MatchedObject]) {
        self.out.push(b'[');
        for (i, m) in matched.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.out.extend_from_slice(m.kind.as_str().as_bytes());
            self.out.push(b' ');
            write_escaped_content(&m.name, self.out);
            self.out.push(b'"');
        }
        self.out.push(b']');
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `serde_json`
/// writes them (`\n`-style where JSON has one, else `\u00XX`); everything
/// else, UTF-8 included, copied as is. Runs of plain bytes are copied whole.
pub(crate) fn write_escaped(value: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    write_escaped_content(value, out);
    out.push(b'"');
}

/// The inside of a JSON string, escaped as [`write_escaped`] does, without the quotes.
fn write_escaped_content(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`:
    /// lines of one second share it, so the calendar is worked out once a second.
    static SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// RFC 3339 with exactly three fraction digits (the events' `time_text`).
pub(crate) fn write_time(t: SystemTime, out: &mut Vec<u8>) {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let cached = SECOND.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return Some(text);
        }
        let text = second_text(secs)?;
        c.set((secs, text));
        Some(text)
    });
    match cached {
        Some(text) => {
            out.extend_from_slice(&text);
            out.push(b'.');
            out.push(b'0' + (milli / 100) as u8);
            out.push(b'0' + (milli / 10 % 10) as u8);
            out.push(b'0' + (milli % 10) as u8);
            out.push(b'Z');
        }
        // Outside years 0–9999: what `time_text` writes then.
        None => out.extend_from_slice(rampart_events::render::time_text(ms).as_bytes()),
    }
}

fn second_text(secs: i64) -> Option<[u8; 19]> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    let mut text = [0u8; 19];
    let mut w = &mut text[..];
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
    .ok()?;
    Some(text)
}

/// Appends `record` in Squid's native format (`logformat squid`) and a newline:
/// `time elapsed client code/status bytes method URL user hierarchy/peer type`.
pub(crate) fn write_squid(record: &FlowRecord, out: &mut Vec<u8>) {
    let secs = record
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let code = match (record.status, record.error.is_some()) {
        (403 | 407, _) => "TCP_DENIED",
        (_, true) if record.status >= 500 => "TCP_MISS_ABORTED",
        _ if record.method == "CONNECT" => "TCP_TUNNEL",
        _ => "TCP_MISS",
    };
    let _ = write!(
        out,
        "{secs:.3} {elapsed:>6} {client} {code}/{status:03} {bytes} {method} {url} {user} ",
        elapsed = record.duration_ms.as_millis(),
        client = record.client.ip(),
        status = record.status,
        bytes = record.bytes_to_client,
        method = record.method,
        url = record.target,
        user = record.user.as_deref().unwrap_or("-"),
    );
    let _ = match (&record.egress, &record.server) {
        (Some(e), Some(server)) if e.starts_with("direct") => {
            write!(out, "HIER_DIRECT/{}", server.ip())
        }
        (Some(_), Some(server)) => write!(out, "FIRSTUP_PARENT/{}", server.ip()),
        _ => write!(out, "HIER_NONE/-"),
    };
    let _ = writeln!(out, " {}", record.content_type.as_deref().unwrap_or("-"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::FlowRecord;
    use crate::decision::{PolicyAction, TlsDecision};
    use crate::inspection::{FindingRecord, InspectionRecord};
    use rampart_inspect::VerdictAction;
    use rampart_policy::{AccessAction, DecryptionAction, ObjectKind, Stage};
    use std::sync::Arc;
    use std::time::Duration;

    fn serde_line(r: &FlowRecord) -> String {
        serde_json::to_string(r).unwrap() + "\n"
    }

    fn fast_line(r: &FlowRecord) -> String {
        let mut out = Vec::new();
        write_json(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Every optional part present, and strings that need every kind of escape.
    fn rich() -> FlowRecord {
        let mut r = FlowRecord::new(
            "[2001:db8::1]:40000".parse().unwrap(),
            "GET",
            "http://a.example/q?x=\"1\"&y=\\\u{1}\t\u{7f}é☃".into(),
        );
        r.flow_id = Some(uuid::Uuid::now_v7());
        r.user = Some(Arc::from("al\"ice\n"));
        r.groups = vec!["finance".into(), "r&d\u{8}\u{c}\r".into()];
        r.status = 403;
        r.bytes_from_client = u64::MAX;
        r.bytes_to_client = 7;
        r.duration_ms = Duration::from_micros(12_345_678);
        r.egress = Some(Arc::from("direct@10.0.0.1"));
        r.server = Some("192.0.2.1:80".parse().unwrap());
        r.error = Some("policy \u{1f} block".into());
        r.content_type = Some("text/html; charset=\"utf-8\"".into());
        r.file_type = Some("pdf");
        r.inspection = Some(InspectionRecord {
            direction: rampart_policy::Direction::Download,
            verdict: rampart_inspect::Verdict::Unscannable(
                rampart_inspect::UnscannableReason::Bomb,
            ),
            file_type: "zip",
            file_name: Some("a\"b.zip".into()),
            sha256: "00".repeat(32),
            size: 10,
            action: VerdictAction::Block,
            decided_by: "inspect.actions.malicious".into(),
            findings: vec![FindingRecord {
                verdict: "malicious",
                reason: None,
                path: "a.zip!/x.exe".into(),
                engine: "yara",
                rule: "r1".into(),
                file_type: "exe",
                sha256: "11".repeat(32),
                size: 3,
                masked: vec!["4***".into()],
                fail: Some("open"),
            }],
            scan_ms: 3,
            engine_times: None,
        });
        r.policy = Some(PolicyRecord {
            revision: Arc::from("r7"),
            stage: Stage::Access,
            rule_id: Arc::from("3"),
            rule: Arc::from("no \"news\""),
            action: PolicyAction::Access(AccessAction::UserAlert),
            matched: vec![
                MatchedObject {
                    kind: ObjectKind::Category,
                    name: Arc::from("news"),
                },
                MatchedObject {
                    kind: ObjectKind::List,
                    name: Arc::from("a\"b\\c\u{1}é"),
                },
            ],
            proceeded: true,
            skipped: vec![Arc::from("paths")],
        });
        r.decryption = Some(PolicyRecord {
            revision: Arc::from("r7"),
            stage: Stage::Decryption,
            rule_id: Arc::from("1"),
            rule: Arc::from("apps"),
            action: PolicyAction::Decryption(DecryptionAction::DoNotDecrypt),
            matched: vec![MatchedObject {
                kind: ObjectKind::App,
                name: Arc::from("dropbox"),
            }],
            proceeded: false,
            skipped: Vec::new(),
        });
        r.device = Some(Arc::from("dev-1"));
        r.process = Some(ProcessRecord {
            name: "curl".into(),
            path: Some("C:\\bin\\curl.exe".into()),
            pid: Some(42),
            uid: Some(0),
            user: Some("root".into()),
            steering: Some("steer".into()),
        });
        r.tls = Some(TlsRecord {
            decision: TlsDecision::Decrypt,
            reason: "default".into(),
            sni: Some("a.example".into()),
            version: Some("TLSv1.3".into()),
            alpn: Some("h2".into()),
            origin_problem: Some("expired".into()),
            pinned_client: Some("bad certificate".into()),
        });
        r
    }

    #[test]
    fn json_is_byte_for_byte_what_serde_writes() {
        let rich = rich();
        assert_eq!(fast_line(&rich), serde_line(&rich));
        let plain = FlowRecord::new(
            "127.0.0.1:5000".parse().unwrap(),
            "CONNECT",
            "b.example:443".into(),
        );
        assert_eq!(fast_line(&plain), serde_line(&plain));
        // A clean download (the defaults inspect every one) and other verdicts.
        for verdict in [
            rampart_inspect::Verdict::Clean,
            rampart_inspect::Verdict::Malicious,
            rampart_inspect::Verdict::Unscannable(rampart_inspect::UnscannableReason::Bomb),
        ] {
            let mut r = plain.clone();
            r.client = "10.255.0.7:65535".parse().unwrap();
            r.server = Some("0.0.0.0:0".parse().unwrap());
            let mut inspection = rich.inspection.clone().unwrap();
            inspection.verdict = verdict;
            inspection.file_name = None;
            inspection.findings.clear();
            inspection.action = VerdictAction::Allow;
            inspection.direction = rampart_policy::Direction::Upload;
            r.upload_inspection = Some(inspection.clone());
            inspection.direction = rampart_policy::Direction::Download;
            inspection.action = VerdictAction::Alert;
            r.inspection = Some(inspection);
            assert_eq!(fast_line(&r), serde_line(&r), "{verdict:?}");
        }
        for t in [
            0,
            999,
            1_000,
            1_700_000_000_000,
            1_700_000_000_001,
            253_402_300_799_999,
        ] {
            let mut r = plain.clone();
            r.time = UNIX_EPOCH + Duration::from_millis(t);
            assert_eq!(fast_line(&r), serde_line(&r), "time {t}");
        }
    }

    #[test]
    fn every_control_character_is_escaped_like_serde() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        write_escaped(&all, &mut out);
        assert_eq!(out, serde_json::to_vec(&all).unwrap());
    }
}
