//! A bounded LRU cache of minted leaves with single-flight loading: 200 parallel tabs to
//! one new host cause one mint, and everyone gets the same `Arc<CertifiedKey>`.
use crate::ca::CertificateAuthority;
use crate::leaf::LeafNames;
use crate::TlsError;
use rustls::sign::CertifiedKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default number of cached leaves. A cached ECDSA leaf plus its key costs about 2 KiB,
/// so the default bound is roughly 20 MiB.
pub const DEFAULT_LEAF_CACHE_SIZE: u64 = 10_000;
/// A cached leaf is re-minted after this long, well before its 29 remaining days run out.
pub const LEAF_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Minted leaves by [`LeafNames`].
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    cache: moka::future::Cache<LeafNames, Arc<CertifiedKey>>,
    mints: AtomicU64,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("entries", &self.cache.entry_count())
            .field("mints", &self.mints.load(Ordering::Relaxed))
            .finish()
    }
}

impl LeafCache {
    /// A cache holding at most `capacity` leaves (least recently used evicted first).
    pub fn new(ca: Arc<CertificateAuthority>, capacity: u64) -> Self {
        LeafCache {
            ca,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(LEAF_CACHE_TTL)
                .build(),
            mints: AtomicU64::new(0),
        }
    }

    /// The leaf for `names`, minting it on a miss; concurrent misses for the same names
    /// wait for one mint.
    pub async fn get(&self, names: &LeafNames) -> Result<Arc<CertifiedKey>, TlsError> {
        self.cache
            .try_get_with_by_ref(names, async {
                let leaf = self.ca.mint(names)?;
                self.mints.fetch_add(1, Ordering::Relaxed);
                Ok::<_, TlsError>(Arc::new(leaf.certified_key()?))
            })
            .await
            .map_err(TlsError::Shared)
    }

    /// The leaf for a host from SNI or the CONNECT target.
    pub async fn get_for_host(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        self.get(&LeafNames::for_host(host)?).await
    }

    /// How many leaves this cache has minted (misses that reached the CA).
    pub fn minted(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// Current number of cached leaves (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions now (tests and metrics want exact counts).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// The CA leaves are signed with.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CaPaths};

    fn cache(capacity: u64) -> (tempfile::TempDir, Arc<LeafCache>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        (dir, Arc::new(LeafCache::new(Arc::new(ca), capacity)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_hundred_concurrent_requests_for_one_new_host_mint_once() {
        let (_dir, cache) = cache(100);
        let barrier = Arc::new(tokio::sync::Barrier::new(200));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let cache = cache.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.get_for_host("new-host.example").await.unwrap()
                })
            })
            .collect();
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await.unwrap());
        }
        assert_eq!(cache.minted(), 1);
        assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
    }

    #[tokio::test]
    async fn distinct_hosts_get_distinct_leaves_and_hits_do_not_mint() {
        let (_dir, cache) = cache(100);
        let a = cache.get_for_host("a.example").await.unwrap();
        let b = cache.get_for_host("b.example").await.unwrap();
        let a2 = cache.get_for_host("A.EXAMPLE.").await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(cache.minted(), 2);
    }

    #[tokio::test]
    async fn cache_stays_within_its_bound() {
        let (_dir, cache) = cache(50);
        for i in 0..300 {
            cache.get_for_host(&format!("h{i}.example")).await.unwrap();
        }
        cache.run_pending_tasks().await;
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
        assert_eq!(cache.minted(), 300);
    }

    #[tokio::test]
    async fn invalid_host_is_an_error_not_a_mint() {
        let (_dir, cache) = cache(10);
        assert!(cache.get_for_host("bad host").await.is_err());
        assert_eq!(cache.minted(), 0);
    }
}
