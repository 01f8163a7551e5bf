//! Server Name Indication from the first bytes of a TLS connection (RFC 8446 §4.1.2,
//! RFC 6066 §3), without consuming them: the bytes are forwarded unchanged afterwards.

/// Why no name could be read (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// More bytes are needed to finish the ClientHello.
    #[error("incomplete ClientHello")]
    Incomplete,
    /// The bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// A TLS handshake that violates the format at the named field.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
// RFC 8446 §5.1: a record fragment is at most 2^14 bytes; a ClientHello can span records.
const MAX_FRAGMENT: usize = 1 << 14;
const MAX_HELLO: usize = 64 * 1024;

/// The SNI host name in `data`, `Ok(None)` for a complete ClientHello without one.
pub fn server_name(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let hello = handshake_message(data)?;
    parse_client_hello(&hello)
}

/// Reassemble the first handshake message from one or more records.
fn handshake_message(data: &[u8]) -> Result<Vec<u8>, ClientHelloError> {
    let mut message = Vec::new();
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return Err(ClientHelloError::Incomplete);
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return Err(if message.is_empty() {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("record type inside ClientHello")
            });
        }
        if rest.len() < RECORD_HEADER {
            return Err(ClientHelloError::Incomplete);
        }
        if rest[1] != 3 {
            return Err(ClientHelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_FRAGMENT {
            return Err(ClientHelloError::Malformed("record length"));
        }
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            return Err(ClientHelloError::Incomplete);
        };
        message.extend_from_slice(fragment);
        rest = &rest[RECORD_HEADER + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::Malformed(
                    "first handshake is not ClientHello",
                ));
            }
            let body = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if body > MAX_HELLO {
                return Err(ClientHelloError::Malformed("handshake length"));
            }
            if message.len() >= 4 + body {
                message.truncate(4 + body);
                message.drain(..4);
                return Ok(message);
            }
        }
    }
}

/// A bounds-checked reader over the ClientHello body.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if self.data.len() < n {
            return Err(ClientHelloError::Malformed(field));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = usize::from(self.u8(field)?);
        self.take(n, field)
    }

    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = usize::from(self.u16(field)?);
        self.take(n, field)
    }
}

fn parse_client_hello(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let mut r = Reader { data: body };
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    r.vec8("legacy_session_id")?;
    r.vec16("cipher_suites")?;
    r.vec8("legacy_compression_methods")?;
    if r.data.is_empty() {
        return Ok(None); // no extensions at all (pre-TLS 1.2 clients)
    }
    let mut extensions = Reader {
        data: r.vec16("extensions")?,
    };
    while !extensions.data.is_empty() {
        let kind = extensions.u16("extension type")?;
        let data = extensions.vec16("extension data")?;
        if kind == EXTENSION_SERVER_NAME {
            return parse_server_name(data).map(Some);
        }
    }
    Ok(None)
}

fn parse_server_name(data: &[u8]) -> Result<String, ClientHelloError> {
    let mut outer = Reader { data };
    let mut list = Reader {
        data: outer.vec16("server_name_list")?,
    };
    while !list.data.is_empty() {
        let name_type = list.u8("server name type")?;
        let name = list.vec16("host_name")?;
        if name_type == NAME_TYPE_HOST {
            if name.is_empty()
                || !name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(ClientHelloError::Malformed("host_name characters"));
            }
            // Only ASCII bytes passed the check above, so this is valid UTF-8.
            return Ok(String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    Err(ClientHelloError::Malformed("server_name without host_name"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal but well-formed ClientHello record carrying `sni`.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        // an unrelated extension first (supported_versions)
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(sni) = sni {
            let name = sni.as_bytes();
            let list_len = 3 + name.len();
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            exts.extend_from_slice(&(list_len as u16).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
            exts.extend_from_slice(name);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            server_name(&client_hello(Some("Origin.Test"))),
            Ok(Some("origin.test".into()))
        );
    }

    #[test]
    fn hello_without_sni_yields_none() {
        assert_eq!(server_name(&client_hello(None)), Ok(None));
    }

    #[test]
    fn every_truncation_asks_for_more_bytes_and_never_panics() {
        let full = client_hello(Some("example.com"));
        for cut in 0..full.len() {
            assert_eq!(
                server_name(&full[..cut]),
                Err(ClientHelloError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn hello_split_across_two_records_is_reassembled() {
        let full = client_hello(Some("split.example"));
        let hs = &full[5..];
        let (a, b) = hs.split_at(20);
        let mut data = Vec::new();
        for part in [a, b] {
            data.extend_from_slice(&[22, 3, 1]);
            data.extend_from_slice(&(part.len() as u16).to_be_bytes());
            data.extend_from_slice(part);
        }
        assert_eq!(server_name(&data), Ok(Some("split.example".into())));
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(
            server_name(b"GET / HTTP/1.1\r\n"),
            Err(ClientHelloError::NotTls)
        );
    }

    #[test]
    fn corrupted_lengths_are_rejected_precisely() {
        let mut bad = client_hello(Some("example.com"));
        // session id length larger than the message
        bad[5 + 4 + 34] = 200;
        assert!(matches!(
            server_name(&bad),
            Err(ClientHelloError::Malformed(_))
        ));
        let bad_name = client_hello(Some("exa mple.com"));
        assert_eq!(
            server_name(&bad_name),
            Err(ClientHelloError::Malformed("host_name characters"))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678u32;
        for len in 0..300 {
            let mut data = vec![22u8, 3, 1, 0, 0];
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                data.push((seed >> 16) as u8);
            }
            let _ = server_name(&data);
        }
    }
}
