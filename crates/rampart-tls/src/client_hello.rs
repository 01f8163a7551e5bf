//! A ClientHello parser over bytes peeked from a socket (nothing is consumed).
//!
//! It reads what the connection stage needs: SNI (RFC 6066 §3), ALPN (RFC 7301 §3.1) and
//! offered versions (RFC 8446 §4.2.1), across a ClientHello split over several records
//! (RFC 8446 §5.1 allows handshake messages to be fragmented). Input that is not TLS is
//! reported as [`ClientHelloError::NotTls`] so the caller can tunnel or refuse it by policy;
//! malformed TLS gets a precise [`Malformed`] reason. The parser never panics.
use std::borrow::Cow;

/// TLS record content type for handshake messages (RFC 8446 §5.1).
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello (RFC 8446 §4).
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest plaintext record body (RFC 8446 §5.1: 2^14).
const MAX_RECORD_LEN: usize = 16 * 1024;
/// How many bytes the gateway peeks at most; a larger ClientHello is refused as too large.
pub const PEEK_LIMIT: usize = 16 * 1024;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What the gateway learns from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` from server_name, trailing dot removed, as sent (not lower-cased).
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order (e.g. `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    /// `legacy_version` of the ClientHello body (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Versions from supported_versions, GREASE values removed; empty when the
    /// extension is absent (a TLS 1.2-or-older client).
    pub supported_versions: Vec<u16>,
    /// Whether the client offered Encrypted Client Hello (the SNI seen is the outer one).
    pub offers_ech: bool,
    /// Bytes of the records that carry the ClientHello.
    pub wire_len: usize,
}

impl ClientHello {
    /// Versions the client offers, newest first as sent; falls back to `legacy_version`.
    pub fn offered_versions(&self) -> Vec<u16> {
        if self.supported_versions.is_empty() {
            vec![self.legacy_version]
        } else {
            self.supported_versions.clone()
        }
    }

    /// Whether TLS 1.3 (0x0304) is offered.
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&0x0304)
    }

    /// ALPN names as text, for logs (non-UTF-8 names are shown lossily).
    pub fn alpn_names(&self) -> Vec<String> {
        self.alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// A version number as a log-friendly name (`TLSv1.3`), or hex when unknown.
pub fn version_name(version: u16) -> Cow<'static, str> {
    match version {
        0x0300 => "SSLv3".into(),
        0x0301 => "TLSv1.0".into(),
        0x0302 => "TLSv1.1".into(),
        0x0303 => "TLSv1.2".into(),
        0x0304 => "TLSv1.3".into(),
        other => format!("{other:#06x}").into(),
    }
}

/// Why the bytes did not yield a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The stream does not start with a TLS handshake record.
    #[error("not TLS: the stream starts with {first_bytes:02x?}, not a TLS handshake record")]
    NotTls { first_bytes: Vec<u8> },
    /// The ClientHello is incomplete; peek again when more bytes arrived.
    #[error("incomplete ClientHello: {have} bytes so far")]
    NeedMoreData { have: usize },
    /// The ClientHello is larger than the peek buffer.
    #[error("ClientHello needs {needed} bytes, more than the {limit}-byte peek limit")]
    TooLarge { needed: usize, limit: usize },
    /// TLS, but not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(#[from] Malformed),
}

