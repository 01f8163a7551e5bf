//! The access log's file: rotated by size and age (`[access_log] max_size`,
//! `max_age`, `keep`, `compress`), and reopened at its path on request
//! (SIGUSR1, after logrotate or an operator moved it away).
//!
//! A rotated file is renamed `NAME.YYYYMMDDTHHMMSS.mmmZ` (the time of the
//! rotation, UTC): names sort in time order, nothing is renamed twice, and a
//! background gzip (`compress = true`) works on a name no later rotation
//! touches. The `keep` newest rotated files are kept.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::AccessLogConfig;

/// When to rotate and what to keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rotation {
    /// 0: never by size.
    pub max_size: u64,
    /// Zero: never by age.
    pub max_age: Duration,
    pub keep: usize,
    pub compress: bool,
}

impl Rotation {
    pub(super) fn from_config(config: &AccessLogConfig) -> Rotation {
        Rotation {
            max_size: config.max_size.0,
            max_age: config.max_age,
            keep: config.keep,
            compress: config.compress,
        }
    }
}

pub(super) struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    /// Bytes in the current file: where a failed write is cut back to.
    size: u64,
    /// When the current file was started (its first line's time, near enough).
    started: SystemTime,
    /// Only regular files rotate (not `/dev/stdout`, a FIFO, a device).
    regular: bool,
}

impl LogFile {
    /// Opens (or creates) the file now, so a wrong path stops the start.
    pub(super) fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<LogFile> {
        let mut log = LogFile {
            path,
            rotation,
            file: None,
            size: 0,
            started: SystemTime::now(),
            regular: false,
        };
        log.open_file()?;
        Ok(log)
    }

    fn open_file(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("opening access log {}: {e}", self.path.display()),
                )
            })?;
        let meta = file.metadata()?;
        self.regular = meta.is_file();
        self.size = meta.len();
        // A file left by the previous run keeps its age (creation time where
        // the filesystem records it, else its last change).
        self.started = if self.size == 0 {
            SystemTime::now()
        } else {
            meta.created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now())
        };
        self.file = Some(file);
        Ok(())
    }

    /// Closes the file and opens its path again: after `mv access.log
    /// access.log.1` the next lines go to a new `access.log`.
    pub(super) fn reopen(&mut self) {
        self.file = None;
        if let Err(e) = self.open_file() {
            // Retried at the next write; its records count as dropped meanwhile.
            tracing::error!(error = %e, "reopening the access log failed");
        }
    }

    /// Appends one batch of whole lines, rotating first when it is due (and
    /// between lines when the batch would pass `max_size`). On a failed write
    /// the file is cut back to its last whole line.
    pub(super) fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open_file()?;
        }
        let mut rest = batch;
        while !rest.is_empty() {
            let part = self.next_part(rest);
            if self.rotation_due(part.len() as u64) {
                if let Err(e) = self.rotate() {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "rotating the access log failed; writing on to the current file"
                    );
                }
            }
            self.append(&rest[..part.len()])?;
            rest = &rest[part.len()..];
        }
        Ok(())
    }

    /// The whole lines at the start of `rest` that fit in the current file
    /// under `max_size` (at least one line: a longer line gets a file of its own).
    fn next_part<'a>(&self, rest: &'a [u8]) -> &'a [u8] {
        let max = self.rotation.max_size;
        if !self.regular || max == 0 || self.size + rest.len() as u64 <= max {
            return rest;
        }
        let room = max.saturating_sub(self.size) as usize;
        let mut end = 0;
        for (i, b) in rest.iter().enumerate() {
            if *b == b'\n' {
                if i + 1 > room && end > 0 {
                    break;
                }
                end = i + 1;
                if i + 1 > room {
                    break;
                }
            }
        }
        if end == 0 {
            rest
        } else {
            &rest[..end]
        }
    }

    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("the access log is not open"));
        };
        match file.write_all(data) {
            Ok(()) => {
                self.size += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A partial write (ENOSPC mid-batch) would leave half a line
                // that the next batch continues: cut it off.
                if self.regular {
                    let _ = file.set_len(self.size);
                }
                Err(e)
            }
        }
    }

    fn rotation_due(&self, incoming: u64) -> bool {
        if !self.regular || self.size == 0 {
            return false;
        }
        let r = &self.rotation;
        let by_size = r.max_size > 0 && self.size + incoming > r.max_size;
        let by_age =
            !r.max_age.is_zero() && self.started.elapsed().is_ok_and(|age| age >= r.max_age);
        by_size || by_age
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let rotated = rotated_path(&self.path, SystemTime::now());
        std::fs::rename(&self.path, &rotated)?;
        self.file = None;
        let opened = self.open_file();
        let path = self.path.clone();
        let keep = self.rotation.keep;
        if self.rotation.compress {
            // Off the writer thread: compressing 100 MiB takes about a second.
            let spawned = std::thread::Builder::new()
                .name("access-log-gzip".into())
                .spawn(move || {
                    if let Err(e) = gzip(&rotated) {
                        tracing::error!(file = %rotated.display(), error = %e, "compressing a rotated access log failed; it stays uncompressed");
                    }
                    prune(&path, keep);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access log compression thread");
            }
        } else {
            prune(&path, keep);
        }
        opened
    }
}

