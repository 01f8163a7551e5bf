//! The typed form of an exception file: what the parser produces, what the compiler
//! reads and what `isolation.json` persists. Every value here has been validated by
//! the parser (ports in range, families consistent, ports only with tcp/udp), so the
//! compiler cannot fail.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// `pass` opens a hole in isolation's default drop, `block` closes one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Block,
}

/// `in` matches packets arriving at this host, `out` packets leaving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// `inet` (IPv4) or `inet6` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }
}

/// The protocols an exception can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

impl Proto {
    /// Only TCP and UDP have ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    /// The family a protocol is confined to, if any (ICMP is IPv4's, ICMPv6 IPv6's).
    pub fn family(self) -> Option<Family> {
        match self {
            Proto::Icmp => Some(Family::Inet),
            Proto::Icmp6 => Some(Family::Inet6),
            Proto::Tcp | Proto::Udp => None,
        }
    }

    /// The name nftables uses for `meta l4proto`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "ipv6-icmp",
        }
    }
}

/// An address or network; `prefix` is the full length for a single address. The host
/// bits are cleared by the parser (pf reads `10.0.0.1/8` as `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Cidr { addr, prefix }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    fn full(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == self.full() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// One port or an inclusive range (`A:B` in the file, `A-B` in nftables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortSpec {
    One(u16),
    Range(u16, u16),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::One(p) => write!(f, "{p}"),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// One side of a rule (`from ...` or `to ...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Empty means `any`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<Cidr>,
    /// Empty means any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

impl Endpoint {
    pub fn is_any(&self) -> bool {
        self.addrs.is_empty() && self.ports.is_empty()
    }

    /// The addresses of one family; `None` when the side names no address at all.
    pub fn addrs_of(&self, family: Family) -> Option<Vec<Cidr>> {
        if self.addrs.is_empty() {
            return None;
        }
        Some(
            self.addrs
                .iter()
                .copied()
                .filter(|c| c.family() == family)
                .collect(),
        )
    }
}

/// One exception line: `pass out log quick inet proto tcp from any to 203.0.113.2 port 22`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRule {
    pub action: Action,
    /// `None` (no `in`/`out`) matches both directions, as in pf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub log: bool,
    #[serde(default)]
    pub quick: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// Empty means any protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protos: Vec<Proto>,
    #[serde(default)]
    pub from: Endpoint,
    #[serde(default)]
    pub to: Endpoint,
    /// `no state`: no reply rule is generated (pf's stateless pass).
    #[serde(default)]
    pub no_state: bool,
    /// The line the rule started on, shown as the nftables rule comment.
    #[serde(default)]
    pub line: usize,
}

impl ExceptionRule {
    /// The families this rule can match, given its `inet`/`inet6`, its protocols and
    /// its addresses. `None` means the rule is family-agnostic (no address, no family).
    pub fn families(&self) -> Option<Vec<Family>> {
        let mut candidates: Vec<Family> = match self.family {
            Some(f) => vec![f],
            None => vec![Family::Inet, Family::Inet6],
        };
        if !self.protos.is_empty() && self.protos.iter().all(|p| p.family().is_some()) {
            candidates.retain(|f| self.protos.iter().any(|p| p.family() == Some(*f)));
        }
        for side in [&self.from, &self.to] {
            if !side.addrs.is_empty() {
                candidates.retain(|f| side.addrs.iter().any(|c| c.family() == *f));
            }
        }
        let constrained = self.family.is_some()
            || !self.from.addrs.is_empty()
            || !self.to.addrs.is_empty()
            || (!self.protos.is_empty() && self.protos.iter().all(|p| p.family().is_some()));
        if constrained {
            Some(candidates)
        } else {
            None
        }
    }
}
