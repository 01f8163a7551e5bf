//! Entry points for the cargo-fuzz targets in `crates/rampart-gateway/fuzz`:
//! each feeds arbitrary bytes to one parser of input the gateway does not
//! control and checks what the parser promises. Hidden from the docs; no
//! production code calls them. The parsers stay private (or narrowly public)
//! and only these wrappers are exported, so the fuzz crate needs no wider API.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::connector::upstream::{parse_connect_reply, ConnectReply};
use crate::tunnel::DeviceIdentity;

/// The metadata headers an agent sends on each tunnel stream.
const TUNNEL_HEADERS: [&str; 7] = [
    "x-rampart-process",
    "x-rampart-process-path",
    "x-rampart-pid",
    "x-rampart-uid",
    "x-rampart-user",
    "x-rampart-steering",
    "x-rampart-host",
];

/// Tunnel metadata headers into a process record. Each input line is one
/// header: its first byte picks one of the `x-rampart-*` names (or, past
/// them, the line is `name:value`), the rest is the value. Lines that are not
/// valid header names or values are dropped, as hyper would refuse them.
pub fn tunnel_metadata(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&pick, rest)) = line.split_first() else {
            continue;
        };
        let (name, value) = match TUNNEL_HEADERS.get(usize::from(pick)) {
            Some(name) => (HeaderName::from_static(name), rest),
            None => {
                let Some(colon) = rest.iter().position(|&b| b == b':') else {
                    continue;
                };
                let Ok(name) = HeaderName::from_bytes(&rest[..colon]) else {
                    continue;
                };
                (name, &rest[colon + 1..])
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let Some(record) = crate::tunnel::process_from(&headers) else {
        assert!(
            headers
                .get("x-rampart-process")
                .is_none_or(|v| v.to_str().is_err()),
            "a readable process name yields a record"
        );
        return;
    };
    // Every text field is bounded, whatever the agent sends.
    for text in [
        Some(&record.name),
        record.path.as_ref(),
        record.user.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(text.chars().count() <= 4096);
    }
    if let Some(pid) = record.pid {
        let sent = headers.get("x-rampart-pid").and_then(|v| v.to_str().ok());
        assert_eq!(sent.and_then(|v| v.parse().ok()), Some(pid));
    }
}

/// A client certificate's identity URIs. The certificate has passed the device
/// CA's verification before this runs; the parser must still never panic.
pub fn device_identity(data: &[u8]) {
    if let Ok(id) = DeviceIdentity::from_der(data) {
        assert!(!id.device.is_empty());
        assert!(id.user.as_ref().is_none_or(|u| !u.is_empty()));
        assert!(id.groups.iter().all(|g| !g.is_empty()));
    }
}

/// An upstream proxy's reply to our CONNECT: a complete head ends inside the
/// input with a three-digit status, and a head that is complete stays complete
/// (same status and length) when more bytes follow it.
pub fn connect_reply(data: &[u8]) {
    match parse_connect_reply(data) {
        Ok(ConnectReply::Complete { status, head_len }) => {
            assert!(head_len <= data.len());
            assert!(status < 1000, "status {status}");
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"tunnel bytes");
            assert_eq!(
                parse_connect_reply(&longer),
                Ok(ConnectReply::Complete { status, head_len })
            );
        }
        Ok(ConnectReply::Partial) | Err(_) => {}
    }
}

/// A balancer's connection read the way the listeners read it: the first input
/// byte sets how many bytes arrive per segment (1 to 64), the rest is the stream.
/// The reader consumes only bytes that belong to the header, never one past it,
/// and where it finds a whole header, parsing the whole stream at once finds the
/// same header with the same length (the split into segments changes nothing).
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_header::{next_step, scan, starts_like_header, Scan, Step, MAX_HEADER_BYTES};
    let Some((&segment, stream)) = data.split_first() else {
        return;
    };
    let _ = starts_like_header(stream);
    let segment = usize::from(segment % 64) + 1;
    let mut delivered = 0;
    let mut consumed = 0;
    loop {
        delivered = (delivered + segment).min(stream.len());
        let peeked = (delivered - consumed).min(MAX_HEADER_BYTES - consumed);
        if peeked == 0 {
            return;
        }
        match next_step(&stream[..consumed + peeked], consumed) {
            Step::Done { header, take } => {
                assert!(take <= peeked, "took {take} of {peeked} peeked bytes");
                let len = consumed + take;
                assert_eq!(scan(stream), Scan::Complete { header, len });
                return;
            }
            Step::Consume(n) => {
                assert_eq!(n, peeked, "an unfinished header takes every peeked byte");
                consumed += n;
                assert!(consumed < MAX_HEADER_BYTES);
            }
            // A header the whole stream holds within the cap is never refused
            // because of where the segments split it.
            Step::Refuse(reason) => {
                if let Scan::Complete { len, .. } = scan(stream) {
                    assert!(
                        len > MAX_HEADER_BYTES,
                        "refused ({reason}) a header of {len} bytes"
                    );
                }
                return;
            }
        }
    }
}
