//! Opening archives: zip (and the zip-based Office formats), gzip, bzip2,
//! xz, tar and 7z. This module only walks a container and hands each entry's
//! decompressed stream to an [`EntrySink`]; the sink (the scanner) counts
//! every byte against the entry, size, ratio and time limits while it reads,
//! so a bomb is stopped by what it *produces*, never by what its headers
//! claim.

use std::collections::HashSet;
use std::io::{Read, Seek};

use crate::file_type::FileType;

/// Why the whole walk stops (every level): a limit was hit.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Entry count, expanded size or ratio exceeded; the detail says which.
    Bomb(String),
    /// The per-body time budget ran out.
    Timeout,
    /// One entry is larger than `max_scan_size`.
    TooLarge,
    /// A limit was hit and recorded deeper down: unwind every level.
    Unwind,
}

/// How a container could not be opened (its entries unseen).
#[derive(Debug)]
pub(crate) enum WalkError {
    Stop(Stop),
    /// The container itself is encrypted (7z with encrypted headers).
    Encrypted(&'static str),
    /// Malformed or unsupported; the detail says what.
    Corrupt(String),
}

impl From<Stop> for WalkError {
    fn from(s: Stop) -> Self {
        WalkError::Stop(s)
    }
}

pub(crate) trait EntrySink {
    /// Counts one entry (file, directory or encrypted) against the limit.
    fn count_entry(&mut self) -> Result<(), Stop>;
    /// Scans one entry from its decompressed stream. `compressed` is its
    /// stored size when the format records it per entry (zip). A read error
    /// of this entry is the sink's to record; `Err` stops the whole walk.
    fn entry(
        &mut self,
        name: &str,
        reader: &mut dyn Read,
        compressed: Option<u64>,
    ) -> Result<(), Stop>;
    /// An entry whose data is encrypted.
    fn encrypted(&mut self, name: &str, rule: &'static str);
    /// An entry that cannot be opened (an unsupported compression method);
    /// the others may still be.
    fn unreadable(&mut self, name: &str, detail: String);
}

/// Walks `reader` (a `kind` container) through `sink`. `gzip_name` names the
/// single member of a gzip, bzip2 or xz stream.
pub(crate) fn walk<R: Read + Seek>(
    kind: FileType,
    reader: R,
    gzip_name: &str,
    sevenz_memory_kib: u64,
    sink: &mut dyn EntrySink,
) -> Result<(), WalkError> {
    match kind {
        FileType::Zip | FileType::Docx | FileType::Xlsx | FileType::Pptx => walk_zip(reader, sink),
        FileType::Gzip => walk_single(flate2::read::MultiGzDecoder::new(reader), gzip_name, sink),
        FileType::Bzip2 => walk_single(bzip2::read::MultiBzDecoder::new(reader), gzip_name, sink),
        FileType::Xz => walk_single(
            // Multi-stream, and a dictionary no larger than 7z's allowance.
            lzma_rust2::XzReader::new_mem_limit(
                reader,
                true,
                u32::try_from(sevenz_memory_kib).unwrap_or(u32::MAX),
            ),
            gzip_name,
            sink,
        ),
        FileType::Tar => walk_tar(reader, sink),
        FileType::SevenZip => walk_7z(reader, sevenz_memory_kib, sink),
        _ => Ok(()),
    }
}

fn walk_zip<R: Read + Seek>(reader: R, sink: &mut dyn EntrySink) -> Result<(), WalkError> {
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| WalkError::Corrupt(format!("zip: {e}")))?;
    for i in 0..zip.len() {
        sink.count_entry()?;
        // Raw first: reading the flags needs no decryption or decompression.
        let (name, encrypted, is_dir, compressed) = {
            let raw = zip
                .by_index_raw(i)
                .map_err(|e| WalkError::Corrupt(format!("zip entry {i}: {e}")))?;
            let name = raw
                .name()
                .map(|n| n.into_owned())
                .unwrap_or_else(|_| format!("entry-{i}"));
            (name, raw.encrypted(), raw.is_dir(), raw.compressed_size())
        };
        if is_dir {
            continue;
        }
        if encrypted {
            sink.encrypted(&name, "zip-encrypted-entry");
            continue;
        }
        match zip.by_index(i) {
            Ok(mut file) => sink.entry(&name, &mut file, Some(compressed))?,
            Err(e) => sink.unreadable(&name, format!("zip: {e}")),
        }
    }
    Ok(())
}

/// A compressed stream of one file (gzip, bzip2, xz): its one entry.
/// Multi-member decoders: `cat a.gz b.gz` is one valid stream of both.
fn walk_single<D: Read>(
    mut decoder: D,
    name: &str,
    sink: &mut dyn EntrySink,
) -> Result<(), WalkError> {
    sink.count_entry()?;
    sink.entry(name, &mut decoder, None)?;
    Ok(())
}

/// Largest GNU long-name or pax header entry accepted. The tar crate reads
/// these into memory whole, so an archive could otherwise make it allocate
/// as much as its own size; real ones are a few hundred bytes.
const TAR_MAX_META_ENTRY: u64 = 64 * 1024;

/// Checks the sizes of the metadata entries (`L`, `K`, `x`, `g`) before the
/// tar crate reads them, by hopping from header to header.
fn tar_prescan<R: Read + Seek>(reader: &mut R) -> Result<(), WalkError> {
    use std::io::SeekFrom;
    let end = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| WalkError::Corrupt(format!("tar: {e}")))?;
    let mut at = 0u64;
    let mut header = [0u8; 512];
    while at.saturating_add(512) <= end {
        reader
            .seek(SeekFrom::Start(at))
            .and_then(|_| reader.read_exact(&mut header))
            .map_err(|e| WalkError::Corrupt(format!("tar: {e}")))?;
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let Some(size) = tar_size(&header[124..136]) else {
            // Let the tar crate report the malformed header.
            break;
        };
        if matches!(header[156], b'L' | b'K' | b'x' | b'g') && size > TAR_MAX_META_ENTRY {
            return Err(WalkError::Stop(Stop::Bomb(format!(
                "tar metadata entry of {size} bytes (more than {TAR_MAX_META_ENTRY})"
            ))));
        }
        at = at
            .saturating_add(512)
            .saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| WalkError::Corrupt(format!("tar: {e}")))?;
    Ok(())
}

