//! Local console accounts: `<data dir>/console-users.json` (mode 0600), one
//! Argon2id hash per user, managed by `rampart user add|list|remove`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use serde::{Deserialize, Serialize};

/// File name of the account list inside the data dir.
pub const USERS_FILE: &str = "console-users.json";

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD_LEN: usize = 10;

/// What a console user may do: analysts read, admins also act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "analyst" => Some(Role::Analyst),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// PHC string (Argon2id).
    pub password_hash: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<Account>,
}

/// The account file of one data dir.
#[derive(Debug, Clone)]
pub struct UserStore {
    path: PathBuf,
}

impl UserStore {
    pub fn new(data_dir: &Path) -> UserStore {
        UserStore {
            path: data_dir.join(USERS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every account; none when the file does not exist yet.
    pub fn list(&self) -> anyhow::Result<Vec<Account>> {
        Ok(self.read()?.users)
    }

    fn read(&self) -> anyhow::Result<UsersFile> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a console user file", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Written beside and renamed over, so a reader never sees half a file;
    /// created 0600 because it holds password hashes.
    fn write(&self, file: &UsersFile) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(file).context("encoding the user file")?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))
    }

    /// Adds an account, or replaces the password and role of an existing one.
    /// Returns true when the account is new.
    pub fn add(&self, name: &str, role: Role, password: &str) -> anyhow::Result<bool> {
        check_name(name)?;
        if password.chars().count() < MIN_PASSWORD_LEN {
            anyhow::bail!("the password must have at least {MIN_PASSWORD_LEN} characters");
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data dir {}", dir.display()))?;
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
            .to_string();
        let mut file = self.read()?;
        let account = Account {
            name: name.to_string(),
            role,
            password_hash: hash,
            created: rampart_events::render::time_text(rampart_events::now_ms()),
        };
        let new = match file.users.iter_mut().find(|u| u.name == name) {
            Some(existing) => {
                *existing = account;
                false
            }
            None => {
                file.users.push(account);
                true
            }
        };
        self.write(&file)?;
        Ok(new)
    }

    /// Removes an account; false when there was none by that name.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let mut file = self.read()?;
        let before = file.users.len();
        file.users.retain(|u| u.name != name);
        if file.users.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    /// The account's role now (sessions re-check it, so a removed user is out at once).
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.read()
            .ok()?
            .users
            .into_iter()
            .find(|u| u.name == name)
            .map(|u| u.role)
    }

    /// The role when `password` is right. Unknown names cost one Argon2
    /// verification too, so timing does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let account = self
            .read()
            .ok()
            .and_then(|f| f.users.into_iter().find(|u| u.name == name));
        let hash = account
            .as_ref()
            .map(|a| a.password_hash.as_str())
            .unwrap_or_else(|| dummy_hash());
        let ok = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        match (ok, account) {
            (true, Some(a)) => Some(a.role),
            _ => None,
        }
    }
}

fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no such user", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Names appear in URLs, audit records and cookies' sessions: keep them plain.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !ok {
        anyhow::bail!("user name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn added_user_verifies_and_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path());
        assert!(store.add("alice", Role::Admin, "correct horse").unwrap());
        assert_eq!(store.verify("alice", "correct horse"), Some(Role::Admin));
        assert_eq!(store.verify("alice", "wrong password"), None);
        assert_eq!(store.verify("bob", "correct horse"), None);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.remove("alice").unwrap());
        assert_eq!(store.role_of("alice"), None);
    }

    #[test]
    fn short_password_and_odd_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path());
        assert!(store.add("alice", Role::Admin, "short").is_err());
        assert!(store.add("a b", Role::Admin, "long enough pw").is_err());
    }
}
