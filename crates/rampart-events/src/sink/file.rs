//! File sinks: NDJSON and Squid access log, rotated by size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use super::{squid, Destination};
use crate::event::Event;

/// A file that rotates to `path.1` … `path.N` when it reaches a size.
pub struct RotatingFile {
    path: PathBuf,
    rotate_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: PathBuf, rotate_bytes: u64, keep: usize) -> RotatingFile {
        RotatingFile {
            path,
            rotate_bytes: rotate_bytes.max(1),
            keep,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.size = 0;
        Ok(())
    }

    /// Append `data` (whole lines) and make it durable before returning.
    pub fn write_lines(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.size > 0 && self.size + data.len() as u64 > self.rotate_bytes
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
            if self.size > 0 && self.size + data.len() as u64 > self.rotate_bytes {
                self.rotate()?;
                return self.write_lines(data);
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let result = f.write_all(data).and_then(|_| f.sync_data());
        if result.is_err() {
            // Reopen next time: the file may have been removed or the disk remounted.
            self.file = None;
        }
        result?;
        self.size += data.len() as u64;
        Ok(())
    }
}

/// OCSF JSON, one event per line.
pub struct NdjsonFile(RotatingFile);

impl NdjsonFile {
    pub fn new(f: RotatingFile) -> NdjsonFile {
        NdjsonFile(f)
    }
}

impl Destination for NdjsonFile {
    fn deliver(&mut self, events: &[Event]) -> Result<(), String> {
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        self.0
            .write_lines(&buf)
            .map_err(|e| format!("{}: {e}", self.0.path.display()))
    }
}

/// Squid native access-log lines (HTTP and network events only).
pub struct SquidFile(RotatingFile);

impl SquidFile {
    pub fn new(f: RotatingFile) -> SquidFile {
        SquidFile(f)
    }
}

impl Destination for SquidFile {
    fn deliver(&mut self, events: &[Event]) -> Result<(), String> {
        let mut buf = String::new();
        for line in events.iter().filter_map(squid::render) {
            buf.push_str(&line);
            buf.push('\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.0
            .write_lines(buf.as_bytes())
            .map_err(|e| format!("{}: {e}", self.0.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rotates_at_the_size_and_keeps_n_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut f = RotatingFile::new(path.clone(), 10, 2);
        for i in 0..5 {
            f.write_lines(format!("line-{i}\n").as_bytes()).unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "line-4\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("events.ndjson.1")).unwrap(),
            "line-3\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("events.ndjson.2")).unwrap(),
            "line-2\n"
        );
        assert!(!dir.path().join("events.ndjson.3").exists());
    }
}
