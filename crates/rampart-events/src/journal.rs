//! The write-ahead journal: every event reaches the kernel here, within about
//! a millisecond of being handed over, before the store's group commit (up to
//! 300 ms later) makes it searchable.
//!
//! The store commits in large transactions because that is what makes it fast;
//! the journal is what makes that window safe. A `kill -9` between hand-over and
//! commit used to lose the window's events; now they are in the journal, and
//! the next start stores them ([`Recovery`]). Power loss is a different matter:
//! the journal is fsynced every `[events] fsync_interval`, so it loses at most
//! that much.
//!
//! ```text
//! DATA_DIR/journal/0000000000000007.wal   segments, oldest first
//!                  committed              "SEGMENT OFFSET": the store has everything before it
//! ```
//!
//! A segment starts with [`MAGIC`], then records: payload length (u32 LE),
//! CRC-32 of the payload (u32 LE), payload (the event's stored form, see
//! `store/doc.rs`). A crash can tear the last record, and a damaged disk can
//! change any byte: the reader stops at the first record that is incomplete or
//! fails its checksum and reports what it dropped, it never panics.
//!
//! Each start writes a fresh segment, so a torn tail is never appended to.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::EventsError;
pub use crate::spool::Position;

/// The first bytes of every segment: format and version.
pub const MAGIC: &[u8; 8] = b"RMPJRNL1";
/// Length and checksum in front of each payload.
pub const RECORD_HEADER: usize = 8;
/// A payload longer than this is damage, not an event (stored forms are a few
/// hundred bytes; the largest alert documents a few kilobytes).
pub const MAX_RECORD: usize = 16 << 20;
/// Segments roll over at this size, so committed ones can be deleted whole.
const SEGMENT_BYTES: u64 = 32 << 20;

fn io_err(path: &Path, source: std::io::Error) -> EventsError {
    EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The journal's directory inside a data dir.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.wal"))
}

fn marker_path(dir: &Path) -> PathBuf {
    dir.join("committed")
}

/// Why reading a segment stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file does not start with [`MAGIC`] (not a journal, or torn at creation).
    BadMagic,
    /// The last record is incomplete: a crash while it was written.
    TornTail,
    /// A record's checksum does not match (or its length is impossible): the
    /// disk changed it. Everything after it is dropped too, since its length
    /// cannot be trusted to find the next record.
    Checksum,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Damage::BadMagic => "not a journal segment",
            Damage::TornTail => "torn last record",
            Damage::Checksum => "checksum mismatch",
        })
    }
}

/// The records of one segment's bytes, from `offset` (0 or a committed
/// offset): the payloads that read back intact, where reading stopped and why.
#[derive(Debug, Default)]
pub struct Records<'a> {
    pub payloads: Vec<&'a [u8]>,
    /// Offset just after the last intact record.
    pub end: u64,
    /// Set when bytes after `end` were dropped.
    pub damage: Option<Damage>,
}

/// Parse a segment's bytes from `offset`. Total over any input: no panic, no
/// allocation beyond the list of payloads (the fuzz target checks this).
pub fn read_records(bytes: &[u8], offset: u64) -> Records<'_> {
    let mut out = Records::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        out.damage = (!bytes.is_empty()).then_some(Damage::BadMagic);
        return out;
    }
    let mut at = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .max(MAGIC.len());
    if at > bytes.len() {
        // A committed offset past the end: the segment lost its tail after
        // the marker was written (power loss); nothing here is uncommitted.
        out.end = offset;
        return out;
    }
    out.end = at as u64;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some((header, body)) = rest.split_first_chunk::<RECORD_HEADER>() else {
            out.damage = Some(Damage::TornTail);
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            out.damage = Some(Damage::Checksum);
            break;
        }
        let Some(payload) = body.get(..len) else {
            out.damage = Some(Damage::TornTail);
            break;
        };
        if crc32fast::hash(payload) != crc {
            out.damage = Some(Damage::Checksum);
            break;
        }
        out.payloads.push(payload);
        at += RECORD_HEADER + len;
        out.end = at as u64;
    }
    out
}

