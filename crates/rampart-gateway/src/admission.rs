//! Admission: who may use the proxy. A source-network ACL checked when a
//! connection arrives, and `Proxy-Authorization` (Basic with Argon2 password
//! hashes, or Bearer tokens stored as SHA-256 digests) checked per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::Engine;
use http::HeaderValue;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::ProxyConfig;
use crate::error::ConfigError;

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
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "proxy authentication required",
            AuthFailure::Malformed => "malformed Proxy-Authorization header",
            AuthFailure::Rejected => "invalid proxy credentials",
        }
    }
}

struct StoredUser {
    phc: String,
    groups: Vec<String>,
}

/// Compiled admission rules of one configuration generation.
pub struct Admission {
    networks: Vec<IpNet>,
    users: HashMap<String, StoredUser>,
    tokens: HashMap<[u8; 32], User>,
    /// Successful verifications keyed by the SHA-256 of the header value, so a
    /// keep-alive client does not pay an Argon2 verification per request.
    verified: moka::sync::Cache<[u8; 32], Arc<User>>,
}

impl Admission {
    pub fn new(config: &ProxyConfig) -> Result<Self, ConfigError> {
        let mut users = HashMap::new();
        for user in &config.users {
            PasswordHash::new(&user.password_hash).map_err(|e| ConfigError::Invalid {
                key: format!("proxy.users[{}].password_hash", user.name),
                reason: format!(
                    "not an Argon2 PHC hash ({e}); create one with `rampart hash-password`"
                ),
            })?;
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
            tokens.insert(
                digest,
                User {
                    name: token.name.clone(),
                    groups: token.groups.clone(),
                },
            );
        }
        Ok(Admission {
            networks: config.allow_networks.clone(),
            users,
            tokens,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
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

    /// Checks `Proxy-Authorization`. `Ok(None)` when no authentication is configured.
    pub fn authenticate(
        &self,
        header: Option<&HeaderValue>,
    ) -> Result<Option<Arc<User>>, AuthFailure> {
        if !self.requires_authentication() {
            return Ok(None);
        }
        let header = header.ok_or(AuthFailure::Missing)?;
        let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        if let Some(user) = self.verified.get(&key) {
            return Ok(Some(user));
        }
        let value = header.to_str().map_err(|_| AuthFailure::Malformed)?;
        let (scheme, credentials) = value.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
        let user = if scheme.eq_ignore_ascii_case("basic") {
            self.verify_basic(credentials.trim())?
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let digest: [u8; 32] = Sha256::digest(credentials.trim().as_bytes()).into();
            self.tokens
                .get(&digest)
                .cloned()
                .ok_or(AuthFailure::Rejected)?
        } else {
            return Err(AuthFailure::Malformed);
        };
        let user = Arc::new(user);
        self.verified.insert(key, user.clone());
        Ok(Some(user))
    }

    fn verify_basic(&self, encoded: &str) -> Result<User, AuthFailure> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthFailure::Malformed)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthFailure::Malformed)?;
        let (name, password) = decoded.split_once(':').ok_or(AuthFailure::Malformed)?;
        let stored = self.users.get(name).ok_or(AuthFailure::Rejected)?;
        let hash = PasswordHash::new(&stored.phc).map_err(|_| AuthFailure::Rejected)?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| AuthFailure::Rejected)?;
        Ok(User {
            name: name.to_string(),
            groups: stored.groups.clone(),
        })
    }
}

/// Hashes a password into an Argon2id PHC string for `[[proxy.users]]`.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
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

    #[test]
    fn basic_auth_accepts_right_password_and_rejects_wrong_one() {
        let admission = Admission::new(&config_with_user("s3cret")).unwrap();
        let user = admission
            .authenticate(Some(&basic("alice", "s3cret")))
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["engineering".to_string()]);
        assert_eq!(
            admission.authenticate(Some(&basic("alice", "nope"))),
            Err(AuthFailure::Rejected)
        );
        assert_eq!(
            admission.authenticate(Some(&basic("bob", "s3cret"))),
            Err(AuthFailure::Rejected)
        );
        assert_eq!(admission.authenticate(None), Err(AuthFailure::Missing));
        let garbage = HeaderValue::from_static("Basic !!!");
        assert_eq!(
            admission.authenticate(Some(&garbage)),
            Err(AuthFailure::Malformed)
        );
    }

    #[test]
    fn bearer_token_is_matched_by_digest() {
        let admission = Admission::new(&config_with_user("x")).unwrap();
        let ok = HeaderValue::from_static("Bearer tok-123");
        assert_eq!(
            admission.authenticate(Some(&ok)).unwrap().unwrap().name,
            "ci-bot"
        );
        let bad = HeaderValue::from_static("Bearer tok-124");
        assert_eq!(
            admission.authenticate(Some(&bad)),
            Err(AuthFailure::Rejected)
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
