//! Admission: who may use the proxy. A source-network ACL checked when a
//! connection arrives, and `Proxy-Authorization` (Basic with Argon2 password
//! hashes, or Bearer tokens stored as SHA-256 digests) checked per request.
//!
//! Logins are guarded against abuse ([`Logins`], shared by every
//! configuration generation): verified credentials are cached by a keyed
//! digest, failures are limited per source and per user name with backoff,
//! Argon2 runs on the blocking pool under a small concurrency limit, and an
//! unknown user name is verified against a dummy hash made with the same
//! parameters so that it costs as much as a wrong password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use http::HeaderValue;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::auth_limiter::{BackoffPolicy, FailureLimiter, LimitKey};
use crate::config::ProxyConfig;
use crate::credential_cache::CredentialCache;
use crate::error::ConfigError;
use crate::metrics::Metrics;

/// The authenticated principal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Proxy-Authorization` header while authentication is required.
    Missing,
    /// A scheme other than Basic or Bearer, or an undecodable value.
    Malformed,
    /// Unknown user, wrong password or unknown token.
    Rejected,
    /// Too many failed logins from this source or for this user name.
    Throttled,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "proxy authentication required",
            AuthFailure::Malformed => "malformed Proxy-Authorization header",
            AuthFailure::Rejected => "invalid proxy credentials",
            AuthFailure::Throttled => "too many failed logins, retry later",
        }
    }
}

/// A refused login: why, and when the client may try again (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub failure: AuthFailure,
    pub retry_after: Option<Duration>,
}

impl Denied {
    fn now(failure: AuthFailure) -> Self {
        Denied {
            failure,
            retry_after: None,
        }
    }

    /// `Retry-After` in whole seconds, rounded up (RFC 9110 §10.2.3).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }
}

/// Login state of the whole process, kept across configuration reloads.
pub struct Logins {
    limiter: FailureLimiter,
    cache: CredentialCache,
    /// Bounds Argon2 work (each verification takes ~20 ms of CPU and ~19 MiB).
    verifications: Arc<Semaphore>,
    /// Argon2 working memory, one buffer per permit, reused: allocating 19 MiB
    /// per verification on whichever blocking thread runs it leaves that much in
    /// every thread's malloc arena (hundreds of MiB under a flood) and costs
    /// page faults that would make verifications' durations uneven.
    memory: Arc<std::sync::Mutex<Vec<Vec<argon2::Block>>>>,
    metrics: Arc<Metrics>,
}

impl Logins {
    /// `concurrency` Argon2 verifications at once; 0 means half the CPUs, at least one,
    /// so the async workers always keep a core for the data path.
    pub fn new(concurrency: usize, metrics: Arc<Metrics>) -> Self {
        let permits = if concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1)
        } else {
            concurrency
        };
        Logins {
            limiter: FailureLimiter::new(),
            cache: CredentialCache::new(),
            verifications: Arc::new(Semaphore::new(permits)),
            memory: Arc::default(),
            metrics,
        }
    }

    fn failure(&self, reason: &'static str) {
        self.metrics.auth_failure(reason);
    }
}

struct StoredUser {
    phc: String,
    groups: Vec<String>,
}

/// Decoded `Proxy-Authorization` credentials.
enum Credentials {
    Basic { name: String, password: String },
    Bearer([u8; 32]),
}

/// Compiled admission rules of one configuration generation.
pub struct Admission {
    networks: Vec<IpNet>,
    users: HashMap<String, StoredUser>,
    tokens: HashMap<[u8; 32], User>,
    /// A hash of a random password with the users' Argon2 parameters: unknown
    /// user names are verified against it so they cost what a known one costs.
    dummy_phc: Option<String>,
    /// Digest of the users and tokens; cached logins of another list do not count.
    fingerprint: [u8; 32],
    cache_ttl: Duration,
    backoff: BackoffPolicy,
}

