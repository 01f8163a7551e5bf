//! Which resolved destinations the gateway refuses to connect to: its own
//! listeners (forwarding loops) always, and loopback or unspecified addresses
//! unless `allow_loopback_destinations` is set, so a proxy user cannot reach
//! services bound to the gateway host's loopback interface.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::admission::canonical_ip;
use crate::error::ConnectError;

#[derive(Debug, Clone)]
pub struct DestinationGuard {
    allow_loopback: bool,
    listeners: Vec<SocketAddr>,
    /// Addresses of this host's interfaces, for listeners bound to 0.0.0.0/::.
    local_ips: HashSet<IpAddr>,
}

impl DestinationGuard {
    pub fn new(allow_loopback: bool, listeners: Vec<SocketAddr>) -> Self {
        DestinationGuard {
            allow_loopback,
            listeners,
            local_ips: local_interface_ips(),
        }
    }

    pub fn check(&self, addr: SocketAddr) -> Result<(), ConnectError> {
        let ip = canonical_ip(addr.ip());
        if ip.is_unspecified() {
            return Err(ConnectError::Forbidden {
                addr,
                reason: "the unspecified address reaches the gateway host itself",
            });
        }
        if self.is_own_listener(ip, addr.port()) {
            return Err(ConnectError::Forbidden {
                addr,
                reason: "it is one of the gateway's own listeners (forwarding loop)",
            });
        }
        if !self.allow_loopback && ip.is_loopback() {
            return Err(ConnectError::Forbidden {
                addr,
                reason: "loopback destinations are disabled (allow_loopback_destinations)",
            });
        }
        Ok(())
    }

    /// Only the loop check, for administrator-chosen upstream proxies.
    pub fn check_not_self(&self, addr: SocketAddr) -> Result<(), ConnectError> {
        if self.is_own_listener(canonical_ip(addr.ip()), addr.port()) {
            return Err(ConnectError::Forbidden {
                addr,
                reason: "it is one of the gateway's own listeners (forwarding loop)",
            });
        }
        Ok(())
    }

    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners.iter().any(|listener| {
            if listener.port() != port {
                return false;
            }
            let bound = canonical_ip(listener.ip());
            bound == ip
                || (bound.is_unspecified() && (ip.is_loopback() || self.local_ips.contains(&ip)))
                || (bound.is_loopback() && ip.is_loopback())
        })
    }
}

fn local_interface_ips() -> HashSet<IpAddr> {
    let mut ips = HashSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifaddr in addrs {
            let Some(address) = ifaddr.address else {
                continue;
            };
            if let Some(v4) = address.as_sockaddr_in() {
                ips.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = address.as_sockaddr_in6() {
                ips.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listener_is_refused_even_when_loopback_is_allowed() {
        let guard = DestinationGuard::new(true, vec!["127.0.0.1:3128".parse().unwrap()]);
        assert!(guard.check("127.0.0.1:3128".parse().unwrap()).is_err());
        assert!(guard.check("127.0.0.2:3128".parse().unwrap()).is_err());
        assert!(guard.check("127.0.0.1:8000".parse().unwrap()).is_ok());
        assert!(guard.check("0.0.0.0:8000".parse().unwrap()).is_err());
    }

    #[test]
    fn loopback_is_refused_by_default() {
        let guard = DestinationGuard::new(false, vec![]);
        let err = guard.check("127.0.0.1:22".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), "forbidden_destination");
        assert!(guard.check("[::1]:22".parse().unwrap()).is_err());
        assert!(guard
            .check("[::ffff:127.0.0.1]:22".parse().unwrap())
            .is_err());
        assert!(guard.check("192.0.2.1:80".parse().unwrap()).is_ok());
    }

    #[test]
    fn wildcard_listener_covers_local_addresses() {
        let guard = DestinationGuard::new(true, vec!["0.0.0.0:3128".parse().unwrap()]);
        assert!(guard.check("127.0.0.1:3128".parse().unwrap()).is_err());
    }
}