/// The precise defect of a malformed ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("record {index} has content type {content_type}, expected handshake (22) until the ClientHello is complete")]
    UnexpectedRecordType { index: usize, content_type: u8 },
    #[error("record {index} has version {version:#06x}, expected 0x03xx")]
    BadRecordVersion { index: usize, version: u16 },
    #[error("record {index} is empty")]
    EmptyRecord { index: usize },
    #[error("record {index} declares {len} bytes, more than the 16384 a record may carry")]
    RecordTooLong { index: usize, len: usize },
    #[error("first handshake message has type {found}, expected ClientHello (1)")]
    NotClientHello { found: u8 },
    #[error("{field} runs past the end of the ClientHello")]
    Truncated { field: &'static str },
    #[error("{field} has invalid length {len}")]
    BadLength { field: &'static str, len: usize },
    #[error("{len} unexpected bytes after {field}")]
    TrailingBytes { field: &'static str, len: usize },
    #[error("extension {ext_type} appears more than once")]
    DuplicateExtension { ext_type: u16 },
    #[error("server_name: {reason}")]
    InvalidServerName { reason: &'static str },
    #[error("application_layer_protocol_negotiation: empty protocol name")]
    EmptyAlpnProtocol,
}

/// Parses a ClientHello from the first bytes of a connection.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, ClientHelloError> {
    let (handshake, wire_len) = reassemble_handshake(buf)?;
    let mut hello = parse_body(&handshake)?;
    hello.wire_len = wire_len;
    Ok(hello)
}

/// Collects the ClientHello handshake message from one or more records; borrows when a
/// single record holds it all (the common case), copies otherwise.
fn reassemble_handshake(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), ClientHelloError> {
    if let Some(&first) = buf.first() {
        if first != CONTENT_TYPE_HANDSHAKE || buf.get(1).is_some_and(|&major| major != 3) {
            return Err(ClientHelloError::NotTls {
                first_bytes: buf[..buf.len().min(8)].to_vec(),
            });
        }
    }
    let need_more = || ClientHelloError::NeedMoreData { have: buf.len() };
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0usize;
    let mut index = 0usize;
    loop {
        let header = buf.get(pos..pos + 5).ok_or_else(need_more)?;
        let content_type = header[0];
        let version = u16::from_be_bytes([header[1], header[2]]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(Malformed::UnexpectedRecordType {
                index,
                content_type,
            }
            .into());
        }
        if version >> 8 != 3 {
            return Err(Malformed::BadRecordVersion { index, version }.into());
        }
        if len == 0 {
            // RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
            return Err(Malformed::EmptyRecord { index }.into());
        }
        if len > MAX_RECORD_LEN {
            return Err(Malformed::RecordTooLong { index, len }.into());
        }
        // Check the handshake type as soon as its first byte is visible, so another
        // message is rejected without waiting for the rest of the record.
        if message.is_empty() {
            if let Some(&msg_type) = buf.get(pos + 5) {
                if msg_type != HANDSHAKE_CLIENT_HELLO {
                    return Err(Malformed::NotClientHello { found: msg_type }.into());
                }
            }
            // Likewise refuse an oversized hello as soon as its length is visible.
            if len >= 4 {
                if let Some(header) = buf.get(pos + 5..pos + 9) {
                    check_size(handshake_len(header))?;
                }
            }
        }
        let fragment = buf.get(pos + 5..pos + 5 + len);
        let fragment = fragment.ok_or_else(need_more)?;
        pos += 5 + len;
        index += 1;
        message = if message.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            let mut owned = message.into_owned();
            owned.extend_from_slice(fragment);
            Cow::Owned(owned)
        };
        if message.len() >= 4 {
            let total = handshake_len(&message);
            check_size(total)?;
            if message.len() >= total {
                let handshake = match message {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[4..total]),
                    Cow::Owned(mut v) => {
                        v.truncate(total);
                        v.drain(..4);
                        Cow::Owned(v)
                    }
                };
                return Ok((handshake, pos));
            }
        }
    }
}

/// Length of a handshake message (type, 24-bit length, body) from its 4-byte header.
fn handshake_len(header: &[u8]) -> usize {
    4 + ((usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]))
}

/// Refuses a handshake message that cannot fit in the peek buffer with its record headers
/// (5 bytes per 16 KiB fragment at least).
fn check_size(total: usize) -> Result<(), ClientHelloError> {
    let needed = total + 5 * total.div_ceil(MAX_RECORD_LEN);
    if needed > PEEK_LIMIT {
        return Err(ClientHelloError::TooLarge {
            needed,
            limit: PEEK_LIMIT,
        });
    }
    Ok(())
}

/// A bounds-checked reader; every read names the field it is reading for errors.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], Malformed> {
        let len = usize::from(self.u8(field)?);
        self.take(len, field)
    }

    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], Malformed> {
        let len = usize::from(self.u16(field)?);
        self.take(len, field)
    }

    fn expect_end(&self, field: &'static str) -> Result<(), Malformed> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed::TrailingBytes {
                field,
                len: self.buf.len(),
            })
        }
    }
}

