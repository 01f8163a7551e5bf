//! One-time enrollment tokens. Only a SHA-256 of each token is stored
//! (`<data dir>/devices/tokens.json`, mode 0600); redeeming removes it, so a token
//! enrolls exactly one device, and expired tokens are refused and pruned.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{devices_dir, now_unix, valid_name, write_atomic, DeviceError};

/// What a token grants the device that redeems it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub user: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix seconds after which the token is refused.
    pub expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    sha256: String,
    #[serde(flatten)]
    grant: TokenGrant,
}

/// The token file. The server and `rampart device token create` both write it, so every
/// operation re-reads the file instead of caching it.
pub struct TokenStore {
    path: PathBuf,
    lock: Mutex<()>,
}

/// Prefix that makes a leaked token recognisable in logs and secret scanners.
const TOKEN_PREFIX: &str = "rmpt_";

impl TokenStore {
    pub fn new(data_dir: &Path) -> Self {
        TokenStore {
            path: devices_dir(data_dir).join("tokens.json"),
            lock: Mutex::new(()),
        }
    }

    /// Creates a token valid for `ttl_secs`; returns it (shown once, never stored).
    pub fn create(
        &self,
        user: Option<&str>,
        groups: &[String],
        ttl_secs: i64,
    ) -> Result<String, DeviceError> {
        if let Some(user) = user {
            if !valid_name(user) {
                return Err(DeviceError::InvalidName {
                    what: "user",
                    value: user.to_string(),
                });
            }
        }
        for group in groups {
            if !valid_name(group) {
                return Err(DeviceError::InvalidName {
                    what: "group",
                    value: group.clone(),
                });
            }
        }
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut tokens = self.read()?;
        tokens.push(StoredToken {
            sha256: digest(&token),
            grant: TokenGrant {
                user: user.map(str::to_string),
                groups: groups.to_vec(),
                expires: now_unix() + ttl_secs,
            },
        });
        self.write(&tokens)?;
        Ok(token)
    }

    /// Consumes `token`: its grant when it exists and has not expired.
    pub fn redeem(&self, token: &str) -> Result<TokenGrant, DeviceError> {
        let wanted = digest(token.trim());
        let now = now_unix();
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut tokens = self.read()?;
        let before = tokens.len();
        let found = tokens
            .iter()
            .position(|t| t.sha256 == wanted)
            .map(|i| tokens.remove(i));
        tokens.retain(|t| t.grant.expires > now);
        if found.is_some() || tokens.len() != before {
            self.write(&tokens)?;
        }
        match found {
            Some(t) if t.grant.expires > now => Ok(t.grant),
            _ => Err(DeviceError::TokenRefused),
        }
    }

    fn read(&self) -> Result<Vec<StoredToken>, DeviceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| DeviceError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(DeviceError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, tokens: &[StoredToken]) -> Result<(), DeviceError> {
        let text = serde_json::to_vec_pretty(tokens).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &text, 0o600)
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_single_use_and_stored_only_as_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let token = store.create(Some("alice"), &["eng".into()], 3600).unwrap();
        let file = std::fs::read_to_string(devices_dir(dir.path()).join("tokens.json")).unwrap();
        assert!(!file.contains(&token));
        let grant = store.redeem(&token).unwrap();
        assert_eq!(grant.user.as_deref(), Some("alice"));
        assert_eq!(grant.groups, vec!["eng".to_string()]);
        assert!(matches!(
            store.redeem(&token),
            Err(DeviceError::TokenRefused)
        ));
    }

    #[test]
    fn expired_and_unknown_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let token = store.create(None, &[], -1).unwrap();
        assert!(matches!(
            store.redeem(&token),
            Err(DeviceError::TokenRefused)
        ));
        assert!(matches!(
            store.redeem("rmpt_nope"),
            Err(DeviceError::TokenRefused)
        ));
    }

    #[test]
    fn names_outside_the_safe_alphabet_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        assert!(matches!(
            store.create(Some("al ice"), &[], 60),
            Err(DeviceError::InvalidName { what: "user", .. })
        ));
        assert!(matches!(
            store.create(None, &["a/b".into()], 60),
            Err(DeviceError::InvalidName { what: "group", .. })
        ));
    }
}
