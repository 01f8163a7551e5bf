//! A bounded on-disk queue of lines: segment files plus a persisted read cursor.
//!
//! Used twice: by the event pipeline when the store falls behind (events spill
//! here instead of being dropped) and by every sink (delivery is at-least-once:
//! the cursor advances only after the receiver accepted a batch, so a crash
//! re-delivers, never skips).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::EventsError;

/// Segments roll over at this size so acknowledged data can be deleted in pieces.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Where reading stopped: a segment number and a byte offset inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Lines read from the spool, and the position just after them (pass it to [`Spool::ack`]).
#[derive(Debug)]
pub struct Chunk {
    pub lines: Vec<Vec<u8>>,
    pub end: Position,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Segments on disk, oldest first, with their sizes.
    segments: Vec<(u64, u64)>,
    writer: Option<BufWriter<File>>,
    read_pos: Position,
    /// Lines deleted unread because the spool hit `max_bytes`.
    dropped_lines: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> EventsError {
    EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Open (or create) the spool in `dir`, holding at most `max_bytes` on disk.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, EventsError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(|e| io_err(&entry.path(), e))?
                .len();
            segments.push((id, len));
        }
        segments.sort_unstable();
        let cursor_path = dir.join("cursor");
        let mut read_pos = match fs::read_to_string(&cursor_path) {
            Ok(text) => parse_cursor(&text).unwrap_or(Position {
                segment: 0,
                offset: 0,
            }),
            Err(_) => Position {
                segment: 0,
                offset: 0,
            },
        };
        // A cursor pointing before the oldest segment (deleted while we were down) moves forward.
        if let Some(&(first, _)) = segments.first() {
            if read_pos.segment < first {
                read_pos = Position {
                    segment: first,
                    offset: 0,
                };
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(SEGMENT_BYTES * 2),
            segments,
            writer: None,
            read_pos,
            dropped_lines: 0,
        })
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.log"))
    }

    /// Bytes on disk not yet acknowledged (approximately: whole segments count).
    pub fn pending_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|&(id, len)| {
                if id == self.read_pos.segment {
                    len.saturating_sub(self.read_pos.offset)
                } else if id > self.read_pos.segment {
                    len
                } else {
                    0
                }
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    /// Lines deleted unread to respect the size bound, since this spool was opened.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// Append lines (each without a newline). Data reaches the OS on return;
    /// call [`Spool::sync`] for power-loss durability.
    pub fn append<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), EventsError> {
        let need_new = match self.segments.last() {
            None => true,
            Some(&(_, len)) => self.writer.is_none() || len >= SEGMENT_BYTES,
        };
        if need_new {
            // Always start a fresh segment after opening: the previous process may
            // have died mid-line, and appending after a torn line would corrupt the next.
            let id = self.segments.last().map_or(1, |&(id, _)| id + 1);
            let path = self.segment_path(id);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
            self.segments.push((id, 0));
            if self.read_pos.segment == 0 {
                self.read_pos = Position {
                    segment: id,
                    offset: 0,
                };
            }
        }
        let Some((id, len)) = self.segments.last_mut() else {
            return Ok(());
        };
        let path = self.dir.join(format!("{:016}.log", *id));
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        for line in lines {
            w.write_all(line).map_err(|e| io_err(&path, e))?;
            w.write_all(b"\n").map_err(|e| io_err(&path, e))?;
            *len += line.len() as u64 + 1;
        }
        w.flush().map_err(|e| io_err(&path, e))?;
        self.enforce_bound()?;
        Ok(())
    }

    /// fsync the segment being written.
    pub fn sync(&mut self) -> Result<(), EventsError> {
        if let Some(w) = self.writer.as_mut() {
            let dir = self.dir.clone();
            w.get_ref().sync_data().map_err(|e| io_err(&dir, e))?;
        }
        Ok(())
    }

    /// Delete the oldest segments while the spool is over its bound.
    fn enforce_bound(&mut self) -> Result<(), EventsError> {
        let mut total: u64 = self.segments.iter().map(|s| s.1).sum();
        while total > self.max_bytes && self.segments.len() > 1 {
            let (id, len) = self.segments.remove(0);
            let path = self.segment_path(id);
            if id >= self.read_pos.segment {
                let from = if id == self.read_pos.segment {
                    self.read_pos.offset
                } else {
                    0
                };
                self.dropped_lines += count_lines(&path, from);
                self.read_pos = Position {
                    segment: self.segments[0].0,
                    offset: 0,
                };
            }
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            total -= len;
        }
        Ok(())
    }

    /// Read up to `max_lines` unacknowledged lines (the same lines again until acked).
    pub fn read(&mut self, max_lines: usize) -> Result<Option<Chunk>, EventsError> {
        let mut lines = Vec::new();
        let mut pos = self.read_pos;
        for &(id, len) in self.segments.clone().iter() {
            if id < pos.segment {
                continue;
            }
            if id > pos.segment {
                pos = Position {
                    segment: id,
                    offset: 0,
                };
            }
            if pos.offset >= len {
                continue;
            }
            let path = self.segment_path(id);
            let mut file = File::open(&path).map_err(|e| io_err(&path, e))?;
            file.seek(SeekFrom::Start(pos.offset))
                .map_err(|e| io_err(&path, e))?;
            let mut reader = BufReader::new(file.take(len - pos.offset));
            loop {
                if lines.len() >= max_lines {
                    return Ok(Some(Chunk { lines, end: pos }));
                }
                let mut buf = Vec::new();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| io_err(&path, e))?;
                if n == 0 {
                    break;
                }
                if buf.last() != Some(&b'\n') {
                    // A torn line (crash mid-write): skip the rest of this segment.
                    pos.offset = len;
                    break;
                }
                pos.offset += n as u64;
                buf.pop();
                if !buf.is_empty() {
                    lines.push(buf);
                }
            }
        }
        if lines.is_empty() {
            // Nothing to deliver, but the cursor may still move past torn data.
            if pos != self.read_pos {
                self.ack(pos)?;
            }
            return Ok(None);
        }
        Ok(Some(Chunk { lines, end: pos }))
    }

    /// Mark everything before `pos` delivered: persist the cursor and delete finished segments.
    pub fn ack(&mut self, pos: Position) -> Result<(), EventsError> {
        self.read_pos = pos;
        let cursor = self.dir.join("cursor");
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &cursor).map_err(|e| io_err(&cursor, e))?;
        let active = self.segments.last().map(|s| s.0);
        while let Some(&(id, len)) = self.segments.first() {
            let finished = id < pos.segment || (id == pos.segment && pos.offset >= len);
            if !finished || Some(id) == active {
                break;
            }
            let path = self.segment_path(id);
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            self.segments.remove(0);
        }
        Ok(())
    }
}