impl Admission {
    pub fn new(config: &ProxyConfig) -> Result<Self, ConfigError> {
        let mut users = HashMap::new();
        let mut fingerprint = Sha256::new();
        for user in &config.users {
            PasswordHash::new(&user.password_hash).map_err(|e| ConfigError::Invalid {
                key: format!("proxy.users[{}].password_hash", user.name),
                reason: format!(
                    "not an Argon2 PHC hash ({e}); create one with `rampart hash-password`"
                ),
            })?;
            for part in [&user.name, &user.password_hash]
                .into_iter()
                .chain(&user.groups)
            {
                fingerprint.update((part.len() as u64).to_le_bytes());
                fingerprint.update(part.as_bytes());
            }
            if users
                .insert(
                    user.name.clone(),
                    StoredUser {
                        phc: user.password_hash.clone(),
                        groups: user.groups.clone(),
                    },
                )
                .is_some()
            {
                return Err(ConfigError::Invalid {
                    key: "proxy.users".into(),
                    reason: format!("user {:?} is listed twice", user.name),
                });
            }
        }
        let mut tokens = HashMap::new();
        for token in &config.tokens {
            let digest = decode_sha256_hex(&token.sha256).ok_or_else(|| ConfigError::Invalid {
                key: format!("proxy.tokens[{}].sha256", token.name),
                reason: "expected 64 hex digits (printf %s TOKEN | sha256sum)".into(),
            })?;
            for part in [&token.name, &token.sha256]
                .into_iter()
                .chain(&token.groups)
            {
                fingerprint.update((part.len() as u64).to_le_bytes());
                fingerprint.update(part.as_bytes());
            }
            tokens.insert(
                digest,
                User {
                    name: token.name.clone(),
                    groups: token.groups.clone(),
                },
            );
        }
        let dummy_phc =
            match config.users.first() {
                Some(user) => Some(dummy_hash_like(&user.password_hash).map_err(|e| {
                    ConfigError::Invalid {
                        key: format!("proxy.users[{}].password_hash", user.name),
                        reason: format!("unusable Argon2 parameters: {e}"),
                    }
                })?),
                None => None,
            };
        Ok(Admission {
            networks: config.allow_networks.clone(),
            users,
            tokens,
            dummy_phc,
            fingerprint: fingerprint.finalize().into(),
            cache_ttl: config.auth_cache_ttl,
            backoff: BackoffPolicy {
                max_failures: config.auth_max_failures,
                initial: config.auth_backoff,
                max: config.auth_backoff_max,
                window: config.auth_failure_window,
            },
        })
    }

    /// Whether a connection from `source` may use the proxy at all.
    pub fn source_allowed(&self, source: IpAddr) -> bool {
        let source = canonical_ip(source);
        self.networks.is_empty() || self.networks.iter().any(|net| net.contains(&source))
    }

    pub fn requires_authentication(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }

    /// Checks `Proxy-Authorization` from `source`. `Ok(None)` when no
    /// authentication is configured.
    pub async fn authenticate(
        &self,
        logins: &Logins,
        source: IpAddr,
        header: Option<&HeaderValue>,
    ) -> Result<Option<Arc<User>>, Denied> {
        if !self.requires_authentication() {
            return Ok(None);
        }
        let Some(header) = header else {
            // The first request of most clients: not an attack, not limited.
            logins.failure("missing");
            return Err(Denied::now(AuthFailure::Missing));
        };
        let source = canonical_ip(source);
        let digest = logins.cache.digest(source, header.as_bytes());
        if let Some(user) = logins.cache.get(&digest, &self.fingerprint) {
            return Ok(Some(user));
        }
        let source_key = LimitKey::Source(limit_scope(source));
        let now = Instant::now();
        if let Some(wait) = logins.limiter.blocked(&source_key, now) {
            return Err(throttled(logins, &source_key, wait));
        }
        let credentials = match parse(header) {
            Some(credentials) => credentials,
            None => {
                logins.failure("malformed");
                let retry_after = logins
                    .limiter
                    .record_failure(source_key, &self.backoff, now);
                return Err(Denied {
                    failure: AuthFailure::Malformed,
                    retry_after,
                });
            }
        };
        // Held until the outcome is recorded, so the next queued guess sees it.
        let mut held_permit = None;
        let (verified, user_key) = match credentials {
            Credentials::Bearer(token) => {
                let user = self.tokens.get(&token).cloned();
                if user.is_none() {
                    logins.failure("unknown_token");
                }
                (user, None)
            }
            Credentials::Basic { name, password } => {
                let user_key = LimitKey::User(Arc::from(name.as_str()));
                if let Some(wait) = logins.limiter.blocked(&user_key, now) {
                    return Err(throttled(logins, &user_key, wait));
                }
                let Ok(permit) = logins.verifications.clone().acquire_owned().await else {
                    // The semaphore is never closed; refuse rather than verify unbounded.
                    return Err(Denied::now(AuthFailure::Rejected));
                };
                // Checked again after the wait: guesses queued behind the permit
                // before a backoff began must not all be verified anyway.
                let now = Instant::now();
                for key in [&source_key, &user_key] {
                    if let Some(wait) = logins.limiter.blocked(key, now) {
                        return Err(throttled(logins, key, wait));
                    }
                }
                let (user, returned) = self.verify_basic(logins, permit, name, password).await;
                held_permit = returned;
                (user, Some(user_key))
            }
        };
        match verified {
            Some(user) => {
                if let Some(user_key) = &user_key {
                    logins.limiter.forget(user_key);
                }
                let user = Arc::new(user);
                logins
                    .cache
                    .insert(digest, user.clone(), self.fingerprint, self.cache_ttl);
                Ok(Some(user))
            }
            None => {
                let now = Instant::now();
                let mut retry_after = logins
                    .limiter
                    .record_failure(source_key, &self.backoff, now);
                if let Some(user_key) = user_key {
                    let user_wait = logins.limiter.record_failure(user_key, &self.backoff, now);
                    retry_after = retry_after.max(user_wait);
                }
                drop(held_permit);
                Err(Denied {
                    failure: AuthFailure::Rejected,
                    retry_after,
                })
            }
        }
    }

