//! Domain fronting inside a decrypted tunnel: the host a request addresses must be
//! the name the TLS connection was opened for, except on connections covered by
//! `tls.fronting_exceptions` (CDNs that legitimately serve several names on one
//! connection).

use rampart_tls::config::FrontingException;
use rampart_tls::host_pattern::{HostPattern, HostPatternSet};
use rampart_tls::TlsError;

/// The compiled `tls.fronting_exceptions`.
#[derive(Debug, Default)]
pub struct FrontingExceptions {
    rules: Vec<(HostPattern, HostPatternSet)>,
}

/// What the check found for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Fronting {
    /// The request addresses the TLS name.
    Same,
    /// A different host, allowed by the exception with this SNI pattern.
    Allowed(String),
    /// A different host: domain fronting.
    Refused,
}

impl FrontingExceptions {
    pub fn new(exceptions: &[FrontingException]) -> Result<Self, TlsError> {
        let rules = exceptions
            .iter()
            .map(|e| {
                Ok((
                    HostPattern::parse("tls.fronting_exceptions.sni", &e.sni)?,
                    HostPatternSet::parse("tls.fronting_exceptions.hosts", &e.hosts)?,
                ))
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        Ok(FrontingExceptions { rules })
    }

    /// Checks `requested` (from Host / `:authority`) against `tls_name` (SNI, or the
    /// CONNECT host for clients without SNI).
    pub fn check(&self, tls_name: &str, requested: &str) -> Fronting {
        if requested.eq_ignore_ascii_case(tls_name) {
            return Fronting::Same;
        }
        self.rules
            .iter()
            .find(|(sni, hosts)| {
                sni.matches(tls_name) && (hosts.is_empty() || hosts.find(requested).is_some())
            })
            .map(|(sni, _)| Fronting::Allowed(sni.to_string()))
            .unwrap_or(Fronting::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exceptions() -> FrontingExceptions {
        FrontingExceptions::new(&[
            FrontingException {
                sni: "*.cloudfront.net".into(),
                hosts: vec![],
            },
            FrontingException {
                sni: "edge.cdn.example".into(),
                hosts: vec![".assets.example".into()],
            },
        ])
        .unwrap()
    }

    #[test]
    fn same_name_passes_and_mismatch_is_fronting_without_an_exception() {
        let none = FrontingExceptions::default();
        assert_eq!(none.check("shop.test", "SHOP.test"), Fronting::Same);
        assert_eq!(none.check("shop.test", "hidden.test"), Fronting::Refused);
    }

    #[test]
    fn exceptions_allow_listed_pairs_only() {
        let ex = exceptions();
        assert_eq!(
            ex.check("d111.cloudfront.net", "anything.example"),
            Fronting::Allowed("*.cloudfront.net".into())
        );
        assert_eq!(
            ex.check("edge.cdn.example", "img.assets.example"),
            Fronting::Allowed("edge.cdn.example".into())
        );
        assert_eq!(
            ex.check("edge.cdn.example", "evil.example"),
            Fronting::Refused
        );
        assert_eq!(
            ex.check("shop.test", "d1.cloudfront.net"),
            Fronting::Refused
        );
    }
}
