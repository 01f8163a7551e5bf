//! Server Name Indication from the first bytes of a TLS connection, read without
//! consuming them (the bytes are forwarded unchanged afterwards). Parsing is
//! `rampart_tls::client_hello`'s, shared with the gateway; this module maps its outcome
//! to what steering needs: a lower-cased host name, or why there is none yet.

use rampart_tls::client_hello::{parse_client_hello, ClientHelloError as TlsError};

/// Why no name could be read (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// More bytes are needed to finish the ClientHello.
    #[error("incomplete ClientHello")]
    Incomplete,
    /// The bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// A TLS handshake that is not a usable ClientHello (malformed or too large).
    #[error("unusable ClientHello: {0}")]
    Malformed(String),
}

/// The SNI host name in `data` (lower-cased), `Ok(None)` for a complete ClientHello
/// without one. With Encrypted Client Hello this is the outer (public) name.
pub fn server_name(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    match parse_client_hello(data) {
        Ok(hello) => Ok(hello.server_name.map(|name| name.to_ascii_lowercase())),
        Err(TlsError::NeedMoreData { .. }) => Err(ClientHelloError::Incomplete),
        Err(TlsError::NotTls { .. }) => Err(ClientHelloError::NotTls),
        Err(err) => Err(ClientHelloError::Malformed(err.to_string())),
    }
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