/// Frame one payload as a record onto `buf`.
pub fn encode_record(buf: &mut Vec<u8>, payload: &[u8]) {
    // Payloads are stored forms, far below 4 GiB; a longer one would be
    // refused by the reader as damage rather than wrap around here.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// What the previous run left uncommitted: the segments that existed at
/// open (all older than the one this run writes) and where the store's
/// commits ended in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub dir: PathBuf,
    pub segments: Vec<u64>,
    pub from: Position,
}

impl Recovery {
    /// Whether there is anything to replay at all.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Read each segment's uncommitted records in order and hand their
    /// payloads to `each` in chunks (one segment at a time, so memory stays
    /// bounded by a segment). Damage is logged and counted, never fatal.
    /// Returns the number of payloads read and of segments found damaged.
    pub fn replay(
        &self,
        mut each: impl FnMut(&[&[u8]]) -> Result<(), EventsError>,
    ) -> Result<(u64, u64), EventsError> {
        let (mut read, mut damaged) = (0u64, 0u64);
        for &id in &self.segments {
            if id < self.from.segment {
                continue;
            }
            let offset = if id == self.from.segment {
                self.from.offset
            } else {
                0
            };
            let path = segment_path(&self.dir, id);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, e)),
            };
            let records = read_records(&bytes, offset);
            if let Some(damage) = records.damage {
                let dropped = bytes.len() as u64 - records.end.min(bytes.len() as u64);
                // A torn tail is the expected trace of a crash; anything else is the disk.
                if damage == Damage::TornTail {
                    tracing::info!(path = %path.display(), bytes = dropped, "event journal: {damage} dropped");
                } else {
                    damaged += 1;
                    tracing::warn!(path = %path.display(), at = records.end, bytes = dropped, "event journal: {damage}; the rest of this segment is dropped");
                }
            }
            for chunk in records.payloads.chunks(4096) {
                each(chunk)?;
            }
            read += records.payloads.len() as u64;
        }
        Ok((read, damaged))
    }
}

/// The appending side, owned by the thread that drains the data path's queue.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    segment: u64,
    len: u64,
    /// Reused for each batch: one `write(2)` per batch.
    buf: Vec<u8>,
    /// Another handle on the segment being written, for [`JournalSync`].
    shared: std::sync::Arc<std::sync::Mutex<Option<File>>>,
    /// Held (an exclusive `flock`) while this journal is open: a second
    /// process on the same data dir must not replay, then delete, segments
    /// this one is still writing.
    _lock: File,
}

impl Journal {
    /// Open the journal in `dir`: what the last run left is returned for
    /// replay, and a fresh segment is started after it.
    pub fn open(dir: &Path) -> Result<(Journal, Recovery), EventsError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(EventsError::JournalBusy(dir.to_path_buf()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        let segments = list_segments(dir)?;
        let from = read_marker(dir);
        let segment = segments.last().map_or(1, |id| id + 1);
        let (file, len) = create_segment(dir, segment)?;
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(
            file.try_clone().map_err(|e| io_err(dir, e))?,
        )));
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                file,
                segment,
                len,
                buf: Vec::with_capacity(64 << 10),
                shared,
                _lock: lock,
            },
            Recovery {
                dir: dir.to_path_buf(),
                segments,
                from,
            },
        ))
    }

    /// The first position this run writes: everything before it is the
    /// previous run's, replayed at start.
    pub fn start(&self) -> Position {
        Position {
            segment: self.segment,
            offset: 0,
        }
    }

    /// A handle for the thread that fsyncs the journal.
    pub fn syncer(&self) -> JournalSync {
        JournalSync {
            dir: self.dir.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Append one record per payload with a single `write(2)`; on return they
    /// are in the kernel (they survive `kill -9`, not power loss until the
    /// next fsync). Returns the position just after them.
    pub fn append<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Position, EventsError> {
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        self.buf.clear();
        for p in payloads {
            encode_record(&mut self.buf, p);
        }
        let path = segment_path(&self.dir, self.segment);
        self.file
            .write_all(&self.buf)
            .map_err(|e| io_err(&path, e))?;
        self.len += self.buf.len() as u64;
        if self.buf.capacity() > 4 << 20 {
            // A saturated batch grew it; don't keep megabytes for 1 ms batches.
            self.buf = Vec::with_capacity(64 << 10);
        }
        Ok(Position {
            segment: self.segment,
            offset: self.len,
        })
    }

    fn rotate(&mut self) -> Result<(), EventsError> {
        let old = segment_path(&self.dir, self.segment);
        // The sync thread moves to the new segment below; make the old one's
        // last records durable here so none falls between the two.
        self.file.sync_data().map_err(|e| io_err(&old, e))?;
        let (file, len) = create_segment(&self.dir, self.segment + 1)?;
        let clone = file.try_clone().map_err(|e| io_err(&old, e))?;
        self.file = file;
        self.segment += 1;
        self.len = len;
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(clone);
        }
        Ok(())
    }
}

