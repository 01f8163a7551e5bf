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

/// Which way an inspected body travels. Uploads are inspected when the
/// request body is sent, downloads when the response comes; both are facts of
/// the response point, so one rule can name either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Download,
    Upload,
}

impl Direction {
    /// The names a policy writes, in the order messages list them.
    pub const NAMES: &'static [&'static str] = &["download", "upload"];

    /// Parses a policy name, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Direction> {
        if s.eq_ignore_ascii_case("download") {
            Some(Direction::Download)
        } else if s.eq_ignore_ascii_case("upload") {
            Some(Direction::Upload)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inspection verdict names a `verdicts` condition may use.
pub const VERDICTS: &[&str] = &[
    "malicious",
    "encrypted",
    "unscannable",
    "sensitive",
    "clean",
];

/// What content inspection found in a body: the facts of the response point.
/// `Default` is "nothing known" (a body that was not inspected): at the
/// response point, conditions on absent facts do not match.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectionFacts<'a> {
    /// File type found by magic bytes (`zip`, `exe`, `pdf`...), lowercase.
    pub file_type: Option<&'a str>,
    /// Every verdict of the body (one of [`VERDICTS`]; a body can have several
    /// findings, e.g. `sensitive` and `encrypted`). Empty: not scanned.
    pub verdicts: &'a [&'a str],
    /// DLP profiles that found sensitive data (`payment-card`, `iban`, custom
    /// profile names), any case.
    pub dlp: &'a [&'a str],
    pub direction: Option<Direction>,
    /// Size of the body in bytes.
    pub size: Option<u64>,
}

/// Facts known once the response (or, for an upload, the request body) is inspected.
///
/// ```
/// use rampart_policy::*;
/// use std::path::Path;
///
/// let src = r#"
///     [[access]]
///     name = "no card numbers out"
///     when = { dlp = ["payment-card"], direction = "upload" }
///     action = "block"
/// "#;
/// let (policy, _) = Policy::from_str(src, "policy.toml", Path::new(".")).unwrap();
/// let who = Identity::default();
/// let connection = ConnectionFacts { identity: &who, process: None, host: Some("files.example"), dst_ip: None, port: 443 };
/// let request = RequestFacts { connection, method: "POST", path: "/upload" };
/// // Until the body is scanned the rule can still match: access waits for the response.
/// assert!(policy.evaluate_request(&request).access.decided().is_none());
/// let inspection = InspectionFacts {
///     verdicts: &["sensitive"],
///     dlp: &["payment-card"],
///     direction: Some(Direction::Upload),
///     ..Default::default()
/// };
/// let d = policy.evaluate_response(&ResponseFacts { request, inspection });
/// assert_eq!(d.action, AccessAction::Block);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    pub request: RequestFacts<'a>,
    pub inspection: InspectionFacts<'a>,
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
