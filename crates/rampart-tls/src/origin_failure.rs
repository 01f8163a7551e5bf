//! Turns an origin-side TLS failure into a reason a user understands, for block pages,
//! 502 responses and alert events.
use std::fmt;

/// Marker error: the origin presented a self-signed certificate. The origin verifier
/// returns it (inside `CertificateError::Other`) where webpki would only say "unknown issuer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the certificate is self-signed")]
pub struct SelfSignedCertificate;

/// Why Rampart could not (or would not) establish TLS with an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginTlsFailure {
    /// The certificate's notAfter is in the past.
    Expired,
    /// The certificate's notBefore is in the future.
    NotYetValid,
    /// The chain does not lead to a trusted root.
    UnknownIssuer,
    /// The certificate signs itself and is not trusted.
    SelfSigned,
    /// The certificate is valid, but not for the host asked for.
    WrongHost { presented: Vec<String> },
    /// The certificate was revoked.
    Revoked,
    /// The certificate is not allowed for TLS servers (EKU).
    WrongPurpose,
    /// Any other defect of the certificate (bad encoding, signature, critical extension...).
    InvalidCertificate { detail: String },
    /// The handshake failed for a reason other than the certificate (no common cipher or
    /// version, an alert from the origin, a protocol violation).
    HandshakeFailure { detail: String },
    /// The origin closed or reset the connection during the handshake.
    ConnectionClosed { detail: String },
    /// The handshake did not finish in time.
    Timeout,
}

impl OriginTlsFailure {
    /// Classifies a rustls error.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::Expired | C::ExpiredContext { .. } => OriginTlsFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => OriginTlsFailure::NotYetValid,
                C::UnknownIssuer => OriginTlsFailure::UnknownIssuer,
                C::NotValidForName => OriginTlsFailure::WrongHost {
                    presented: Vec::new(),
                },
                C::NotValidForNameContext { presented, .. } => OriginTlsFailure::WrongHost {
                    presented: presented.clone(),
                },
                C::Revoked => OriginTlsFailure::Revoked,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    OriginTlsFailure::WrongPurpose
                }
                C::Other(other) if other.0.downcast_ref::<SelfSignedCertificate>().is_some() => {
                    OriginTlsFailure::SelfSigned
                }
                other => OriginTlsFailure::InvalidCertificate {
                    detail: format!("{other:?}"),
                },
            },
            rustls::Error::NoCertificatesPresented => OriginTlsFailure::InvalidCertificate {
                detail: "the server presented no certificate".to_string(),
            },
            other => OriginTlsFailure::HandshakeFailure {
                detail: other.to_string(),
            },
        }
    }

    /// Classifies an I/O error from `tokio_rustls::TlsConnector::connect` (which wraps the
    /// rustls error) or from the TCP stream under it.
    pub fn from_io(err: &std::io::Error) -> Self {
        if let Some(inner) = err.get_ref() {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Self::from_rustls(tls);
            }
        }
        use std::io::ErrorKind as K;
        match err.kind() {
            K::TimedOut => OriginTlsFailure::Timeout,
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                OriginTlsFailure::ConnectionClosed {
                    detail: err.to_string(),
                }
            }
            _ => OriginTlsFailure::HandshakeFailure {
                detail: err.to_string(),
            },
        }
    }

    /// A stable short code for events and logs.
    pub fn code(&self) -> &'static str {
        match self {
            OriginTlsFailure::Expired => "expired",
            OriginTlsFailure::NotYetValid => "not_yet_valid",
            OriginTlsFailure::UnknownIssuer => "unknown_issuer",
            OriginTlsFailure::SelfSigned => "self_signed",
            OriginTlsFailure::WrongHost { .. } => "wrong_host",
            OriginTlsFailure::Revoked => "revoked",
            OriginTlsFailure::WrongPurpose => "wrong_purpose",
            OriginTlsFailure::InvalidCertificate { .. } => "invalid_certificate",
            OriginTlsFailure::HandshakeFailure { .. } => "handshake_failure",
            OriginTlsFailure::ConnectionClosed { .. } => "connection_closed",
            OriginTlsFailure::Timeout => "timeout",
        }
    }

    /// Whether the origin's certificate is at fault (block page + alert) rather than the
    /// connection (502).
    pub fn is_certificate_problem(&self) -> bool {
        !matches!(
            self,
            OriginTlsFailure::HandshakeFailure { .. }
                | OriginTlsFailure::ConnectionClosed { .. }
                | OriginTlsFailure::Timeout
        )
    }

    /// A sentence for the block page / 502 body, naming the host.
    pub fn explain(&self, host: &str) -> String {
        match self {
            OriginTlsFailure::Expired => format!(
                "The certificate of {host} has expired, so Rampart cannot confirm it is talking to the real site."
            ),
            OriginTlsFailure::NotYetValid => format!(
                "The certificate of {host} is not valid yet (check the clocks of the site and the gateway)."
            ),
            OriginTlsFailure::UnknownIssuer => format!(
                "The certificate of {host} was issued by an authority Rampart does not trust."
            ),
            OriginTlsFailure::SelfSigned => format!(
                "{host} presented a self-signed certificate, which no trusted authority vouches for."
            ),
            OriginTlsFailure::WrongHost { presented } if !presented.is_empty() => format!(
                "The certificate presented for {host} is for {} instead.",
                presented.join(", ")
            ),
            OriginTlsFailure::WrongHost { .. } => {
                format!("The certificate presented for {host} is for a different host.")
            }
            OriginTlsFailure::Revoked => {
                format!("The certificate of {host} has been revoked by its issuer.")
            }
            OriginTlsFailure::WrongPurpose => format!(
                "The certificate of {host} is not allowed to be used by web servers."
            ),
            OriginTlsFailure::InvalidCertificate { detail } => {
                format!("The certificate of {host} is invalid ({detail}).")
            }
            OriginTlsFailure::HandshakeFailure { detail } => {
                format!("The secure connection to {host} failed: {detail}.")
            }
            OriginTlsFailure::ConnectionClosed { detail } => format!(
                "{host} closed the connection during the secure handshake ({detail})."
            ),
            OriginTlsFailure::Timeout => {
                format!("{host} did not complete the secure handshake in time.")
            }
        }
    }
}

