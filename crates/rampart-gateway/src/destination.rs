//! Which resolved destinations the gateway refuses to connect to: every
//! listener of this process (forwarding loops) always; loopback or unspecified
//! addresses unless `allow_loopback_destinations` is set, so a proxy user
//! cannot reach services bound to the gateway host's loopback interface;
//! link-local, multicast and broadcast addresses unless
//! `allow_link_local_destinations` is set, and the configured cloud metadata
//! addresses always, so a proxy user cannot read the host's cloud credentials
//! (169.254.169.254) or reach its local segment.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::admission::canonical_ip;
use crate::config::ProxyConfig;
use crate::error::ConnectError;

/// Cloud metadata services outside 169.254.0.0/16 that `metadata_addresses`
/// names by default: AWS's IPv6 instance metadata endpoint.
pub const DEFAULT_METADATA_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(std::net::Ipv6Addr::new(
        0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254,
    )),
];

/// Listeners the process opens after the gateway started (the agent tunnel),
/// shared by every configuration generation so loop protection covers them.
#[derive(Clone, Default)]
pub struct ListenerRegistry {
    addrs: Arc<ArcSwap<Vec<SocketAddr>>>,
}

impl ListenerRegistry {
    pub fn register(&self, addr: SocketAddr) {
        self.addrs.rcu(|current| {
            let mut next = Vec::clone(current);
            if !next.contains(&addr) {
                next.push(addr);
            }
            next
        });
    }

    fn snapshot(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }
}

impl std::fmt::Debug for ListenerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot().iter()).finish()
    }
}

#[derive(Debug, Clone)]
pub struct DestinationGuard {
    allow_loopback: bool,
    allow_link_local: bool,
    metadata: Vec<IpAddr>,
    listeners: Vec<SocketAddr>,
    registered: ListenerRegistry,
    /// Addresses of this host's interfaces, for listeners bound to 0.0.0.0/::.
    local_ips: HashSet<IpAddr>,
}

impl DestinationGuard {
    /// The guard of `proxy`'s settings; `listeners` are the process's listeners
    /// known now, `registered` those that appear later.
    pub fn new(
        proxy: &ProxyConfig,
        listeners: Vec<SocketAddr>,
        registered: ListenerRegistry,
    ) -> Self {
        DestinationGuard {
            allow_loopback: proxy.allow_loopback_destinations,
            allow_link_local: proxy.allow_link_local_destinations,
            metadata: proxy
                .metadata_addresses
                .iter()
                .copied()
                .map(canonical_ip)
                .collect(),
            listeners,
            registered,
            local_ips: local_interface_ips(),
        }
    }

    pub fn check(&self, addr: SocketAddr) -> Result<(), ConnectError> {
        let ip = canonical_ip(addr.ip());
        let forbidden = |reason| Err(ConnectError::Forbidden { addr, reason });
        if ip.is_unspecified() {
            return forbidden("the unspecified address reaches the gateway host itself");
        }
        if self.is_own_listener(ip, addr.port()) {
            return forbidden("it is one of the gateway's own listeners (forwarding loop)");
        }
        if !self.allow_loopback && ip.is_loopback() {
            return forbidden("loopback destinations are disabled (allow_loopback_destinations)");
        }
        if self.metadata.contains(&ip) {
            return forbidden("it is a cloud metadata address (metadata_addresses)");
        }
        if !self.allow_link_local {
            if let Some(reason) = local_scope_reason(ip) {
                return forbidden(reason);
            }
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
        let registered = self.registered.snapshot();
        self.listeners
            .iter()
            .chain(registered.iter())
            .any(|listener| {
                if listener.port() != port {
                    return false;
                }
                let bound = canonical_ip(listener.ip());
                bound == ip
                    || (bound.is_unspecified()
                        && (ip.is_loopback() || self.local_ips.contains(&ip)))
                    || (bound.is_loopback() && ip.is_loopback())
            })
    }
}

/// Why `ip` is refused as a destination outside `allow_link_local_destinations`:
/// addresses that only mean something on the gateway's own segment.
fn local_scope_reason(ip: IpAddr) -> Option<&'static str> {
    const LINK_LOCAL: &str = "link-local destinations are disabled (allow_link_local_destinations)";
    const MULTICAST: &str = "multicast destinations are disabled (allow_link_local_destinations)";
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => {
            Some("the broadcast address is disabled (allow_link_local_destinations)")
        }
        IpAddr::V4(v4) if v4.is_link_local() => Some(LINK_LOCAL),
        IpAddr::V4(v4) if v4.is_multicast() => Some(MULTICAST),
        // fe80::/10 (RFC 4291 §2.5.6).
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(LINK_LOCAL),
        IpAddr::V6(v6) if v6.is_multicast() => Some(MULTICAST),
        _ => None,
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

