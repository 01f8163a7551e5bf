//! Scoped API tokens: `<data dir>/api-tokens.json` (mode 0600), written by
//! `rampart token create|revoke` on the server's machine and by the API's
//! `/api/v1/tokens` routes ([`routes`]), both through this one [`TokenStore`], and
//! read by the server on every API call, so a revoked token fails at once, without a
//! restart.
//!
//! Only a SHA-256 of each secret is stored; the secret is shown once, at creation.
//! A revoked token stays in the file with its revocation time (it never
//! authenticates again), so revoking it twice answers what it is instead of "unknown".
//! The data dir's `admin.token` keeps working as a token of scope `admin`; it is not
//! in the store and cannot be revoked (rotate the file instead).

pub mod routes;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the token store inside the data dir.
pub const TOKENS_FILE: &str = "api-tokens.json";

/// Start of every scoped token: never a `-` (a shell would take `--token "$T"` for an
/// option), and recognisable to secret scanners.
pub const TOKEN_PREFIX: &str = "rmps_";

/// The principal name of the data dir's `admin.token`.
pub const ADMIN_FILE_TOKEN: &str = "admin.token";

/// What a token may do on the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every route.
    Admin,
    /// Reads only (`GET`/`HEAD`): events, alerts, devices, isolation state, policy status.
    Analyst,
    /// Only `POST /api/v1/devices/tokens` (one-time enrollment tokens), for a
    /// provisioning system.
    Enroll,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Analyst => "analyst",
            Scope::Enroll => "enroll",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, TokenError> {
        match text {
            "admin" => Ok(Scope::Admin),
            "analyst" => Ok(Scope::Analyst),
            "enroll" => Ok(Scope::Enroll),
            other => Err(TokenError::UnknownScope(other.to_string())),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown scope {0:?}: use admin, analyst or enroll")]
    UnknownScope(String),
    #[error("token name {0:?} is not allowed: 1 to 64 letters, digits, '.', '_' or '-', not starting with '-'")]
    InvalidName(String),
    #[error("a token named {0:?} exists already; pick another --name or revoke it first")]
    NameTaken(String),
    #[error("no token with id or name {0:?} (see `rampart token list`)")]
    NotFound(String),
    #[error("the name {ADMIN_FILE_TOKEN:?} belongs to the data dir's admin token file; pick another --name")]
    ReservedName,
    #[error("the data dir's {ADMIN_FILE_TOKEN} is not a scoped token and cannot be revoked: rotate it instead (remove DATA_DIR/{ADMIN_FILE_TOKEN} and restart the server, which writes a new one)")]
    AdminFile,
    #[error("{path}: mode {mode:o} lets other users read the API tokens; run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; a revoked token never authenticates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<i64>,
}

impl TokenRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_some()
    }

    /// What may be shown of it (`token list`, the API): never the hash.
    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id.clone(),
            name: self.name.clone(),
            scope: self.scope,
            created: rampart_events::render::time_text(self.created * 1000),
            revoked: self
                .revoked
                .map(|at| rampart_events::render::time_text(at * 1000)),
        }
    }
}

/// A token as `rampart token list` and `GET /api/v1/tokens` show it: no secret, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// RFC 3339, UTC.
    pub created: String,
    /// RFC 3339, UTC; absent while the token is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// The answer of `GET /api/v1/tokens`, and of `rampart token list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
    /// Whether the data dir holds an `admin.token` (always, on a running server).
    pub admin_token_file: bool,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub record: TokenRecord,
    /// `false` when the token was revoked already (the first revocation time is kept).
    pub changed: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// Who made an API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`admin.token` for the data dir's admin token).
    pub name: String,
    pub scope: Scope,
}

/// What identifies a version of the file: a rewrite (atomic rename) changes the inode,
/// an edit in place the modification time or the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

/// The token store of a data dir. Reads go through a cache checked against the file's
/// stamp on every call (one `stat`), so revocations by another process apply at once.
pub struct TokenStore {
    path: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<Vec<TokenRecord>>)>>,
    write_lock: Mutex<()>,
}

