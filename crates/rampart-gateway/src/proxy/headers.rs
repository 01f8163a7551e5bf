//! Header handling at the proxy boundary (RFC 9110 §7.6): hop-by-hop fields
//! are removed before forwarding, `Via` is appended, and loops are detected.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that apply to one connection only (RFC 9110 §7.6.1), plus the
/// `Proxy-*` fields that are between the client and this proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
];

/// Removes hop-by-hop fields, including every field named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names listed in Connection first: they must go too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Appends our `Via` entry to the list (one field, comma-separated, so
/// recipients that keep only one field value still see the whole chain).
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let existing: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if existing.is_empty() {
        headers.insert(header::VIA, via.clone());
        return;
    }
    let mut joined = existing.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(via.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::VIA, value);
    }
}

/// Why an origin's response framing is unsafe to forward, if it is: both
/// `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3: "ought to be
/// handled as an error", the shape of response splitting and smuggling).
pub fn conflicting_framing(headers: &HeaderMap) -> Option<&'static str> {
    (headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH))
    .then_some(
        "the origin sent an invalid response: both Content-Length and Transfer-Encoding \
             (RFC 9112 section 6.3)",
    )
}

/// True when a `Via` entry carries this process's loop token.
pub fn is_loop(headers: &HeaderMap, loop_token: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(loop_token))
}

/// Appends the client address to `X-Forwarded-For`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: std::net::IpAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_connection_listed_and_standard_hop_by_hop_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn via_entries_are_joined_into_one_field() {
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.1 squid"));
        append_via(
            &mut h,
            &HeaderValue::from_static("1.1 rampart (rampart/abc)"),
        );
        assert_eq!(h.get_all(header::VIA).iter().count(), 1);
        assert_eq!(h[header::VIA], "1.1 squid, 1.1 rampart (rampart/abc)");
    }

    #[test]
    fn via_loop_is_detected_by_token() {
        let mut h = HeaderMap::new();
        append_via(
            &mut h,
            &HeaderValue::from_static("1.1 rampart (rampart/abc)"),
        );
        assert!(is_loop(&h, "rampart/abc"));
        assert!(!is_loop(&h, "rampart/def"));
    }
}