/// A tar size field: octal text, or base-256 when the high bit is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

fn walk_tar<R: Read + Seek>(mut reader: R, sink: &mut dyn EntrySink) -> Result<(), WalkError> {
    tar_prescan(&mut reader)?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| WalkError::Corrupt(format!("tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| WalkError::Corrupt(format!("tar: {e}")))?;
        sink.count_entry()?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse()) {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        sink.entry(&name, &mut entry, None)?;
    }
    Ok(())
}

fn walk_7z<R: Read + Seek>(
    reader: R,
    memory_kib: u64,
    sink: &mut dyn EntrySink,
) -> Result<(), WalkError> {
    use sevenz_rust2::{ArchiveReader, EntryDecision, Error, Password};
    let memory_kib = usize::try_from(memory_kib).unwrap_or(usize::MAX);
    let mut archive =
        match ArchiveReader::new_with_memory_limit(reader, Password::empty(), memory_kib) {
            Ok(a) => a,
            // Encrypted headers: nothing, not even names, can be read.
            Err(Error::PasswordRequired) | Err(Error::MaybeBadPassword(_)) => {
                return Err(WalkError::Encrypted("7z-encrypted-headers"))
            }
            Err(e) => return Err(WalkError::Corrupt(format!("7z: {e}"))),
        };
    // The decoder would otherwise spawn threads per LZMA2 block.
    archive.set_thread_count(1);
    let mut encrypted = HashSet::new();
    for (i, file) in archive.archive().files.iter().enumerate() {
        sink.count_entry()?;
        if file.has_stream() && archive.archive().is_file_encrypted(i) {
            encrypted.insert(file.name().to_owned());
        }
    }
    for name in &encrypted {
        sink.encrypted(name, "7z-encrypted-entry");
    }
    let mut stop = None;
    let result = archive.for_each_entries_with_decision(|entry, reader| {
        if entry.is_directory() || !entry.has_stream() {
            return Ok(EntryDecision::Continue);
        }
        // Encryption is per block: the rest of this block is encrypted too.
        if encrypted.contains(entry.name()) {
            return Ok(EntryDecision::SkipBlock);
        }
        match sink.entry(entry.name(), reader, None) {
            Ok(()) => Ok(EntryDecision::Continue),
            Err(s) => {
                stop = Some(s);
                Ok(EntryDecision::Stop)
            }
        }
    });
    if let Some(s) = stop {
        return Err(WalkError::Stop(s));
    }
    match result {
        Ok(()) => Ok(()),
        Err(Error::PasswordRequired) | Err(Error::MaybeBadPassword(_)) if !encrypted.is_empty() => {
            Ok(())
        }
        Err(e) => Err(WalkError::Corrupt(format!("7z: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_size_fields_parse_octal_and_base256() {
        assert_eq!(tar_size(b"00000001750\0"), Some(1000));
        assert_eq!(tar_size(b"           \0"), Some(0));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 0x10;
        assert_eq!(tar_size(&b256), Some(16));
        assert_eq!(tar_size(b"12x45678901\0"), None);
    }

    #[test]
    fn huge_gnu_long_name_entry_is_refused_before_reading() {
        let mut header = [0u8; 512];
        header[..13].copy_from_slice(b"././@LongLink");
        header[124..136].copy_from_slice(b"77777777777\0");
        header[156] = b'L';
        let mut data = header.to_vec();
        data.extend_from_slice(&[b'a'; 1024]);
        let mut cursor = std::io::Cursor::new(data);
        assert!(matches!(
            tar_prescan(&mut cursor),
            Err(WalkError::Stop(Stop::Bomb(_)))
        ));
    }
}
