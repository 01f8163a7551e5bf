//! Userinfo (`http://user:password@host/`) never reaches a log, an event, the
//! policy or an upstream: RFC 9110 §4.2.4 deprecates it in http(s) URIs, and
//! clients that still send it put real credentials there. The proxy removes it
//! from the request target as soon as the request arrives.

use http::uri::{Authority, Parts};
use http::Uri;

/// Removes the userinfo from `uri`'s authority; true when it had one. A
/// target whose authority cannot be rebuilt without it becomes `/`, which the
/// proxy answers with 400 (no host): the credentials are dropped either way.
pub fn strip_userinfo(uri: &mut Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let Some((_, host)) = authority.as_str().rsplit_once('@') else {
        return false;
    };
    let host = match host.parse::<Authority>() {
        Ok(host) => host,
        Err(_) => {
            *uri = Uri::from_static("/");
            return true;
        }
    };
    let mut parts = Parts::from(std::mem::take(uri));
    parts.authority = Some(host);
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(s: &str) -> String {
        let mut uri: Uri = s.parse().unwrap();
        strip_userinfo(&mut uri);
        uri.to_string()
    }

    #[test]
    fn userinfo_is_removed_and_the_rest_kept() {
        assert_eq!(
            stripped("http://user:pw@example.test:8080/a?b=c"),
            "http://example.test:8080/a?b=c"
        );
        assert_eq!(
            stripped("http://u%40x:p@ss@host.test/"),
            "http://host.test/"
        );
        assert_eq!(stripped("user:pw@host.test:443"), "host.test:443");
        assert_eq!(stripped("http://plain.test/x"), "http://plain.test/x");
        assert_eq!(stripped("/origin-form"), "/origin-form");
    }
}
