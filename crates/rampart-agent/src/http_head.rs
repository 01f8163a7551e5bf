//! The parts of an HTTP/1.x request head the agent needs: the Host header in
//! transparent mode, and the request target in local-proxy mode.

/// Why a request head could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("incomplete request head")]
    Incomplete,
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
}

/// Longest request head the agent buffers.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// A parsed request head and where it ends in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// `(name, value)` in order; values that are not UTF-8 are kept lossily.
    pub headers: Vec<(String, String)>,
    /// Length of the head including the blank line.
    pub len: usize,
}

impl RequestHead {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a request head from the start of `data`.
pub fn parse(data: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => Ok(RequestHead {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect(),
            len,
        }),
        Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD => {
            Err(HeadError::TooLarge(MAX_HEAD))
        }
        Ok(httparse::Status::Partial) => Err(HeadError::Incomplete),
        Err(err) => Err(HeadError::Malformed(err.to_string())),
    }
}

/// Split `host[:port]` (with `[v6]` literals), defaulting the port.
pub fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), HeadError> {
    let bad = || HeadError::Malformed(format!("invalid authority {authority:?}"));
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host.contains(['/', '@', ' '])
        || host.chars().any(|c| c.is_ascii_control())
    {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => default_port,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// The host named by a request's `Host` header, without the port.
pub fn host_of(head: &RequestHead) -> Option<String> {
    let host = head.header("host")?;
    split_authority(host, 80).ok().map(|(h, _)| h)
}

/// An absolute-form target `http://host[:port]/path?q` split into authority parts and
/// origin-form path (RFC 9112 §3.2.2).
pub fn split_absolute(target: &str) -> Result<(String, u16, String), HeadError> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("HTTP://"))
        .ok_or_else(|| {
            HeadError::Malformed(format!(
                "proxy request target {target:?} is not an absolute http:// URL (use CONNECT for https)"
            ))
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_authority(authority, 80)?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok((host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_host_header_without_port() {
        let head = parse(b"GET / HTTP/1.1\r\nHost: PyPI.org:8080\r\nAccept: */*\r\n\r\nbody")
            .expect("head");
        assert_eq!(host_of(&head).as_deref(), Some("pypi.org"));
        assert_eq!(head.len, 52);
    }

    #[test]
    fn partial_head_is_incomplete_and_garbage_is_malformed() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a"),
            Err(HeadError::Incomplete)
        );
        assert!(matches!(
            parse(b"\x16\x03\x01\x00"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn authority_forms_split_with_defaults() {
        assert_eq!(
            split_authority("example.com:443", 80),
            Ok(("example.com".into(), 443))
        );
        assert_eq!(
            split_authority("example.com", 80),
            Ok(("example.com".into(), 80))
        );
        assert_eq!(split_authority("[::1]:8443", 80), Ok(("::1".into(), 8443)));
        assert!(split_authority("example.com:0", 80).is_err());
        assert!(split_authority("example.com:http", 80).is_err());
        assert!(split_authority(":443", 80).is_err());
        assert!(split_authority("[::1", 80).is_err());
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(
            split_absolute("http://Example.com:8080/a/b?c=d"),
            Ok(("example.com".into(), 8080, "/a/b?c=d".into()))
        );
        assert_eq!(
            split_absolute("http://example.com"),
            Ok(("example.com".into(), 80, "/".into()))
        );
        assert_eq!(
            split_absolute("http://example.com?x"),
            Ok(("example.com".into(), 80, "/?x".into()))
        );
        assert!(split_absolute("https://example.com/").is_err());
        assert!(split_absolute("/relative").is_err());
    }
}
