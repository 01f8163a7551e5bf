//! A body or extracted archive entry, in memory up to a threshold and in an
//! anonymous temporary file past it, so memory per flow stays bounded.
//!
//! The file is created with `tempfile::tempfile_in`, which unlinks it at
//! once: it disappears when the `Spool` drops, and also when the process
//! dies, so a crash never leaves bodies on disk.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    threshold: u64,
    dir: PathBuf,
}

impl Spool {
    pub(crate) fn new(threshold: u64, dir: &Path) -> Spool {
        Spool {
            memory: Vec::new(),
            file: None,
            len: 0,
            threshold,
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `data`. Writes are positioned at the end of what was kept
    /// (`write_all_at`): readers (`head`, `reader`) move the file's shared
    /// offset, and a streaming body is read (typed, sent to clamd) between
    /// two writes.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.len + data.len() as u64 > self.threshold {
            let file = tempfile::tempfile_in(&self.dir)?;
            file.write_all_at(&self.memory, 0)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all_at(data, self.len)?,
            None => self.memory.extend_from_slice(data),
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
        match &self.file {
            None => Ok(self.memory[..n.min(self.memory.len())].to_vec()),
            Some(file) => {
                let mut reader = file;
                reader.seek(SeekFrom::Start(0))?;
                let mut buf = Vec::with_capacity(n);
                reader.take(n as u64).read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// A reader from the start. One reader at a time: readers of a spooled
    /// file share its offset.
    pub(crate) fn reader(&self) -> io::Result<SpoolReader<'_>> {
        match &self.file {
            None => Ok(SpoolReader::Memory(Cursor::new(&self.memory))),
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
    /// (YARA): the memory buffer, or a read-only map of the spool file.
    #[cfg(feature = "yara")]
    pub(crate) fn bytes(&self) -> io::Result<SpoolBytes<'_>> {
        match &self.file {
            None => Ok(SpoolBytes::Memory(&self.memory)),
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

pub(crate) enum SpoolReader<'a> {
    Memory(Cursor<&'a Vec<u8>>),
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
    Map(memmap2::Mmap),
}

#[cfg(feature = "yara")]
impl std::ops::Deref for SpoolBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SpoolBytes::Memory(m) => m,
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
        let mut s = Spool::new(10, dir.path());
        s.write(b"0123456789").unwrap();
        assert!(s.file.is_none());
        s.write(b"abc").unwrap();
        assert!(s.file.is_some());
        assert!(s.memory.is_empty());
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
}