impl TokenStore {
    pub fn new(data_dir: &Path) -> TokenStore {
        TokenStore {
            path: data_dir.join(TOKENS_FILE),
            cache: Mutex::new(None),
            write_lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens now in the file (none when it does not exist).
    pub fn list(&self) -> Result<Arc<Vec<TokenRecord>>, TokenError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *lock(&self.cache) = None;
                return Ok(Arc::new(Vec::new()));
            }
            Err(source) => {
                return Err(TokenError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Permissions {
                path: self.path.clone(),
                mode,
            });
        }
        let stamp = Stamp {
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            len: meta.len(),
        };
        if let Some((cached, tokens)) = lock(&self.cache).as_ref() {
            if *cached == stamp {
                return Ok(tokens.clone());
            }
        }
        let tokens = Arc::new(self.read()?.tokens);
        *lock(&self.cache) = Some((stamp, tokens.clone()));
        Ok(tokens)
    }

    /// The principal whose secret is `given`, if any.
    pub fn authenticate(&self, given: &str) -> Result<Option<Principal>, TokenError> {
        let wanted = digest(given);
        Ok(self
            .list()?
            .iter()
            .filter(|t| !t.is_revoked())
            .find_map(|t| {
                rampart_events::token::matches(&t.sha256, &wanted).then(|| Principal {
                    name: t.name.clone(),
                    scope: t.scope,
                })
            }))
    }

