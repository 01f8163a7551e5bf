//! `[limits] max_header_bytes`, counted precisely.
//!
//! hyper's `max_buf_size` bounds its read buffer, not the request head: one
//! read may overshoot the bound by up to the buffer's growth step, so heads of
//! nearly twice the limit can get through. The listener still sets it (it
//! bounds memory and answers 431 to heads that never end), and every parsed
//! request is measured here as it would appear on the wire in canonical form:
//! the request line (`METHOD SP target SP HTTP/1.1 CRLF`), each field as
//! `name: value CRLF`, and the final CRLF. Whitespace a client adds around
//! field values beyond that single space is not counted.

use http::Request;

/// The canonical size in bytes of `req`'s head.
pub fn head_size<B>(req: &Request<B>) -> usize {
    const VERSION_AND_CRLF: usize = "HTTP/1.1\r\n".len();
    let uri = req.uri();
    let target = match (uri.scheme_str(), uri.authority(), uri.path_and_query()) {
        (Some(scheme), Some(authority), path) => {
            scheme.len()
                + "://".len()
                + authority.as_str().len()
                + path.map_or(0, |p| p.as_str().len())
        }
        (None, Some(authority), None) => authority.as_str().len(),
        (_, _, Some(path)) => path.as_str().len(),
        _ => uri.to_string().len(),
    };
    let line = req.method().as_str().len() + 1 + target + 1 + VERSION_AND_CRLF;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    line + fields + "\r\n".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_the_canonical_wire_form() {
        let req = Request::get("http://a.test/x?y")
            .header("Host", "a.test")
            .header("X-Big", "v".repeat(10))
            .body(())
            .unwrap();
        let wire = "GET http://a.test/x?y HTTP/1.1\r\nhost: a.test\r\nx-big: vvvvvvvvvv\r\n\r\n";
        assert_eq!(head_size(&req), wire.len());
        let connect = Request::connect("a.test:443").body(()).unwrap();
        assert_eq!(
            head_size(&connect),
            "CONNECT a.test:443 HTTP/1.1\r\n\r\n".len()
        );
    }
}
