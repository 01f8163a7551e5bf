//! Where origin TLS sessions are kept for resumption.
//!
//! rustls' own `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server, and
//! a ticket is used once. The gateway opens origin connections to one host from many
//! clients at the same time: with more than 8 handshakes to a host in flight, the pool is
//! empty for the rest and they fall back to full handshakes (measured: 12 concurrent
//! clients, 17 % full; 50, 58 % full), each costing a certificate chain verification and
//! a signature check. This store keeps up to [`TICKETS_PER_SERVER`] tickets per host,
//! within a bound on all tickets together ([`MAX_TICKETS`]), so memory stays bounded
//! whatever the number of hosts. Key-exchange hints and TLS 1.2 sessions are delegated to
//! rustls' cache.
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Tickets kept per origin host: about the number of new connections to one host that
/// can be in their handshake at once.
pub const TICKETS_PER_SERVER: usize = 64;
/// Tickets kept for all hosts together. A ticket with its server's certificate chain is
/// one or two KiB, so this bounds the store to a few MiB.
pub const MAX_TICKETS: usize = 2048;

/// A [`ClientSessionStore`] with deeper per-host ticket pools (see the module docs).
#[derive(Debug)]
pub struct OriginSessionStore {
    other: ClientSessionMemoryCache,
    tickets: Mutex<Tickets<Tls13ClientSessionValue>>,
}

/// The bounded ticket pools, generic over the ticket so the bounds can be tested alone.
#[derive(Debug)]
struct Tickets<T> {
    /// Per host, oldest first, each with its insertion number.
    by_server: HashMap<ServerName<'static>, VecDeque<(u64, T)>>,
    /// Insertion order over all hosts; entries whose ticket was taken are skipped when
    /// they reach the front. At most `2 * MAX_TICKETS` long.
    order: VecDeque<(u64, ServerName<'static>)>,
    live: usize,
    next: u64,
}

impl OriginSessionStore {
    /// A store remembering key-exchange hints and TLS 1.2 sessions for `servers` hosts.
    pub fn new(servers: usize) -> Self {
        OriginSessionStore {
            other: ClientSessionMemoryCache::new(servers),
            tickets: Mutex::new(Tickets::default()),
        }
    }

    /// Tickets currently kept (all hosts).
    pub fn ticket_count(&self) -> usize {
        self.tickets.lock().map(|t| t.live).unwrap_or(0)
    }
}

impl<T> Default for Tickets<T> {
    fn default() -> Self {
        Tickets {
            by_server: HashMap::new(),
            order: VecDeque::new(),
            live: 0,
            next: 0,
        }
    }
}

impl<T> Tickets<T> {
    fn insert(&mut self, server: ServerName<'static>, value: T) {
        let seq = self.next;
        self.next += 1;
        let pool = self.by_server.entry(server.clone()).or_default();
        pool.push_back((seq, value));
        self.live += 1;
        if pool.len() > TICKETS_PER_SERVER {
            pool.pop_front();
            self.live -= 1;
        }
        self.order.push_back((seq, server));
        while self.live > MAX_TICKETS || self.order.len() > 2 * MAX_TICKETS {
            let Some((seq, server)) = self.order.pop_front() else {
                break;
            };
            self.remove(&server, seq);
        }
    }

    /// Drops the ticket `seq` of `server` if it is still kept.
    fn remove(&mut self, server: &ServerName<'static>, seq: u64) {
        let Some(pool) = self.by_server.get_mut(server) else {
            return;
        };
        if let Some(at) = pool.iter().position(|(s, _)| *s == seq) {
            pool.remove(at);
            self.live -= 1;
        }
        if pool.is_empty() {
            self.by_server.remove(server);
        }
    }

    fn take(&mut self, server: &ServerName<'static>) -> Option<T> {
        let pool = self.by_server.get_mut(server)?;
        // The newest ticket: the furthest from its lifetime's end.
        let (_, value) = pool.pop_back()?;
        self.live -= 1;
        if pool.is_empty() {
            self.by_server.remove(server);
        }
        Some(value)
    }
}

impl ClientSessionStore for OriginSessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.other.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.other.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if let Ok(mut tickets) = self.tickets.lock() {
            tickets.insert(server_name, value);
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.tickets.lock().ok()?.take(server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(i: usize) -> ServerName<'static> {
        ServerName::try_from(format!("h{i}.test")).unwrap()
    }

    #[test]
    fn a_host_keeps_at_most_its_share_and_hands_out_the_newest_first() {
        let mut t = Tickets::default();
        for n in 0..TICKETS_PER_SERVER + 10 {
            t.insert(host(0), n);
        }
        assert_eq!(t.live, TICKETS_PER_SERVER);
        assert_eq!(t.take(&host(0)), Some(TICKETS_PER_SERVER + 9));
        assert_eq!(t.take(&host(1)), None);
    }

    #[test]
    fn all_hosts_together_stay_within_the_bound_and_the_oldest_go_first() {
        let mut t = Tickets::default();
        let hosts = 2 * MAX_TICKETS / TICKETS_PER_SERVER;
        for h in 0..hosts {
            for n in 0..TICKETS_PER_SERVER {
                t.insert(host(h), (h, n));
            }
        }
        assert_eq!(t.live, MAX_TICKETS);
        assert!(t.order.len() <= 2 * MAX_TICKETS);
        assert_eq!(t.take(&host(0)), None, "the first hosts were evicted");
        assert_eq!(
            t.take(&host(hosts - 1)),
            Some((hosts - 1, TICKETS_PER_SERVER - 1))
        );
    }

    #[test]
    fn taken_tickets_leave_stale_order_entries_that_are_bounded() {
        let mut t = Tickets::default();
        // One busy host: every ticket is taken right after it arrives.
        for n in 0..10 * MAX_TICKETS {
            t.insert(host(0), n);
            assert_eq!(t.take(&host(0)), Some(n));
        }
        assert_eq!(t.live, 0);
        assert!(t.order.len() <= 2 * MAX_TICKETS);
        // A host that gets more tickets than it uses fills its pool, stale entries or not.
        for n in 0..10 * MAX_TICKETS {
            t.insert(host(0), 2 * n);
            t.insert(host(0), 2 * n + 1);
            t.take(&host(0));
        }
        // Full after the inserts, then one taken.
        assert_eq!(t.live, TICKETS_PER_SERVER - 1);
        assert!(t.order.len() <= 2 * MAX_TICKETS);
    }
}
