//! Devices: the device CA, one-time enrollment tokens, the device inventory, and the
//! [`DeviceRegistry`] that ties them together for the enrollment API and the gateway's
//! agent tunnel. Everything lives in `<data dir>/devices/`.

pub mod agent_api;
pub mod authority;
pub mod error;
pub mod inventory;
pub mod registry;
pub mod tokens;
pub mod tunnel;

pub use authority::{DeviceCa, DeviceIdentity, IssuedCertificate};
pub use error::DeviceError;
pub use inventory::{DeviceRecord, Inventory};
pub use registry::{DeviceRegistry, EnrollRequest, EnrollResponse};
pub use tokens::{TokenGrant, TokenStore};

use std::path::{Path, PathBuf};

/// `<data dir>/devices`, created readable by the owner only.
pub fn devices_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("devices")
}

/// Writes `contents` to `path` atomically (temp file + rename) with `mode`, so a reader
/// never sees half a file and secrets never exist with wider permissions.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), DeviceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), DeviceError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DeviceError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Current time as Unix seconds.
pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds as RFC 3339 (what the inventory and the API show).
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// User and group names end up in certificate URIs and log lines: keep them to a safe
/// alphabet instead of escaping.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'))
}
