//! `--pid-file FILE`: the process id of a running `rampart server|gateway|agent`,
//! for `kill -HUP "$(cat FILE)"` (reload), `kill -USR1` (reopen the access log)
//! and service managers, instead of `pgrep`/`pidof`, which cannot tell two
//! Rampart processes apart.
//!
//! Claimed before anything binds (a file naming a live Rampart process refuses
//! the start: two processes on one pid file is a mistake); written once the
//! listeners are bound, so a reader finds a pid that already serves; removed at
//! a clean exit if it still names this process.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error(
        "pid file {path} names process {pid}, a running rampart: stop it first, or give this \
         process another --pid-file"
    )]
    Running { path: PathBuf, pid: u32 },
    #[error("cannot write the pid file {path}: {source} (check that its directory exists and is writable)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the pid file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A claimed pid file; removed on drop once written.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    written: bool,
}

impl PidFile {
    /// Checks that `path` names no live Rampart process (a stale file, left by
    /// a crash or naming a pid now used by another program, is replaced).
    pub fn claim(path: &Path) -> Result<PidFile, PidFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(pid) = text.trim().parse::<u32>().ok().filter(|&p| p > 0) {
                    if pid != std::process::id() && is_rampart(pid) {
                        return Err(PidFileError::Running {
                            path: path.to_path_buf(),
                            pid,
                        });
                    }
                }
                tracing::info!(path = %path.display(), "replacing a stale pid file");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PidFileError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            written: false,
        })
    }

    /// Writes this process's id, mode 0644: written whole to a temporary file
    /// and renamed, so a reader never sees a partial pid.
    pub fn write(&mut self) -> Result<(), PidFileError> {
        let err = |source| PidFileError::Write {
            path: self.path.clone(),
            source,
        };
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(err)?;
        let written = writeln!(file, "{}", std::process::id())
            .and_then(|_| file.sync_all())
            // The umask may have narrowed the mode given at creation.
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        self.written = true;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if !self.written {
            return;
        }
        // Another process may have taken the file over since (after a
        // `--pid-file` mix-up): only this process's own pid is removed.
        let ours = std::fs::read_to_string(&self.path)
            .map(|t| t.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
            }
        }
    }
}

/// Whether `pid` is a live process running the `rampart` binary.
fn is_rampart(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // The executable's name ("rampart", or "rampart (deleted)" after an upgrade
    // replaced the binary); `comm` when the link is not readable.
    if let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) {
        return exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "rampart" || n.starts_with("rampart "));
    }
    std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|comm| comm.trim() == "rampart")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_file_is_replaced_and_removed_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rampart.pid");
        // A pid that cannot be live (above the kernel's pid_max ceiling).
        std::fs::write(&path, "4194305\n").unwrap();
        let mut pid_file = PidFile::claim(&path).unwrap();
        pid_file.write().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        drop(pid_file);
        assert!(!path.exists());
    }

    #[test]
    fn a_file_naming_another_program_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rampart.pid");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&path, format!("{}\n", sleeper.id())).unwrap();
        let claimed = PidFile::claim(&path);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(claimed.is_ok(), "{claimed:?}");
    }
}
