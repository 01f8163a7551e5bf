//! A body or extracted archive entry, in memory up to a threshold and in an
//! anonymous temporary file past it, so memory per flow stays bounded.
//!
//! The file is created with `tempfile::tempfile_in`, which unlinks it at
//! once: it disappears when the `Spool` drops, and also when the process
//! dies, so a crash never leaves bodies on disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub(crate) struct Spool {
    /// Below the threshold: the content as it came, in order. Chunks handed
    /// over as `Bytes` ([`Spool::push`]) are kept by reference — the same
    /// memory as the gateway's held body, not a copy; bytes written as
    /// slices ([`Spool::write`]) gather in `tail`, which starts empty and
    /// grows with what is written.
    memory: Vec<Bytes>,
    tail: BytesMut,
    file: Option<File>,
    len: u64,
    threshold: u64,
    dir: Arc<Path>,
}

impl Spool {
    pub(crate) fn new(threshold: u64, dir: &Arc<Path>) -> Spool {
        Spool {
            memory: Vec::new(),
            tail: BytesMut::new(),
            file: None,
            len: 0,
            threshold,
            dir: dir.clone(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The in-memory content, in order (empty once spilled to the file).
    fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.memory
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|s| !s.is_empty())
    }

    /// Moves what is in memory to a new spool file; later content goes to
    /// the file. A body known to be longer than the threshold spills at
    /// once: holding its start in memory first would only delay the file.
    pub(crate) fn spill(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let file = tempfile::tempfile_in(&self.dir)?;
        let mut at = 0u64;
        for segment in self.segments() {
            file.write_all_at(segment, at)?;
            at += segment.len() as u64;
        }
        self.memory = Vec::new();
        self.tail = BytesMut::new();
        self.file = Some(file);
        Ok(())
    }

    fn make_room(&mut self, more: usize) -> io::Result<()> {
        if self.file.is_none() && self.len + more as u64 > self.threshold {
            self.spill()?;
        }
        Ok(())
    }

    /// Appends a copy of `data`. Writes are positioned at the end of what was
    /// kept (`write_all_at`): readers (`head`, `reader`) move the file's
    /// shared offset, and a streaming body is read (typed, sent to clamd)
    /// between two writes.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.make_room(data.len())?;
        match &mut self.file {
            Some(file) => file.write_all_at(data, self.len)?,
            None => self.tail.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Appends `data` without copying it while it stays in memory.
    pub(crate) fn push(&mut self, data: Bytes) -> io::Result<()> {
        self.make_room(data.len())?;
        match &mut self.file {
            Some(file) => file.write_all_at(&data, self.len)?,
            None => {
                if !self.tail.is_empty() {
                    let written = self.tail.split().freeze();
                    self.memory.push(written);
                }
                self.len += data.len() as u64;
                self.memory.push(data);
                return Ok(());
            }
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// The spool file, once the content has spilled to disk.
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The first `n` bytes (fewer if the spool is shorter).
    pub(crate) fn head(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(n.min(usize::try_from(self.len).unwrap_or(n)));
        match &self.file {
            None => {
                for segment in self.segments() {
                    let want = n - buf.len();
                    if want == 0 {
                        break;
                    }
                    buf.extend_from_slice(&segment[..want.min(segment.len())]);
                }
            }
            Some(file) => {
                let mut reader = file;
                reader.seek(SeekFrom::Start(0))?;
                reader.take(n as u64).read_to_end(&mut buf)?;
            }
        }
        Ok(buf)
    }

    /// `f` of the first `n` bytes (fewer if the spool is shorter), without a
    /// copy when they sit in the first chunk in memory (a small body).
    pub(crate) fn with_head<T>(&self, n: usize, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        if self.file.is_none() {
            let first = self.segments().next().unwrap_or_default();
            if first.len() as u64 == self.len || first.len() >= n {
                return Ok(f(&first[..n.min(first.len())]));
            }
        }
        Ok(f(&self.head(n)?))
    }

    /// A reader from the start. One reader at a time: readers of a spooled
    /// file share its offset.
    pub(crate) fn reader(&self) -> io::Result<SpoolReader<'_>> {
        match &self.file {
            None => Ok(SpoolReader::Memory(MemoryReader::new(
                self.segments().collect(),
            ))),
            Some(file) => {
                let mut f = file;
                f.seek(SeekFrom::Start(0))?;
                Ok(SpoolReader::File(io::BufReader::with_capacity(
                    64 * 1024,
                    f,
                )))
            }
        }
    }

    /// The whole content as one slice, for engines that need it contiguous
    /// (YARA): the memory buffer (joined into one copy only when it came
    /// in several chunks), or a read-only map of the spool file.
    #[cfg(feature = "yara")]
    pub(crate) fn bytes(&self) -> io::Result<SpoolBytes<'_>> {
        match &self.file {
            None => {
                let mut segments = self.segments();
                match (segments.next(), segments.next()) {
                    (None, _) => Ok(SpoolBytes::Memory(&[])),
                    (Some(only), None) => Ok(SpoolBytes::Memory(only)),
                    _ => {
                        let mut joined = Vec::with_capacity(self.len as usize);
                        for segment in self.segments() {
                            joined.extend_from_slice(segment);
                        }
                        Ok(SpoolBytes::Joined(joined))
                    }
                }
            }
            Some(_) if self.len == 0 => Ok(SpoolBytes::Memory(&[])),
            Some(file) => {
                // SAFETY: the file is private to this Spool (created unlinked
                // by tempfile_in, never shared), so nothing else can truncate
                // or change it while the map lives; the map borrows `self`,
                // which blocks further writes.
                // Populated at once: YARA reads every page in order, and
                // one pre-fault pass costs less than a fault per few pages.
                let map = unsafe { memmap2::MmapOptions::new().populate().map(file)? };
                Ok(SpoolBytes::Map(map))
            }
        }
    }
}

/// Reads the in-memory segments of a spool in order, as one stream.
pub(crate) struct MemoryReader<'a> {
    segments: Vec<&'a [u8]>,
    /// The segment the next read starts in, and the offset within it.
    index: usize,
    offset: usize,
    position: u64,
    len: u64,
}

impl<'a> MemoryReader<'a> {
    fn new(segments: Vec<&'a [u8]>) -> MemoryReader<'a> {
        let len = segments.iter().map(|s| s.len() as u64).sum();
        MemoryReader {
            segments,
            index: 0,
            offset: 0,
            position: 0,
            len,
        }
    }
}

impl Read for MemoryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.get(self.index) {
            let rest = &segment[self.offset.min(segment.len())..];
            if rest.is_empty() {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.offset += n;
            self.position += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

impl Seek for MemoryReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid seek to a negative or overflowing position",
            )
        })?;
        // Past the end is allowed (as for a file): reads then return 0.
        let mut left = target;
        self.index = self.segments.len();
        self.offset = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            if left < segment.len() as u64 {
                self.index = i;
                self.offset = left as usize;
                break;
            }
            left -= segment.len() as u64;
        }
        self.position = target;
        Ok(target)
    }
}

