//! The admin API token: created on first start in the data dir, readable by its owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;

use crate::error::EventsError;

/// The token file inside a data dir.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Start of every admin token created here.
pub const ADMIN_TOKEN_PREFIX: &str = "rmpa_";

fn err(path: &Path, message: impl Into<String>) -> EventsError {
    EventsError::Token {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Load the admin token, creating it (256 random bits, mode 0600) if absent.
/// Refuses a token file others can read.
pub fn load_or_create(data_dir: &Path) -> Result<String, EventsError> {
    let path = token_path(data_dir);
    if path.exists() {
        return load(&path);
    }
    fs::create_dir_all(data_dir).map_err(|e| err(data_dir, e.to_string()))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    // The prefix keeps the token from starting with `-` (base64url may), which a
    // shell command line such as `--token "$(cat admin.token)"` would take for an
    // option; it also makes a leaked token recognisable to secret scanners.
    let token = format!(
        "{ADMIN_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    // create_new + mode: the file never exists with wider permissions, not even briefly.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| err(&path, e.to_string()))?;
            Ok(token)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(&path),
        Err(e) => Err(err(&path, e.to_string())),
    }
}

/// Load an existing token file.
pub fn load(path: &Path) -> Result<String, EventsError> {
    let meta = fs::metadata(path).map_err(|e| err(path, e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(
            path,
            format!(
                "mode {:o} lets other users read the admin token; run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(err(path, "token is shorter than 16 characters"));
    }
    Ok(token)
}

/// The credentials of an `Authorization: Bearer TOKEN` value. The scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer TOKEN` is accepted too.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Compare in constant time, so response timing does not reveal a token prefix.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), t1);
        assert!(t1.len() >= 40);
    }

    #[test]
    fn world_readable_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let p = token_path(dir.path());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("chmod 600"));
    }

    #[test]
    fn admin_tokens_never_start_with_a_dash() {
        for _ in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let token = load_or_create(dir.path()).unwrap();
            assert!(token.starts_with(ADMIN_TOKEN_PREFIX), "{token}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn comparison_needs_the_whole_token() {
        assert!(matches("abcdef", "abcdef"));
        assert!(!matches("abcdef", "abcde"));
        assert!(!matches("abcdef", "abcdeg"));
    }
}