    fn guard(allow_loopback: bool, listeners: &[&str]) -> DestinationGuard {
        let proxy = ProxyConfig {
            allow_loopback_destinations: allow_loopback,
            ..ProxyConfig::default()
        };
        let listeners = listeners.iter().map(|l| l.parse().unwrap()).collect();
        DestinationGuard::new(&proxy, listeners, ListenerRegistry::default())
    }

    fn reason(guard: &DestinationGuard, addr: &str) -> Option<&'static str> {
        match guard.check(addr.parse().unwrap()) {
            Ok(()) => None,
            Err(ConnectError::Forbidden { reason, .. }) => Some(reason),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn own_listener_is_refused_even_when_loopback_is_allowed() {
        let guard = guard(true, &["127.0.0.1:3128"]);
        assert!(guard.check("127.0.0.1:3128".parse().unwrap()).is_err());
        assert!(guard.check("127.0.0.2:3128".parse().unwrap()).is_err());
        assert!(guard.check("127.0.0.1:8000".parse().unwrap()).is_ok());
        assert!(guard.check("0.0.0.0:8000".parse().unwrap()).is_err());
    }

    #[test]
    fn listener_registered_after_start_is_refused() {
        let guard = guard(true, &["127.0.0.1:3128"]);
        assert!(guard.check("127.0.0.1:3129".parse().unwrap()).is_ok());
        guard.registered.register("127.0.0.1:3129".parse().unwrap());
        let refused = reason(&guard, "127.0.0.1:3129").unwrap();
        assert!(refused.contains("forwarding loop"), "{refused}");
    }

    #[test]
    fn loopback_is_refused_by_default() {
        let guard = guard(false, &[]);
        let err = guard.check("127.0.0.1:22".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), "forbidden_destination");
        assert!(guard.check("[::1]:22".parse().unwrap()).is_err());
        assert!(guard
            .check("[::ffff:127.0.0.1]:22".parse().unwrap())
            .is_err());
        assert!(guard.check("192.0.2.1:80".parse().unwrap()).is_ok());
    }

    #[test]
    fn link_local_multicast_broadcast_and_metadata_are_refused_by_default() {
        let guard = guard(true, &[]);
        for (addr, word) in [
            ("169.254.169.254:80", "metadata"),
            ("[fd00:ec2::254]:80", "metadata"),
            ("169.254.1.1:80", "link-local"),
            ("[fe80::1]:80", "link-local"),
            ("[febf::1]:80", "link-local"),
            ("224.0.0.1:80", "multicast"),
            ("239.255.255.250:1900", "multicast"),
            ("[ff02::1]:80", "multicast"),
            ("[::ffff:224.0.0.1]:80", "multicast"),
            ("255.255.255.255:80", "broadcast"),
            ("[::]:80", "unspecified"),
        ] {
            let refused = reason(&guard, addr).unwrap_or_else(|| panic!("{addr} allowed"));
            assert!(refused.contains(word), "{addr}: {refused}");
        }
        assert_eq!(reason(&guard, "[fec0::1]:80"), None);
        assert_eq!(reason(&guard, "198.51.100.7:80"), None);
    }

    #[test]
    fn opt_in_allows_link_local_but_listed_metadata_stays_refused() {
        let proxy = ProxyConfig {
            allow_link_local_destinations: true,
            metadata_addresses: vec!["169.254.169.254".parse().unwrap()],
            ..ProxyConfig::default()
        };
        let guard = DestinationGuard::new(&proxy, vec![], ListenerRegistry::default());
        assert_eq!(reason(&guard, "169.254.1.1:80"), None);
        assert_eq!(reason(&guard, "224.0.0.1:80"), None);
        assert!(reason(&guard, "169.254.169.254:80").is_some());
        let unlisted = ProxyConfig {
            metadata_addresses: vec![],
            ..proxy
        };
        let guard = DestinationGuard::new(&unlisted, vec![], ListenerRegistry::default());
        assert_eq!(reason(&guard, "169.254.169.254:80"), None);
    }

    #[test]
    fn wildcard_listener_covers_local_addresses() {
        let guard = guard(true, &["0.0.0.0:3128"]);
        assert!(guard.check("127.0.0.1:3128".parse().unwrap()).is_err());
    }
}
