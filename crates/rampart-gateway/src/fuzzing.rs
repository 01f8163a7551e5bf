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