pub(crate) enum SpoolReader<'a> {
    Memory(MemoryReader<'a>),
    File(io::BufReader<&'a File>),
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SpoolReader::Memory(c) => c.read(buf),
            SpoolReader::File(f) => f.read(buf),
        }
    }
}

impl Seek for SpoolReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            SpoolReader::Memory(c) => c.seek(pos),
            SpoolReader::File(f) => f.seek(pos),
        }
    }
}

#[cfg(feature = "yara")]
pub(crate) enum SpoolBytes<'a> {
    Memory(&'a [u8]),
    Joined(Vec<u8>),
    Map(memmap2::Mmap),
}

#[cfg(feature = "yara")]
impl std::ops::Deref for SpoolBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SpoolBytes::Memory(m) => m,
            SpoolBytes::Joined(j) => j,
            SpoolBytes::Map(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_memory_below_threshold_and_spills_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(10, &Arc::from(dir.path()));
        s.write(b"0123456789").unwrap();
        assert!(s.file.is_none());
        s.write(b"abc").unwrap();
        assert!(s.file.is_some());
        assert!(s.memory.is_empty() && s.tail.is_empty());
        let mut all = Vec::new();
        s.reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789abc");
        assert_eq!(s.head(4).unwrap(), b"0123");
        assert_eq!(s.len(), 13);
        // A read between two writes moves the file offset; writes still append.
        s.write(b"def").unwrap();
        let mut all = Vec::new();
        s.reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789abcdef");
        // Unlinked at creation: nothing is visible in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pushed_chunks_are_kept_by_reference_and_read_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(1024, &Arc::from(dir.path()));
        let shared = Bytes::from_static(b"0123");
        s.push(shared.clone()).unwrap();
        s.write(b"45").unwrap();
        s.push(Bytes::from_static(b"6789")).unwrap();
        s.write(b"ab").unwrap();
        assert!(s.file.is_none());
        // The same memory, not a copy.
        assert_eq!(s.memory[0].as_ptr(), shared.as_ptr());
        assert_eq!(s.len(), 12);
        assert_eq!(s.head(5).unwrap(), b"01234");
        let mut all = Vec::new();
        let mut reader = s.reader().unwrap();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789ab");
        let mut two = [0u8; 2];
        reader.seek(SeekFrom::Start(5)).unwrap();
        reader.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"56");
        reader.seek(SeekFrom::End(-2)).unwrap();
        reader.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"ab");
        reader.seek(SeekFrom::Current(-4)).unwrap();
        reader.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"89");
        assert_eq!(reader.seek(SeekFrom::Start(40)).unwrap(), 40);
        assert_eq!(reader.read(&mut two).unwrap(), 0);
        assert!(reader.seek(SeekFrom::Current(-100)).is_err());
        drop(reader);
        #[cfg(feature = "yara")]
        assert_eq!(&*s.bytes().unwrap(), b"0123456789ab");
        s.spill().unwrap();
        assert!(s.file.is_some() && s.memory.is_empty());
        let mut all = Vec::new();
        s.reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789ab");
    }
}
