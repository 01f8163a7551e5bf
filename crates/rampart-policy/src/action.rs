//! Stages, evaluation points and the actions each stage can decide.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The rule lists of a policy, in the order traffic meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Steering,
    Decryption,
    Access,
    Egress,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Steering,
        Stage::Decryption,
        Stage::Access,
        Stage::Egress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Steering => "steering",
            Stage::Decryption => "decryption",
            Stage::Access => "access",
            Stage::Egress => "egress",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the facts a condition needs become known in the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvalPoint {
    /// CONNECT or first request: host/SNI, destination address, port, identity, process.
    Connection,
    /// Each request: full URL and method.
    Request,
    /// The response: content and file type.
    Response,
}

impl fmt::Display for EvalPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvalPoint::Connection => "connection",
            EvalPoint::Request => "request",
            EvalPoint::Response => "response",
        })
    }
}

/// What the endpoint agent does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SteeringAction {
    /// Send it through the gateway (the default).
    Steer,
    /// Let it go direct from the endpoint; logged by the agent only.
    Bypass,
    /// Tunnel it to the gateway, which passes it on without decrypting; logged by both.
    TunnelBypass,
    /// Drop it on the endpoint.
    Block,
}

/// Whether the gateway intercepts TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecryptionAction {
    Decrypt,
    DoNotDecrypt,
}

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessAction {
    Allow,
    Block,
    /// Allow and raise an alert event.
    Alert,
    /// Show a coaching page; the user may proceed (recorded).
    UserAlert,
}

/// How the gateway reaches the origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Egress {
    Direct,
    /// Through the named `[upstreams.<name>]` proxy group.
    Upstream(Arc<str>),
    /// Direct, from this local source address.
    Source(IpAddr),
}

macro_rules! named {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// Every spelling accepted in a policy file.
            pub const NAMES: &'static [&'static str] = &[$($s),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(SteeringAction { Steer => "steer", Bypass => "bypass", TunnelBypass => "tunnel-bypass", Block => "block" });
named!(DecryptionAction { Decrypt => "decrypt", DoNotDecrypt => "do-not-decrypt" });
named!(AccessAction { Allow => "allow", Block => "block", Alert => "alert", UserAlert => "user-alert" });

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::Direct => f.write_str("direct"),
            Egress::Upstream(name) => write!(f, "via {name}"),
            Egress::Source(ip) => write!(f, "source {ip}"),
        }
    }
}