    /// Verifies a Basic login on the blocking pool, never on an async worker,
    /// and gives `permit` back (unless the task failed). Known and unknown
    /// names take the same path and cost the same.
    async fn verify_basic(
        &self,
        logins: &Logins,
        permit: tokio::sync::OwnedSemaphorePermit,
        name: String,
        password: String,
    ) -> (Option<User>, Option<tokio::sync::OwnedSemaphorePermit>) {
        let stored = self.users.get(&name);
        let phc = match (stored, &self.dummy_phc) {
            (Some(stored), _) => stored.phc.clone(),
            (None, Some(dummy)) => dummy.clone(),
            // Tokens only: no hash to compare against and no name to protect.
            (None, None) => {
                logins.failure("unknown_user");
                return (None, Some(permit));
            }
        };
        let memory = logins.memory.clone();
        // The task owns the permit while Argon2 runs, even if this request is
        // cancelled meanwhile: the concurrency bound holds.
        let (matched, permit) = tokio::task::spawn_blocking(move || {
            // At most one buffer per permit exists: the semaphore bounds the takers.
            let mut blocks = lock(&memory).pop().unwrap_or_default();
            let matched = verify_with_memory(&phc, password.as_bytes(), &mut blocks);
            lock(&memory).push(blocks);
            (matched, Some(permit))
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "password verification task failed");
            (false, None)
        });
        let user = match stored {
            Some(stored) if matched => Some(User {
                name,
                groups: stored.groups.clone(),
            }),
            Some(_) => {
                logins.failure("wrong_password");
                None
            }
            None => {
                logins.failure("unknown_user");
                None
            }
        };
        (user, permit)
    }
}

