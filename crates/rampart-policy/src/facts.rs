//! What the gateway and agent know about a flow when they ask the policy.

use std::net::IpAddr;

/// Who is behind a flow. Groups given here are added to the groups the policy itself
/// assigns to the user in `[identities]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub device: Option<String>,
    pub source_ip: Option<IpAddr>,
}

/// The local process that opened a connection (known to the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub name: String,
    pub path: Option<String>,
}

/// Facts known at CONNECT or the first request of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    pub identity: &'a Identity,
    pub process: Option<&'a Process>,
    /// CONNECT host, SNI or Host header (any case, IDN or punycode).
    pub host: Option<&'a str>,
    pub dst_ip: Option<IpAddr>,
    pub port: u16,
}

/// Facts known for each request: the connection's plus method and path.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub connection: ConnectionFacts<'a>,
    pub method: &'a str,
    /// Path and query as sent (`/a/b?c`).
    pub path: &'a str,
}

/// Facts known once the response is seen.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    pub request: RequestFacts<'a>,
    /// File type found by inspection (`zip`, `exe`, `pdf`...), lowercase.
    pub file_type: Option<&'a str>,
}

/// Facts the agent knows when deciding how to steer a connection.
#[derive(Debug, Clone, Copy)]
pub struct SteeringFacts<'a> {
    pub identity: &'a Identity,
    pub process: &'a Process,
    pub host: Option<&'a str>,
    pub dst_ip: Option<IpAddr>,
    pub port: u16,
}
