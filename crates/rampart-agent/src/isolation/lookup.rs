//! Looking up the kept host names (server, gateway, `[isolation] keep`) with a
//! deadline.
//!
//! While a device is isolated, DNS goes only to `[isolation] resolvers`; without one,
//! every lookup that is not answered from `/etc/hosts` waits for the resolver's
//! timeouts (glibc: 5 s per try, two tries, per server). The agent re-resolves the
//! kept names every few seconds on the same task that applies a release: an unbounded
//! lookup would delay the release by that long. So each lookup runs on a thread of
//! its own, the caller waits at most a deadline for all of them, and a name whose
//! previous lookup is still running is not looked up again (it counts as unresolved:
//! its addresses stay, see `isolation_sync::spec_for`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Resolves a name to its addresses (empty: no answer).
pub type ResolveFn = fn(&str) -> Vec<IpAddr>;

/// Bounded, non-piling lookups; clones share the names in flight.
#[derive(Clone)]
pub struct NameLookups {
    resolve: ResolveFn,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for NameLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameLookups")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for NameLookups {
    fn default() -> Self {
        NameLookups::with(|host| super::resolve_hosts(&[host]))
    }
}

impl NameLookups {
    /// With another resolver (tests).
    pub fn with(resolve: ResolveFn) -> Self {
        NameLookups {
            resolve,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Each host's addresses, `None` for a host that gave none within `wait` (or whose
    /// earlier lookup is still running). Literal addresses answer at once.
    pub fn resolve_all(&self, hosts: &[&str], wait: Duration) -> Vec<Option<Vec<IpAddr>>> {
        let deadline = Instant::now() + wait;
        let pending: Vec<Option<mpsc::Receiver<Vec<IpAddr>>>> =
            hosts.iter().map(|host| self.start(host)).collect();
        hosts
            .iter()
            .zip(pending)
            .map(|(host, rx)| {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Some(vec![ip]);
                }
                let rx = rx?;
                let left = deadline.saturating_duration_since(Instant::now());
                rx.recv_timeout(left).ok().filter(|addrs| !addrs.is_empty())
            })
            .collect()
    }

    /// Start looking `host` up, unless it is a literal or already being looked up.
    fn start(&self, host: &str) -> Option<mpsc::Receiver<Vec<IpAddr>>> {
        if host.parse::<IpAddr>().is_ok() {
            return None;
        }
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !in_flight.insert(host.to_string()) {
                return None;
            }
        }
        let (tx, rx) = mpsc::channel();
        let (resolve, in_flight, name) =
            (self.resolve, Arc::clone(&self.in_flight), host.to_string());
        let spawned = std::thread::Builder::new()
            .name("isolation-lookup".into())
            .spawn(move || {
                let addrs = resolve(&name);
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
                // The caller may have stopped waiting: nothing to do then.
                let _ = tx.send(addrs);
            });
        if spawned.is_err() {
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(host);
            return None;
        }
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(host: &str) -> Vec<IpAddr> {
        if host == "slow.test" {
            std::thread::sleep(Duration::from_millis(600));
        }
        vec![IpAddr::from([192, 0, 2, 9])]
    }

    #[test]
    fn a_slow_lookup_is_abandoned_at_the_deadline_and_not_started_twice() {
        let lookups = NameLookups::with(slow);
        let started = Instant::now();
        let got = lookups.resolve_all(
            &["slow.test", "fast.test", "198.51.100.1"],
            Duration::from_millis(100),
        );
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            got,
            vec![
                None,
                Some(vec![IpAddr::from([192, 0, 2, 9])]),
                Some(vec![IpAddr::from([198, 51, 100, 1])])
            ]
        );
        // Still running: not looked up again, so unresolved at once.
        let started = Instant::now();
        assert_eq!(
            lookups.resolve_all(&["slow.test"], Duration::from_millis(100)),
            vec![None]
        );
        assert!(lookups.in_flight.lock().unwrap().contains("slow.test"));
        // Once it finished, the next check starts a new one.
        std::thread::sleep(Duration::from_millis(700).saturating_sub(started.elapsed()));
        assert_eq!(
            lookups.resolve_all(&["slow.test"], Duration::from_secs(2)),
            vec![Some(vec![IpAddr::from([192, 0, 2, 9])])]
        );
    }

    #[test]
    fn an_empty_answer_is_unresolved() {
        let lookups = NameLookups::with(|_| Vec::new());
        assert_eq!(
            lookups.resolve_all(&["nothing.test"], Duration::from_secs(1)),
            vec![None]
        );
    }
}
