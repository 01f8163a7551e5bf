//! Error types of the gateway, with the HTTP status and short reason a proxy
//! client sees for each.

use std::io;
use std::net::SocketAddr;

use http::StatusCode;

/// A configuration the gateway refuses to run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error(
        "refusing to start an open proxy: {listen} is reachable beyond loopback but [proxy] has \
         neither allow_networks nor users/tokens; add `allow_networks = [\"10.0.0.0/8\"]` (your \
         client networks) or proxy authentication"
    )]
    OpenProxy { listen: SocketAddr },
}

/// The client's request body could not be read (malformed chunked framing,
/// a connection closed mid-body): the client's fault, answered with 400 and
/// never blamed on the origin.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body from the client: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// Why a connection to an origin or an upstream proxy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS resolution failed for {host}: {detail}")]
    Dns { host: String, detail: String },
    #[error("connection refused by {addr}")]
    Refused { addr: SocketAddr },
    #[error("connection to {target} timed out")]
    Timeout { target: String },
    #[error("{target} is unreachable: {source}")]
    Unreachable { target: String, source: io::Error },
    #[error("destination {addr} is not allowed: {reason}")]
    Forbidden {
        addr: SocketAddr,
        reason: &'static str,
    },
    #[error("upstream proxy {proxy} answered CONNECT with {status}")]
    UpstreamStatus { proxy: String, status: u16 },
    #[error("upstream proxy {proxy} failed: {detail}")]
    UpstreamProtocol { proxy: String, detail: String },
    #[error("every proxy of upstream group {group} is down")]
    UpstreamsDown { group: String },
    #[error("unknown upstream group {group:?}")]
    UnknownUpstream { group: String },
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls { host: String, detail: String },
}

impl ConnectError {
    /// The status a proxy client receives (RFC 9110 §15.6.3, §15.6.5).
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ConnectError::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Dns { .. } => "dns",
            ConnectError::Refused { .. } => "refused",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Unreachable { .. } => "unreachable",
            ConnectError::Forbidden { .. } => "forbidden_destination",
            ConnectError::UpstreamStatus { .. } | ConnectError::UpstreamProtocol { .. } => {
                "upstream"
            }
            ConnectError::UpstreamsDown { .. } | ConnectError::UnknownUpstream { .. } => {
                "upstream_down"
            }
            ConnectError::Tls { .. } => "tls",
        }
    }

    /// Whether the failure says something about the upstream proxy's health
    /// (as opposed to the origin behind it).
    pub fn counts_against_upstream(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. }
                | ConnectError::Timeout { .. }
                | ConnectError::Unreachable { .. }
                | ConnectError::UpstreamProtocol { .. }
        )
    }

    pub fn from_io(err: io::Error, addr: SocketAddr) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
            io::ErrorKind::TimedOut => ConnectError::Timeout {
                target: addr.to_string(),
            },
            _ => ConnectError::Unreachable {
                target: addr.to_string(),
                source: err,
            },
        }
    }
}