/// fsyncs the segment being written, from a thread other than the one
/// appending, so an fsync that takes milliseconds never delays the next batch.
#[derive(Clone, Debug)]
pub struct JournalSync {
    dir: PathBuf,
    shared: std::sync::Arc<std::sync::Mutex<Option<File>>>,
}

impl JournalSync {
    pub fn sync(&self) -> Result<(), EventsError> {
        // Hold the lock only to duplicate the handle: the appender takes it to rotate.
        let file = match self.shared.lock() {
            Ok(guard) => match guard.as_ref().map(File::try_clone) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(io_err(&self.dir, e)),
                None => return Ok(()),
            },
            Err(_) => return Ok(()),
        };
        file.sync_data().map_err(|e| io_err(&self.dir, e))
    }
}

/// Records what the store has committed and deletes segments wholly before it.
#[derive(Debug)]
pub struct CommitMarker {
    dir: PathBuf,
    written: Position,
}

impl CommitMarker {
    pub fn new(dir: &Path) -> CommitMarker {
        CommitMarker {
            dir: dir.to_path_buf(),
            written: read_marker(dir),
        }
    }

    /// The position last written.
    pub fn position(&self) -> Position {
        self.written
    }

    /// Persist `pos` (if it moves forward) and delete the segments before its
    /// segment. Rename makes the update atomic: a crash leaves the old marker
    /// or the new one, and an old one only means more (idempotent) replay.
    pub fn write(&mut self, pos: Position) -> Result<(), EventsError> {
        if pos <= self.written {
            return Ok(());
        }
        let path = marker_path(&self.dir);
        let tmp = self.dir.join("committed.tmp");
        fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        self.written = pos;
        for id in list_segments(&self.dir)? {
            if id >= pos.segment {
                break;
            }
            let seg = segment_path(&self.dir, id);
            fs::remove_file(&seg).map_err(|e| io_err(&seg, e))?;
        }
        Ok(())
    }
}

fn create_segment(dir: &Path, id: u64) -> Result<(File, u64), EventsError> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    file.write_all(MAGIC).map_err(|e| io_err(&path, e))?;
    Ok((file, MAGIC.len() as u64))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, EventsError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The committed position; a missing or unreadable marker means "nothing
