//! Verified proxy credentials, remembered for a short time (Squid's
//! `authenticate_ttl` idea) so a logged-in client pays one Argon2
//! verification per `auth_cache_ttl` instead of one per connection.
//!
//! Entries are keyed by HMAC-SHA256 of the source address and the
//! `Proxy-Authorization` value under a random key made at process start: the
//! cache never holds a password or anything an offline attack could use, and
//! an entry only admits the address that logged in, so the cache cannot be
//! used to test guesses past the failed-login limit from elsewhere. Each entry
//! carries the fingerprint of the user list it was verified against; a reload
//! that changes users, passwords, groups or tokens makes every older entry miss.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::admission::User;

/// Logged-in clients remembered at most.
const CAPACITY: u64 = 100_000;

pub type CredentialDigest = [u8; 32];

#[derive(Clone)]
struct Entry {
    user: Arc<User>,
    fingerprint: [u8; 32],
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<CredentialDigest, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CredentialDigest,
        value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct CredentialCache {
    key: [u8; 32],
    entries: moka::sync::Cache<CredentialDigest, Entry>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self::new()
    }
}

impl CredentialCache {
    pub fn new() -> Self {
        use rand_core::RngCore;
        let mut key = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut key);
        CredentialCache {
            key,
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// The cache key of `authorization` presented from `source`.
    pub fn digest(&self, source: IpAddr, authorization: &[u8]) -> CredentialDigest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        match source {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        // A separator keeps (address, value) pairs unambiguous across families.
        mac.update(&[0]);
        mac.update(authorization);
        mac.finalize().into_bytes().into()
    }

    /// The user `digest` was verified as, if it was within its TTL and against
    /// the user list whose fingerprint is `fingerprint`.
    pub fn get(&self, digest: &CredentialDigest, fingerprint: &[u8; 32]) -> Option<Arc<User>> {
        let entry = self.entries.get(digest)?;
        if entry.fingerprint != *fingerprint {
            self.entries.invalidate(digest);
            return None;
        }
        Some(entry.user)
    }

    pub fn insert(
        &self,
        digest: CredentialDigest,
        user: Arc<User>,
        fingerprint: [u8; 32],
        ttl: Duration,
    ) {
        if ttl.is_zero() {
            return;
        }
        self.entries.insert(
            digest,
            Entry {
                user,
                fingerprint,
                ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Arc<User> {
        Arc::new(User {
            name: "alice".into(),
            groups: vec![],
        })
    }

    #[test]
    fn entry_admits_only_its_source_and_its_user_list() {
        let cache = CredentialCache::new();
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let there: IpAddr = "192.0.2.2".parse().unwrap();
        let digest = cache.digest(here, b"Basic YWxpY2U6cw==");
        cache.insert(digest, alice(), [1; 32], Duration::from_secs(60));
        assert_eq!(cache.get(&digest, &[1; 32]).unwrap().name, "alice");
        assert!(cache
            .get(&cache.digest(there, b"Basic YWxpY2U6cw=="), &[1; 32])
            .is_none());
        // The user list changed on reload: the entry no longer counts.
        assert!(cache.get(&digest, &[2; 32]).is_none());
        assert!(cache.get(&digest, &[1; 32]).is_none());
    }

    #[test]
    fn digests_depend_on_the_process_key() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (a, b) = (CredentialCache::new(), CredentialCache::new());
        assert_ne!(a.digest(ip, b"x"), b.digest(ip, b"x"));
        assert_eq!(a.digest(ip, b"x"), a.digest(ip, b"x"));
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let cache = CredentialCache::new();
        let digest = cache.digest("192.0.2.1".parse().unwrap(), b"x");
        cache.insert(digest, alice(), [1; 32], Duration::ZERO);
        assert!(cache.get(&digest, &[1; 32]).is_none());
    }
}