impl fmt::Display for OriginTlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginTlsFailure::Expired => f.write_str("certificate expired"),
            OriginTlsFailure::NotYetValid => f.write_str("certificate not yet valid"),
            OriginTlsFailure::UnknownIssuer => f.write_str("certificate issuer not trusted"),
            OriginTlsFailure::SelfSigned => f.write_str("self-signed certificate"),
            OriginTlsFailure::WrongHost { presented } if presented.is_empty() => {
                f.write_str("certificate is for another host")
            }
            OriginTlsFailure::WrongHost { presented } => {
                write!(
                    f,
                    "certificate is for another host ({})",
                    presented.join(", ")
                )
            }
            OriginTlsFailure::Revoked => f.write_str("certificate revoked"),
            OriginTlsFailure::WrongPurpose => f.write_str("certificate not valid for TLS servers"),
            OriginTlsFailure::InvalidCertificate { detail } => {
                write!(f, "invalid certificate: {detail}")
            }
            OriginTlsFailure::HandshakeFailure { detail } => {
                write!(f, "TLS handshake failed: {detail}")
            }
            OriginTlsFailure::ConnectionClosed { detail } => {
                write!(f, "connection closed during TLS handshake: {detail}")
            }
            OriginTlsFailure::Timeout => f.write_str("TLS handshake timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertificateError, Error, OtherError};
    use std::sync::Arc;

    #[test]
    fn certificate_errors_map_to_user_reasons() {
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_issuer",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                "wrong_host",
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "revoked",
            ),
            (
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    SelfSignedCertificate,
                )))),
                "self_signed",
            ),
            (
                Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                "handshake_failure",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(OriginTlsFailure::from_rustls(&err).code(), code, "{err:?}");
        }
    }

    #[test]
    fn io_errors_unwrap_the_rustls_error_inside() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(OriginTlsFailure::from_io(&io), OriginTlsFailure::Expired);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            OriginTlsFailure::from_io(&reset).code(),
            "connection_closed"
        );
        assert!(!OriginTlsFailure::from_io(&reset).is_certificate_problem());
    }

    #[test]
    fn wrong_host_explanation_names_both_hosts() {
        let f = OriginTlsFailure::WrongHost {
            presented: vec!["other.example".into()],
        };
        let text = f.explain("bank.example");
        assert!(
            text.contains("bank.example") && text.contains("other.example"),
            "{text}"
        );
        assert!(f.is_certificate_problem());
    }
}