fn parse_cursor(text: &str) -> Option<Position> {
    let mut it = text.split_whitespace();
    let segment = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    Some(Position { segment, offset })
}

fn count_lines(path: &Path, from: u64) -> u64 {
    let Ok(mut f) = File::open(path) else {
        return 0;
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return 0;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    while let Ok(k) = f.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunk: &Chunk) -> Vec<String> {
        chunk
            .lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn unacknowledged_lines_are_read_again_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        s.append([b"a".as_slice(), b"b", b"c"]).unwrap();
        let c = s.read(2).unwrap().unwrap();
        assert_eq!(lines(&c), ["a", "b"]);
        s.ack(c.end).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        let c = s.read(10).unwrap().unwrap();
        assert_eq!(lines(&c), ["c"]);
        // Not acked: the same line comes back.
        let again = s.read(10).unwrap().unwrap();
        assert_eq!(lines(&again), ["c"]);
        s.ack(again.end).unwrap();
        s.append([b"d".as_slice()]).unwrap();
        let c = s.read(10).unwrap().unwrap();
        assert_eq!(lines(&c), ["d"]);
        s.ack(c.end).unwrap();
        assert!(s.read(10).unwrap().is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn torn_last_line_is_skipped_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        s.append([b"whole".as_slice()]).unwrap();
        drop(s);
        let seg = dir.path().join(format!("{:016}.log", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"tor").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        s.append([b"after".as_slice()]).unwrap();
        let c = s.read(10).unwrap().unwrap();
        assert_eq!(lines(&c), ["whole", "after"]);
    }

    #[test]
    fn size_bound_drops_the_oldest_segment_and_counts_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 0).unwrap(); // bound clamps to two segments
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..30 {
            s.append([line.as_slice()]).unwrap();
        }
        assert!(s.dropped_lines() > 0);
        let on_disk: u64 = s.segments.iter().map(|x| x.1).sum();
        assert!(on_disk <= 2 * SEGMENT_BYTES + line.len() as u64 + 1);
        let mut read = 0;
        while let Some(c) = s.read(100).unwrap() {
            read += c.lines.len() as u64;
            s.ack(c.end).unwrap();
        }
        assert_eq!(read + s.dropped_lines(), 30);
    }
}