    /// Creates a token; returns its record and its secret (shown once, never stored).
    pub fn create(
        &self,
        scope: Scope,
        name: Option<&str>,
    ) -> Result<(TokenRecord, String), TokenError> {
        let mut id_bytes = [0u8; 6];
        rand::rng().fill_bytes(&mut id_bytes);
        let id = format!("tok_{}", hex::encode(id_bytes));
        let name = name.unwrap_or(&id).to_string();
        if !valid_name(&name) {
            return Err(TokenError::InvalidName(name));
        }
        if name == ADMIN_FILE_TOKEN {
            // Audit events name the admin file's token so: a scoped token must not
            // pass for it.
            return Err(TokenError::ReservedName);
        }
        let mut secret_bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut secret_bytes);
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes)
        );
        let record = TokenRecord {
            id,
            name,
            scope,
            sha256: digest(&secret),
            created: time::OffsetDateTime::now_utc().unix_timestamp(),
            revoked: None,
        };
        let _guard = self.lock_for_write()?;
        let mut file = self.read()?;
        // A revoked token's name may be given again; ids are never reused as names.
        if file
            .tokens
            .iter()
            .any(|t| (t.name == record.name && !t.is_revoked()) || t.id == record.name)
        {
            return Err(TokenError::NameTaken(record.name));
        }
        file.tokens.push(record.clone());
        self.write(&file)?;
        Ok((record, secret))
    }

    /// The token with this id or name: the valid one when a revoked token had the
    /// same name, else the most recently revoked.
    pub fn find(&self, id_or_name: &str) -> Result<TokenRecord, TokenError> {
        if id_or_name == ADMIN_FILE_TOKEN {
            return Err(TokenError::AdminFile);
        }
        let file = self.read()?;
        find_in(&file.tokens, id_or_name)
            .map(|index| file.tokens[index].clone())
            .ok_or_else(|| TokenError::NotFound(id_or_name.to_string()))
    }

    /// Revokes the token with this id or name (see [`TokenStore::find`]). Revoking a
    /// revoked token changes nothing and says so.
    pub fn revoke(&self, id_or_name: &str) -> Result<Revocation, TokenError> {
        if id_or_name == ADMIN_FILE_TOKEN {
            return Err(TokenError::AdminFile);
        }
        let _guard = self.lock_for_write()?;
        let mut file = self.read()?;
        let Some(index) = find_in(&file.tokens, id_or_name) else {
            return Err(TokenError::NotFound(id_or_name.to_string()));
        };
        let record = &mut file.tokens[index];
        if record.is_revoked() {
            return Ok(Revocation {
                record: record.clone(),
                changed: false,
            });
        }
        record.revoked = Some(time::OffsetDateTime::now_utc().unix_timestamp());
        let record = record.clone();
        self.write(&file)?;
        Ok(Revocation {
            record,
            changed: true,
        })
    }

    /// Serialises read-modify-write cycles: between threads of this process (the
    /// mutex) and between processes, the server's API and `rampart token` on the same
    /// data dir (an exclusive `flock` on `api-tokens.json.lock`), so neither loses the
    /// other's change.
    fn lock_for_write(&self) -> Result<WriteGuard<'_>, TokenError> {
        let thread = lock(&self.write_lock);
        let lock_path = self.path.with_extension("json.lock");
        let io = |source| TokenError::Io {
            path: lock_path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(WriteGuard {
            _process: file,
            _thread: thread,
        })
    }

    fn read(&self) -> Result<TokenFile, TokenError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenError::Corrupt {
                path: self.path.clone(),
                message: format!(
                    "not a token file ({e}); restore it or remove it and create the tokens again"
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(source) => Err(TokenError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes a new file beside the old one (created 0600) and renames it over: readers
    /// see the old or the new list, never half of one.
    fn write(&self, file: &TokenFile) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_vec_pretty(file).map_err(|e| TokenError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&text)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Held while the store is rewritten; dropping the file releases the `flock`.
struct WriteGuard<'a> {
    _process: std::fs::File,
    _thread: std::sync::MutexGuard<'a, ()>,
}

/// Index of the token `id_or_name` names: an id, else the valid token of that name,
/// else the last revoked one of that name.
fn find_in(tokens: &[TokenRecord], id_or_name: &str) -> Option<usize> {
    tokens
        .iter()
        .position(|t| t.id == id_or_name)
        .or_else(|| {
            tokens
                .iter()
                .position(|t| t.name == id_or_name && !t.is_revoked())
        })
        .or_else(|| tokens.iter().rposition(|t| t.name == id_or_name))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.trim().as_bytes()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_hashed_0600_and_authenticates_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (record, secret) = store.create(Scope::Analyst, Some("soc")).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(&secret));
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let who = store.authenticate(&secret).unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.scope), ("soc", Scope::Analyst));
        assert_eq!(store.authenticate("rmps_nope").unwrap(), None);
        // Another process (the CLI) revokes it: the next call sees the new file.
        TokenStore::new(dir.path()).revoke(&record.id).unwrap();
        assert_eq!(store.authenticate(&secret).unwrap(), None);
    }

    #[test]
    fn names_are_unique_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.create(Scope::Enroll, Some("mdm")).unwrap();
        assert!(matches!(
            store.create(Scope::Admin, Some("mdm")),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            store.create(Scope::Admin, Some("-x")),
            Err(TokenError::InvalidName(_))
        ));
        let (unnamed, _) = store.create(Scope::Admin, None).unwrap();
        assert_eq!(unnamed.name, unnamed.id);
        assert!(matches!(
            store.revoke("nothing"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn revoking_twice_answers_the_first_revocation_and_the_name_can_be_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (first, secret) = store.create(Scope::Analyst, Some("soc")).unwrap();
        let once = store.revoke("soc").unwrap();
        assert!(once.changed);
        let revoked_at = once.record.revoked.unwrap();
        let twice = store.revoke(&first.id).unwrap();
        assert_eq!(
            (twice.changed, twice.record.revoked),
            (false, Some(revoked_at))
        );
        assert_eq!(store.authenticate(&secret).unwrap(), None);
        // Still listed, as revoked; its name is free for a new token.
        let (second, _) = store.create(Scope::Analyst, Some("soc")).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.find("soc").unwrap().id, second.id);
        assert!(store.find(&first.id).unwrap().view().revoked.is_some());
        assert!(store.revoke("soc").unwrap().changed);
        assert_eq!(store.find("soc").unwrap().id, second.id, "the last revoked");
    }

    #[test]
    fn the_admin_file_token_is_neither_a_name_nor_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        assert!(matches!(
            store.create(Scope::Admin, Some(ADMIN_FILE_TOKEN)),
            Err(TokenError::ReservedName)
        ));
        let refused = store.revoke(ADMIN_FILE_TOKEN).unwrap_err();
        assert!(matches!(refused, TokenError::AdminFile));
        assert!(refused.to_string().contains("rotate it"), "{refused}");
    }

    #[test]
    fn a_file_written_before_revocation_existed_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let old = r#"{"tokens":[{"id":"tok_0a","name":"ops","scope":"admin","sha256":"00","created":1}]}"#;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(store.path())
            .and_then(|mut f| f.write_all(old.as_bytes()))
            .unwrap();
        let tokens = store.list().unwrap();
        assert_eq!((tokens[0].name.as_str(), tokens[0].revoked), ("ops", None));
    }

    #[test]
    fn a_readable_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.create(Scope::Admin, Some("ops")).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.list().unwrap_err().to_string().contains("chmod 600"));
    }

    #[test]
    fn secrets_never_start_with_a_dash() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        for _ in 0..50 {
            let (_, secret) = store.create(Scope::Analyst, None).unwrap();
            assert!(!secret.starts_with('-'));
        }
    }
}