/// `NAME.YYYYMMDDTHHMMSS.mmmZ` beside `path`; a name already taken (two
/// rotations in one millisecond, a clock set back) gets a `-N` suffix.
fn rotated_path(path: &Path, at: SystemTime) -> PathBuf {
    let stamp = time::OffsetDateTime::from(at)
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .unwrap_or_else(|_| "00000000T000000.000Z".to_string());
    let base = {
        let mut p = path.as_os_str().to_os_string();
        p.push(".");
        p.push(&stamp);
        PathBuf::from(p)
    };
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() || with_suffix(&candidate, ".gz").exists() {
        let mut p = base.as_os_str().to_os_string();
        p.push(format!("-{n}"));
        candidate = PathBuf::from(p);
        n += 1;
    }
    candidate
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

/// Writes `path.gz` (through a temporary name, so a crash never leaves a
/// truncated archive under the final name) and removes `path`.
fn gzip(path: &Path) -> std::io::Result<()> {
    let tmp = with_suffix(path, ".gz.tmp");
    let result = (|| {
        let mut source = std::io::BufReader::new(File::open(path)?);
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&tmp)?, flate2::Compression::default());
        std::io::copy(&mut source, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        std::fs::rename(&tmp, with_suffix(path, ".gz"))?;
        std::fs::remove_file(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The rotated files of `path`, oldest first (a file and its `.gz` once).
fn rotated_files(path: &Path) -> Vec<String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|f| {
            let stamp = f.strip_prefix(&prefix)?;
            let stamp = stamp.strip_suffix(".gz").unwrap_or(stamp);
            is_stamp(stamp).then(|| format!("{prefix}{stamp}"))
        })
        .collect();
    stems.sort();
    stems.dedup();
    stems
}

/// `YYYYMMDDTHHMMSS.mmmZ`, optionally `-N`.
fn is_stamp(s: &str) -> bool {
    let (stamp, counter) = match s.split_once('-') {
        Some((stamp, n)) => (stamp, Some(n)),
        None => (s, None),
    };
    let b = stamp.as_bytes();
    b.len() == 20
        && b[8] == b'T'
        && b[15] == b'.'
        && b[19] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15 | 19) || c.is_ascii_digit())
        && counter.is_none_or(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// Deletes the oldest rotated files beyond `keep`.
fn prune(path: &Path, keep: usize) {
    let rotated = rotated_files(path);
    let excess = rotated.len().saturating_sub(keep);
    let dir = path.parent().unwrap_or(Path::new("."));
    for stem in &rotated[..excess] {
        for name in [stem.clone(), format!("{stem}.gz")] {
            match std::fs::remove_file(dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot delete an old access log")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(max_size: u64, keep: usize, compress: bool) -> Rotation {
        Rotation {
            max_size,
            max_age: Duration::ZERO,
            keep,
            compress,
        }
    }

    #[test]
    fn rotates_before_the_size_is_passed_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = LogFile::open(path.clone(), rotation(20, 2, false)).unwrap();
        for i in 0..5 {
            log.write_batch(format!("line-{i}-abcdefgh\n").as_bytes())
                .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-4-abcdefgh\n");
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let old: Vec<String> = rotated
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
            .collect();
        assert_eq!(old, ["line-2-abcdefgh\n", "line-3-abcdefgh\n"]);
    }

    #[test]
    fn a_batch_larger_than_max_size_is_split_between_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = LogFile::open(path.clone(), rotation(20, 10, false)).unwrap();
        log.write_batch(b"aaaaaaaa\nbbbbbbbb\ncccccccc\ndddddddddddddddddddddddd\ne\n")
            .unwrap();
        let mut files: Vec<String> = rotated_files(&path)
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
            .collect();
        files.push(std::fs::read_to_string(&path).unwrap());
        assert_eq!(
            files,
            [
                "aaaaaaaa\nbbbbbbbb\n",
                "cccccccc\n",
                "dddddddddddddddddddddddd\n",
                "e\n"
            ]
        );
    }

    #[test]
    fn rotated_files_are_gzipped_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = LogFile::open(path.clone(), rotation(10, 3, true)).unwrap();
        log.write_batch(b"first line\n").unwrap();
        log.write_batch(b"second line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let gz = loop {
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".gz"))
                .collect();
            if let Some(n) = names.first() {
                break dir.path().join(n);
            }
            assert!(std::time::Instant::now() < deadline, "no .gz appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(&gz).unwrap()),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "first line\n");
        assert_eq!(rotated_files(&path).len(), 1);
    }

    #[test]
    fn reopen_follows_a_moved_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = LogFile::open(path.clone(), rotation(0, 1, false)).unwrap();
        log.write_batch(b"before\n").unwrap();
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.write_batch(b"still old\n").unwrap();
        log.reopen();
        log.write_batch(b"after\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("access.log.1")).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn stamps_are_recognised() {
        assert!(is_stamp("20261207T151000.123Z"));
        assert!(is_stamp("20261207T151000.123Z-2"));
        assert!(!is_stamp("1"));
        assert!(!is_stamp("20261207T151000.123Z.gz.tmp"));
    }
}