/// known committed": everything is replayed, and the store skips what it has.
fn read_marker(dir: &Path) -> Position {
    let zero = Position {
        segment: 0,
        offset: 0,
    };
    let Ok(text) = fs::read_to_string(marker_path(dir)) else {
        return zero;
    };
    let mut it = text.split_whitespace();
    match (
        it.next().and_then(|s| s.parse().ok()),
        it.next().and_then(|s| s.parse().ok()),
    ) {
        (Some(segment), Some(offset)) => Position { segment, offset },
        _ => zero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(r: &Recovery) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        r.replay(|chunk| {
            out.extend(chunk.iter().map(|p| p.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn appended_records_are_replayed_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.is_empty());
        j.append([b"one".as_slice(), b"two"]).unwrap();
        let end = j.append([b"three".as_slice()]).unwrap();
        assert_eq!(end.segment, 1);
        drop(j); // as after kill -9: nothing flushed or synced on the way out
        let (j2, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.segments, vec![1]);
        assert_eq!(
            replayed(&r),
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        // The new run writes after them, never into the old segment.
        assert_eq!(j2.start().segment, 2);
    }

    #[test]
    fn the_committed_marker_limits_replay_to_the_uncommitted_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let committed = j.append([b"stored".as_slice()]).unwrap();
        j.append([b"not yet".as_slice()]).unwrap();
        CommitMarker::new(dir.path()).write(committed).unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(replayed(&r), [b"not yet".to_vec()]);
    }

    #[test]
    fn the_marker_deletes_segments_wholly_committed_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append([b"a".as_slice()]).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        let end = j.append([b"b".as_slice()]).unwrap();
        let mut marker = CommitMarker::new(dir.path());
        // After replaying the previous run: its segment can go.
        marker.write(j.start()).unwrap();
        assert!(!segment_path(dir.path(), r.segments[0]).exists());
        marker.write(end).unwrap();
        marker.write(j.start()).unwrap(); // older: ignored
        assert_eq!(marker.position(), end);
        assert_eq!(read_marker(dir.path()), end);
        assert!(segment_path(dir.path(), end.segment).exists());
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append([b"whole".as_slice()]).unwrap();
        drop(j);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let mut torn = Vec::new();
        encode_record(&mut torn, b"cut short by the crash");
        for cut in [1, RECORD_HEADER - 1, RECORD_HEADER, torn.len() - 1] {
            let mut b = bytes.clone();
            b.extend_from_slice(&torn[..cut]);
            let r = read_records(&b, 0);
            assert_eq!(r.payloads, [b"whole".as_slice()], "cut at {cut}");
            assert_eq!(r.damage, Some(Damage::TornTail));
            assert_eq!(r.end as usize, bytes.len());
        }
        bytes.extend_from_slice(&torn[..5]);
        fs::write(&seg, &bytes).unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(replayed(&r), [b"whole".to_vec()]);
    }

    #[test]
    fn a_checksum_mismatch_stops_the_segment_without_failing_replay() {
        let mut b = MAGIC.to_vec();
        encode_record(&mut b, b"first");
        let second_at = b.len();
        encode_record(&mut b, b"second");
        encode_record(&mut b, b"third");
        b[second_at + RECORD_HEADER] ^= 0x20; // one flipped bit in "second"
        let r = read_records(&b, 0);
        assert_eq!(r.payloads, [b"first".as_slice()]);
        assert_eq!(r.damage, Some(Damage::Checksum));
        assert_eq!(r.end as usize, second_at);
        // An impossible length is damage too, not an allocation.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(read_records(&huge, 0).damage, Some(Damage::Checksum));
        assert_eq!(
            read_records(b"not a journal", 0).damage,
            Some(Damage::BadMagic)
        );
        assert_eq!(read_records(b"", 0).damage, None);
    }

    #[test]
    fn a_missing_or_garbled_marker_replays_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append([b"x".as_slice()]).unwrap();
        drop(j);
        fs::write(marker_path(dir.path()), "garbage").unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            r.from,
            Position {
                segment: 0,
                offset: 0
            }
        );
        assert_eq!(replayed(&r), [b"x".to_vec()]);
    }

    #[test]
    fn a_second_open_of_a_journal_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(EventsError::JournalBusy(_))
        ));
        drop(j);
        assert!(Journal::open(dir.path()).is_ok());
    }

    #[test]
    fn segments_roll_over_and_the_sync_handle_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let sync = j.syncer();
        let big = vec![7u8; 1 << 20];
        let mut last = j.start();
        for _ in 0..40 {
            last = j.append([big.as_slice()]).unwrap();
            sync.sync().unwrap();
        }
        assert_eq!(last.segment, 2);
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.segments, vec![1, 2]);
        assert_eq!(replayed(&r).len(), 40);
    }
}