/// RFC 8701 GREASE values look like 0x?a?a with equal bytes.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Parses the ClientHello body (RFC 8446 §4.1.2; RFC 5246 §7.4.1.2 for TLS 1.2 clients).
fn parse_body(body: &[u8]) -> Result<ClientHello, Malformed> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16("legacy_version")?;
    r.take(32, "random")?;
    let session_id = r.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(Malformed::BadLength {
            field: "legacy_session_id",
            len: session_id.len(),
        });
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed::BadLength {
            field: "cipher_suites",
            len: suites.len(),
        });
    }
    let compression = r.vec8("legacy_compression_methods")?;
    if compression.is_empty() {
        return Err(Malformed::BadLength {
            field: "legacy_compression_methods",
            len: 0,
        });
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        legacy_version,
        supported_versions: Vec::new(),
        offers_ech: false,
        wire_len: 0,
    };
    // A TLS 1.2-or-older ClientHello may end here, without an extensions block.
    if r.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec16("extensions")?;
    r.expect_end("extensions")?;
    let mut ext_reader = Reader::new(extensions);
    let mut seen: Vec<u16> = Vec::new();
    while !ext_reader.is_empty() {
        let ext_type = ext_reader.u16("extension type")?;
        let data = ext_reader.vec16("extension data")?;
        // RFC 8446 §4.2: at most one extension of each type.
        if seen.contains(&ext_type) {
            return Err(Malformed::DuplicateExtension { ext_type });
        }
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = parse_versions(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => hello.offers_ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: ServerNameList; the first `host_name` entry is the SNI.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, Malformed> {
    let mut r = Reader::new(data);
    let list = r.vec16("server_name_list")?;
    r.expect_end("server_name_list")?;
    if list.is_empty() {
        // An empty extension body is legal in a ServerHello, not in a ClientHello.
        return Err(Malformed::BadLength {
            field: "server_name_list",
            len: 0,
        });
    }
    let mut entries = Reader::new(list);
    let mut host: Option<String> = None;
    while !entries.is_empty() {
        let name_type = entries.u8("server_name name_type")?;
        let name = entries.vec16("server_name host_name")?;
        if name_type != 0 {
            continue;
        }
        if host.is_some() {
            return Err(Malformed::InvalidServerName {
                reason: "more than one host_name",
            });
        }
        host = Some(validate_host_name(name)?);
    }
    Ok(host)
}

fn validate_host_name(name: &[u8]) -> Result<String, Malformed> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(Malformed::InvalidServerName {
            reason: "empty host_name",
        });
    }
    if name.len() > 253 {
        return Err(Malformed::InvalidServerName {
            reason: "host_name longer than 253 bytes",
        });
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return Err(Malformed::InvalidServerName {
            reason: "host_name contains a byte other than letters, digits, '-', '_', '.' or ':'",
        });
    }
    // Every byte was checked to be ASCII above, so this cannot fail; map defensively.
    String::from_utf8(name.to_vec()).map_err(|_| Malformed::InvalidServerName {
        reason: "host_name is not ASCII",
    })
}

/// RFC 7301 §3.1: ProtocolNameList of non-empty names.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let mut r = Reader::new(data);
    let list = r.vec16("protocol_name_list")?;
    r.expect_end("protocol_name_list")?;
    if list.is_empty() {
        return Err(Malformed::BadLength {
            field: "protocol_name_list",
            len: 0,
        });
    }
    let mut names = Reader::new(list);
    let mut out = Vec::new();
    while !names.is_empty() {
        let name = names.vec8("protocol name")?;
        if name.is_empty() {
            return Err(Malformed::EmptyAlpnProtocol);
        }
        out.push(name.to_vec());
    }
    Ok(out)
}

/// RFC 8446 §4.2.1: ProtocolVersion versions<2..254>.
fn parse_versions(data: &[u8]) -> Result<Vec<u16>, Malformed> {
    let mut r = Reader::new(data);
    let list = r.vec8("supported_versions")?;
    r.expect_end("supported_versions")?;
    if list.len() < 2 || list.len() % 2 != 0 {
        return Err(Malformed::BadLength {
            field: "supported_versions",
            len: list.len(),
        });
    }
    Ok(list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .filter(|&v| !is_grease(v))
        .collect())
}