/// What failed logins are counted against for a source: the IPv4 address, or
/// the IPv6 /64 (one host usually holds a whole /64, so rotating addresses
/// inside it must not reset the count).
fn limit_scope(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `password` matches the Argon2 PHC string `phc`, computed in
/// `blocks` (grown to the hash's memory cost if needed, then kept for reuse).
fn verify_with_memory(phc: &str, password: &[u8], blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let Some(expected) = hash.hash else {
        return false;
    };
    let argon2 = match argon2_of(&hash) {
        Ok(argon2) => argon2,
        Err(_) => return false,
    };
    let Some(salt) = hash.salt else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let needed = argon2.params().block_count();
    if blocks.len() < needed {
        blocks.resize(needed, argon2::Block::default());
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    if argon2
        .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(out).is_ok_and(|computed| computed == expected)
}

/// An Argon2 context with `hash`'s algorithm, version and parameters.
fn argon2_of(hash: &PasswordHash<'_>) -> Result<Argon2<'static>, argon2::password_hash::Error> {
    let algorithm = argon2::Algorithm::try_from(hash.algorithm)?;
    let version = match hash.version {
        Some(v) => argon2::Version::try_from(v)?,
        None => argon2::Version::default(),
    };
    let params = argon2::Params::try_from(hash)?;
    Ok(Argon2::new(algorithm, version, params))
}

fn throttled(logins: &Logins, key: &LimitKey, wait: Duration) -> Denied {
    logins.metrics.auth_throttled(key.scope());
    Denied {
        failure: AuthFailure::Throttled,
        retry_after: Some(wait),
    }
}

fn parse(header: &HeaderValue) -> Option<Credentials> {
    let value = header.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (name, password) = decoded.split_once(':')?;
        Some(Credentials::Basic {
            name: name.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Credentials::Bearer(
            Sha256::digest(credentials.as_bytes()).into(),
        ))
    } else {
        None
    }
}

/// An Argon2 hash of a random password with the algorithm, version and
/// parameters of `phc`, so verifying against it costs what verifying against
/// `phc` costs.
fn dummy_hash_like(phc: &str) -> Result<String, argon2::password_hash::Error> {
    use rand_core::{OsRng, RngCore};
    let argon2 = argon2_of(&PasswordHash::new(phc)?)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2.hash_password(&secret, &salt)?.to_string())
}

/// Hashes a password into an Argon2id PHC string for `[[proxy.users]]`.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// IPv4-mapped IPv6 sources (dual-stack listeners) are matched as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn decode_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProxyToken, ProxyUser};

    fn config_with_user(password: &str) -> ProxyConfig {
        ProxyConfig {
            users: vec![ProxyUser {
                name: "alice".into(),
                password_hash: hash_password(password).unwrap(),
                groups: vec!["engineering".into()],
            }],
            tokens: vec![ProxyToken {
                name: "ci-bot".into(),
                sha256: hex::encode(Sha256::digest(b"tok-123")),
                groups: vec![],
            }],
            ..ProxyConfig::default()
        }
    }

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    fn logins() -> Logins {
        Logins::new(1, Arc::new(Metrics::new()))
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

    fn failure(result: Result<Option<Arc<User>>, Denied>) -> AuthFailure {
        result.unwrap_err().failure
    }

    #[tokio::test]
    async fn basic_auth_accepts_right_password_and_rejects_wrong_one() {
        let admission = Admission::new(&config_with_user("s3cret")).unwrap();
        let logins = logins();
        let user = admission
            .authenticate(&logins, CLIENT, Some(&basic("alice", "s3cret")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["engineering".to_string()]);
        let wrong = admission
            .authenticate(&logins, CLIENT, Some(&basic("alice", "nope")))
            .await;
        assert_eq!(failure(wrong), AuthFailure::Rejected);
        let unknown = admission
            .authenticate(&logins, CLIENT, Some(&basic("bob", "s3cret")))
            .await;
        assert_eq!(failure(unknown), AuthFailure::Rejected);
        let missing = admission.authenticate(&logins, CLIENT, None).await;
        assert_eq!(failure(missing), AuthFailure::Missing);
        let garbage = HeaderValue::from_static("Basic !!!");
        let garbage = admission
            .authenticate(&logins, CLIENT, Some(&garbage))
            .await;
        assert_eq!(failure(garbage), AuthFailure::Malformed);
    }

    #[tokio::test]
    async fn bearer_token_is_matched_by_digest() {
        let admission = Admission::new(&config_with_user("x")).unwrap();
        let logins = logins();
        let ok = HeaderValue::from_static("Bearer tok-123");
        let user = admission
            .authenticate(&logins, CLIENT, Some(&ok))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "ci-bot");
        let bad = HeaderValue::from_static("Bearer tok-124");
        let bad = admission.authenticate(&logins, CLIENT, Some(&bad)).await;
        assert_eq!(failure(bad), AuthFailure::Rejected);
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_with_retry_after_then_released() {
        let mut config = config_with_user("s3cret");
        config.auth_max_failures = 2;
        config.auth_backoff = Duration::from_millis(300);
        let admission = Admission::new(&config).unwrap();
        let logins = logins();
        let wrong = basic("alice", "nope");
        let first = admission
            .authenticate(&logins, CLIENT, Some(&wrong))
            .await
            .unwrap_err();
        assert_eq!(first.retry_after, None);
        let second = admission
            .authenticate(&logins, CLIENT, Some(&wrong))
            .await
            .unwrap_err();
        assert_eq!(second.failure, AuthFailure::Rejected);
        assert_eq!(second.retry_after_secs(), Some(1));
        // Even the right password waits out the backoff: no oracle while throttled.
        let right = basic("alice", "s3cret");
        let throttled = admission
            .authenticate(&logins, CLIENT, Some(&right))
            .await
            .unwrap_err();
        assert_eq!(throttled.failure, AuthFailure::Throttled);
        // The user name is throttled from other sources too.
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 99));
        let other = admission
            .authenticate(&logins, elsewhere, Some(&right))
            .await;
        assert_eq!(failure(other), AuthFailure::Throttled);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let user = admission
            .authenticate(&logins, CLIENT, Some(&right))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "alice");
    }

    #[tokio::test]
    async fn guesses_queued_before_the_backoff_began_are_not_verified() {
        let mut config = config_with_user("s3cret");
        config.auth_max_failures = 2;
        config.auth_backoff = Duration::from_secs(60);
        let admission = Arc::new(Admission::new(&config).unwrap());
        let logins = Arc::new(logins());
        let guesses: Vec<_> = (0..8)
            .map(|i| {
                let (admission, logins) = (admission.clone(), logins.clone());
                tokio::spawn(async move {
                    let guess = basic("alice", &format!("guess{i}"));
                    admission
                        .authenticate(&logins, CLIENT, Some(&guess))
                        .await
                        .unwrap_err()
                        .failure
                })
            })
            .collect();
        let mut verified = 0;
        for guess in guesses {
            if guess.await.unwrap() == AuthFailure::Rejected {
                verified += 1;
            }
        }
        // One permit: the third guess to get it already sees the backoff.
        assert_eq!(verified, 2);
    }

    #[tokio::test]
    async fn cached_login_survives_an_attack_on_its_user_name_but_not_a_user_list_change() {
        let mut config = config_with_user("s3cret");
        config.auth_max_failures = 1;
        let admission = Admission::new(&config).unwrap();
        let logins = logins();
        let right = basic("alice", "s3cret");
        assert!(admission
            .authenticate(&logins, CLIENT, Some(&right))
            .await
            .is_ok());
        let attacker = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        let _ = admission
            .authenticate(&logins, attacker, Some(&basic("alice", "guess")))
            .await;
        // alice's name is now throttled, but her verified client keeps working.
        assert!(admission
            .authenticate(&logins, CLIENT, Some(&right))
            .await
            .is_ok());
        // The attacker cannot test guesses against the cache from its address.
        let guess = admission
            .authenticate(&logins, attacker, Some(&right))
            .await;
        assert_eq!(failure(guess), AuthFailure::Throttled);
        // A reload with another password hash invalidates the cached login.
        let changed = Admission::new(&config_with_user("n3w")).unwrap();
        let stale = changed.authenticate(&logins, CLIENT, Some(&right)).await;
        assert_eq!(failure(stale), AuthFailure::Throttled);
    }

    #[test]
    fn verification_with_reused_memory_matches_the_library_verifier() {
        let phc = hash_password("s3cret").unwrap();
        let mut blocks = Vec::new();
        assert!(verify_with_memory(&phc, b"s3cret", &mut blocks));
        assert!(!verify_with_memory(&phc, b"s3cres", &mut blocks));
        assert!(!verify_with_memory(&phc, b"", &mut blocks));
        let small = "$argon2id$v=19$m=8192,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$\
                     xBzZ/4mfgAFEuFzd/AKtHiJiKbL96B7Q4Lk+tmYE5wo";
        assert!(!verify_with_memory(small, b"s3cret", &mut blocks));
        assert!(verify_with_memory(&phc, b"s3cret", &mut blocks));
        assert!(!verify_with_memory("not a hash", b"s3cret", &mut blocks));
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_scope(a), limit_scope(b));
        assert_ne!(limit_scope(a), limit_scope(c));
        assert_eq!(limit_scope(CLIENT), CLIENT);
    }

    #[test]
    fn dummy_hash_has_the_users_parameters() {
        let phc = "$argon2id$v=19$m=8192,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$\
                   xBzZ/4mfgAFEuFzd/AKtHiJiKbL96B7Q4Lk+tmYE5wo";
        let dummy = dummy_hash_like(phc).unwrap();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=8192,t=3,p=1$"),
            "{dummy}"
        );
    }

    #[test]
    fn plain_text_password_in_config_is_refused() {
        let mut cfg = config_with_user("x");
        cfg.users[0].password_hash = "hunter2".into();
        let err = Admission::new(&cfg).err().unwrap().to_string();
        assert!(err.contains("rampart hash-password"), "{err}");
    }

    #[test]
    fn network_acl_matches_mapped_ipv4() {
        let cfg = ProxyConfig {
            allow_networks: vec!["10.1.0.0/16".parse().unwrap()],
            ..ProxyConfig::default()
        };
        let admission = Admission::new(&cfg).unwrap();
        assert!(admission.source_allowed("10.1.2.3".parse().unwrap()));
        assert!(admission.source_allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!admission.source_allowed("10.2.0.1".parse().unwrap()));
    }
}