/// Builds ClientHello records for tests, property tests, benches and fuzz seeds.
pub mod testing {
    /// What to put in a synthetic ClientHello.
    #[derive(Debug, Clone, Default)]
    pub struct HelloSpec {
        pub server_name: Option<Vec<u8>>,
        pub alpn: Vec<Vec<u8>>,
        pub versions: Vec<u16>,
        /// Extra raw extensions (type, data) appended after the known ones.
        pub extra_extensions: Vec<(u16, Vec<u8>)>,
    }

    fn push_vec16(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// The ClientHello handshake message (type, length, body).
    pub fn handshake_message(spec: &HelloSpec) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0x03, 0x03]);
        body.extend_from_slice(&[0x42; 32]);
        body.push(32);
        body.extend_from_slice(&[0x07; 32]);
        push_vec16(&mut body, &[0x13, 0x01, 0x13, 0x02, 0xc0, 0x2b]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        if let Some(name) = &spec.server_name {
            let mut entry = vec![0u8];
            push_vec16(&mut entry, name);
            let mut list = Vec::new();
            push_vec16(&mut list, &entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            push_vec16(&mut exts, &list);
        }
        if !spec.alpn.is_empty() {
            let mut names = Vec::new();
            for p in &spec.alpn {
                names.push(p.len() as u8);
                names.extend_from_slice(p);
            }
            let mut list = Vec::new();
            push_vec16(&mut list, &names);
            exts.extend_from_slice(&16u16.to_be_bytes());
            push_vec16(&mut exts, &list);
        }
        if !spec.versions.is_empty() {
            let mut list = vec![(spec.versions.len() * 2) as u8];
            for v in &spec.versions {
                list.extend_from_slice(&v.to_be_bytes());
            }
            exts.extend_from_slice(&43u16.to_be_bytes());
            push_vec16(&mut exts, &list);
        }
        for (t, d) in &spec.extra_extensions {
            exts.extend_from_slice(&t.to_be_bytes());
            push_vec16(&mut exts, d);
        }
        push_vec16(&mut body, &exts);
        let mut msg = vec![1u8];
        let len = body.len() as u32;
        msg.extend_from_slice(&len.to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message into records of at most `fragment` bytes each.
    pub fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment.max(1)) {
            out.extend_from_slice(&[22, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{handshake_message, records, HelloSpec};
    use super::*;
    use proptest::prelude::*;

    fn spec() -> HelloSpec {
        HelloSpec {
            server_name: Some(b"www.example.com".to_vec()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            versions: vec![0x7a7a, 0x0304, 0x0303],
            extra_extensions: vec![],
        }
    }

    #[test]
    fn single_record_yields_sni_alpn_and_versions_without_grease() {
        let wire = records(&handshake_message(&spec()), 16384);
        let hello = parse_client_hello(&wire).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("www.example.com"));
        assert_eq!(hello.alpn_names(), vec!["h2", "http/1.1"]);
        assert_eq!(hello.supported_versions, vec![0x0304, 0x0303]);
        assert!(hello.offers_tls13());
        assert_eq!(hello.wire_len, wire.len());
    }

    #[test]
    fn hello_split_over_many_records_is_reassembled() {
        let wire = records(&handshake_message(&spec()), 7);
        let hello = parse_client_hello(&wire).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("www.example.com"));
        assert_eq!(hello.wire_len, wire.len());
    }

    #[test]
    fn every_proper_prefix_needs_more_data() {
        let wire = records(&handshake_message(&spec()), 50);
        for cut in 1..wire.len() {
            assert_eq!(
                parse_client_hello(&wire[..cut]),
                Err(ClientHelloError::NeedMoreData { have: cut }),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_client_hello(&[]),
            Err(ClientHelloError::NeedMoreData { have: 0 })
        ));
    }

    #[test]
    fn plain_http_is_not_tls() {
        let err = parse_client_hello(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(matches!(err, ClientHelloError::NotTls { .. }));
        assert!(err.to_string().contains("47, 45, 54"), "{err}");
        assert!(matches!(
            parse_client_hello(b"SSH-2.0-OpenSSH_9.2"),
            Err(ClientHelloError::NotTls { .. })
        ));
    }

    #[test]
    fn hello_without_extensions_is_a_tls12_client() {
        let s = HelloSpec::default();
        let mut msg = handshake_message(&s);
        // Drop the empty extensions block (2 bytes) and fix the length.
        msg.truncate(msg.len() - 2);
        let len = (msg.len() - 4) as u32;
        msg[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        let hello = parse_client_hello(&records(&msg, 16384)).unwrap();
        assert_eq!(hello.server_name, None);
        assert_eq!(hello.offered_versions(), vec![0x0303]);
    }

    #[test]
    fn server_hello_is_rejected_as_not_client_hello() {
        let mut msg = handshake_message(&spec());
        msg[0] = 2;
        assert_eq!(
            parse_client_hello(&records(&msg, 16384)),
            Err(Malformed::NotClientHello { found: 2 }.into())
        );
    }

    #[test]
    fn alert_record_in_the_middle_is_rejected() {
        let msg = handshake_message(&spec());
        let mut wire = records(&msg[..10], 16384);
        wire.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert_eq!(
            parse_client_hello(&wire),
            Err(Malformed::UnexpectedRecordType {
                index: 1,
                content_type: 21
            }
            .into())
        );
    }

    #[test]
    fn duplicate_extension_is_rejected() {
        let mut s = spec();
        s.extra_extensions = vec![(16, vec![0, 3, 2, b'h', b'2'])];
        assert_eq!(
            parse_client_hello(&records(&handshake_message(&s), 16384)),
            Err(Malformed::DuplicateExtension { ext_type: 16 }.into())
        );
    }

    #[test]
    fn server_name_with_a_space_is_rejected() {
        let mut s = spec();
        s.server_name = Some(b"bad host".to_vec());
        assert!(matches!(
            parse_client_hello(&records(&handshake_message(&s), 16384)),
            Err(ClientHelloError::Malformed(
                Malformed::InvalidServerName { .. }
            ))
        ));
    }

    #[test]
    fn empty_alpn_name_is_rejected() {
        let mut s = spec();
        s.alpn = vec![b"h2".to_vec(), Vec::new()];
        assert_eq!(
            parse_client_hello(&records(&handshake_message(&s), 16384)),
            Err(Malformed::EmptyAlpnProtocol.into())
        );
    }

    #[test]
    fn hello_larger_than_peek_limit_is_too_large() {
        let mut s = spec();
        s.extra_extensions = vec![(0xffce, vec![0; 17000])];
        let wire = records(&handshake_message(&s), 16384);
        assert!(matches!(
            parse_client_hello(&wire[..100]),
            Err(ClientHelloError::TooLarge { .. })
        ));
    }

    #[test]
    fn ech_offer_is_reported() {
        let mut s = spec();
        s.extra_extensions = vec![(0xfe0d, vec![0; 8])];
        let hello = parse_client_hello(&records(&handshake_message(&s), 16384)).unwrap();
        assert!(hello.offers_ech);
    }

    #[test]
    fn version_names_are_readable() {
        assert_eq!(version_name(0x0304), "TLSv1.3");
        assert_eq!(version_name(0x1234), "0x1234");
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_client_hello(&bytes);
        }

        #[test]
        fn parser_never_panics_on_handshake_prefixed_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut wire = vec![22, 3, 1];
            wire.extend_from_slice(&bytes);
            let _ = parse_client_hello(&wire);
        }

        #[test]
        fn generated_hellos_round_trip_at_any_fragmentation(
            name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,3}",
            alpn in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4),
            versions in proptest::collection::vec(0x0300u16..0x0305, 0..4),
            fragment in 1usize..600,
        ) {
            let s = HelloSpec { server_name: Some(name.clone().into_bytes()), alpn: alpn.clone(), versions: versions.clone(), extra_extensions: vec![] };
            let wire = records(&handshake_message(&s), fragment);
            let hello = parse_client_hello(&wire).unwrap();
            prop_assert_eq!(hello.server_name, Some(name));
            prop_assert_eq!(hello.alpn, alpn);
            prop_assert_eq!(hello.supported_versions, versions);
            prop_assert_eq!(hello.wire_len, wire.len());
        }

        #[test]
        fn corrupting_one_byte_never_panics(
            pos in 0usize..400,
            value in any::<u8>(),
            fragment in 1usize..400,
        ) {
            let mut wire = records(&handshake_message(&spec()), fragment);
            let idx = pos % wire.len();
            wire[idx] = value;
            let _ = parse_client_hello(&wire);
        }
    }
}
