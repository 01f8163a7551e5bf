//! File type by magic bytes: never by file name or `Content-Type`, which the
//! sender controls.
//!
//! The single-signature checks (PE/MZ, ELF, Mach-O, PDF, 7z, RAR, gzip,
//! bzip2, xz, PNG, JPEG, GIF, WebP) come from the maintained `infer` crate: it
//! needs no magic database at run time (unlike libmagic or `tree_magic_mini`),
//! is MIT-licensed and allocation-free. Its OOXML check only looks at the
//! first and third zip entries and misses documents written by other tools,
//! and it has no ISO 9660 or generic CFB matcher, so those, the tar header
//! checksum and the text test are small structural checks written here.
//!
//! How much to read: [`SNIFF_LEN`] bytes decide every type except `iso`,
//! whose volume descriptor sits at byte 32769; [`ISO_SNIFF_LEN`] covers that.
//! A shorter prefix is best effort: `sniff` reports what the bytes it has
//! prove (a zip whose `[Content_Types].xml` entry is cut off is `zip`, an ISO
//! cut before its descriptor is `unknown`), and never panics on any input.

use std::fmt;
use std::str::FromStr;

/// Bytes of a body's start that decide every type except `iso`.
pub const SNIFF_LEN: usize = 4096;

/// Bytes needed to recognise an ISO 9660 image: its first volume descriptor
/// (`CD001`) is at offset 0x8001, after a 32 KiB system area.
pub const ISO_SNIFF_LEN: usize = ISO_MAGIC_OFFSET + ISO_MAGIC.len();

const ISO_MAGIC_OFFSET: usize = 0x8001;
const ISO_MAGIC: &[u8] = b"CD001";
const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
const ZIP_LOCAL_HEADER: &[u8] = b"PK\x03\x04";
/// Local file entries looked at to tell OOXML from a plain zip. Office writes
/// `[Content_Types].xml` first and the part folders within the first few.
const OOXML_MAX_ENTRIES: usize = 32;

/// A file type recognised by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FileType {
    /// Windows PE (starts with `MZ`).
    Exe,
    Elf,
    MachO,
    Pdf,
    Zip,
    Docx,
    Xlsx,
    Pptx,
    /// OLE2 compound file (CFB): legacy Office documents, MSI, and encrypted
    /// OOXML, which is a CFB container around the encrypted package.
    Ole,
    SevenZip,
    Rar,
    Gzip,
    Bzip2,
    Xz,
    /// POSIX tar (`ustar` magic at offset 257).
    Tar,
    Iso,
    /// Starts with a shebang (`#!`).
    Script,
    Png,
    Jpeg,
    Gif,
    Webp,
    Html,
    /// Valid UTF-8 (ASCII included) without NUL bytes.
    Text,
    Unknown,
}

impl FileType {
    /// Every type, in the order of [`FileType::ALL_NAMES`].
    pub const ALL: [FileType; 24] = [
        FileType::Exe,
        FileType::Elf,
        FileType::MachO,
        FileType::Pdf,
        FileType::Zip,
        FileType::Docx,
        FileType::Xlsx,
        FileType::Pptx,
        FileType::Ole,
        FileType::SevenZip,
        FileType::Rar,
        FileType::Gzip,
        FileType::Bzip2,
        FileType::Xz,
        FileType::Tar,
        FileType::Iso,
        FileType::Script,
        FileType::Png,
        FileType::Jpeg,
        FileType::Gif,
        FileType::Webp,
        FileType::Html,
        FileType::Text,
        FileType::Unknown,
    ];

    /// The names a policy's `file_types` condition may use.
    pub const ALL_NAMES: [&'static str; 24] = [
        "exe", "elf", "macho", "pdf", "zip", "docx", "xlsx", "pptx", "ole", "7z", "rar", "gzip",
        "bzip2", "xz", "tar", "iso", "script", "png", "jpeg", "gif", "webp", "html", "text",
        "unknown",
    ];

    /// The short lowercase name used in policy and events.
    pub fn name(&self) -> &'static str {
        match self {
            FileType::Exe => "exe",
            FileType::Elf => "elf",
            FileType::MachO => "macho",
            FileType::Pdf => "pdf",
            FileType::Zip => "zip",
            FileType::Docx => "docx",
            FileType::Xlsx => "xlsx",
            FileType::Pptx => "pptx",
            FileType::Ole => "ole",
            FileType::SevenZip => "7z",
            FileType::Rar => "rar",
            FileType::Gzip => "gzip",
            FileType::Bzip2 => "bzip2",
            FileType::Xz => "xz",
            FileType::Tar => "tar",
            FileType::Iso => "iso",
            FileType::Script => "script",
            FileType::Png => "png",
            FileType::Jpeg => "jpeg",
            FileType::Gif => "gif",
            FileType::Webp => "webp",
            FileType::Html => "html",
            FileType::Text => "text",
            FileType::Unknown => "unknown",
        }
    }

    /// Whether the archive walker opens this type (zip-based Office files
    /// included: macros and embedded payloads live inside).
    pub fn is_archive(&self) -> bool {
        matches!(
            self,
            FileType::Zip
                | FileType::Docx
                | FileType::Xlsx
                | FileType::Pptx
                | FileType::SevenZip
                | FileType::Gzip
                | FileType::Bzip2
                | FileType::Xz
                | FileType::Tar
        )
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`FileType::ALL_NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown file type {name:?} (known: {})", FileType::ALL_NAMES.join(", "))]
pub struct UnknownFileType {
    pub name: String,
}

impl FromStr for FileType {
    type Err = UnknownFileType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileType::ALL
            .iter()
            .find(|t| t.name() == s)
            .copied()
            .ok_or_else(|| UnknownFileType { name: s.to_owned() })
    }
}

impl serde::Serialize for FileType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for FileType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The type of a body from its first bytes (pass at least [`SNIFF_LEN`], or
/// [`ISO_SNIFF_LEN`] to recognise ISO images; less is best effort).
pub fn sniff(prefix: &[u8]) -> FileType {
    if prefix.is_empty() {
        return FileType::Unknown;
    }
    // Tar first: its first 100 bytes are an entry name, which may well begin
    // with another type's magic ("MZ..."); a valid header checksum proves tar.
    if is_tar(prefix) {
        return FileType::Tar;
    }
    if prefix.starts_with(ZIP_LOCAL_HEADER) {
        return ooxml_kind(prefix).unwrap_or(FileType::Zip);
    }
    if infer::archive::is_zip(prefix) {
        return FileType::Zip;
    }
    if prefix.starts_with(CFB_MAGIC) {
        return FileType::Ole;
    }
    if infer::app::is_exe(prefix) {
        return FileType::Exe;
    }
    if prefix.starts_with(b"\x7fELF") {
        // infer wants a full ELF header; four bytes are the magic.
        return FileType::Elf;
    }
    if infer::app::is_mach(prefix) {
        return FileType::MachO;
    }
    if infer::archive::is_7z(prefix) {
        return FileType::SevenZip;
    }
    if infer::archive::is_rar(prefix) {
        return FileType::Rar;
    }
    if infer::archive::is_gz(prefix) {
        return FileType::Gzip;
    }
    if infer::archive::is_bz2(prefix) {
        return FileType::Bzip2;
    }
    if infer::archive::is_xz(prefix) {
        return FileType::Xz;
    }
    if infer::image::is_png(prefix) {
        return FileType::Png;
    }
    if infer::image::is_jpeg(prefix) {
        return FileType::Jpeg;
    }
    if prefix.starts_with(b"GIF87a") || prefix.starts_with(b"GIF89a") {
        return FileType::Gif;
    }
    if prefix.starts_with(b"RIFF") && infer::image::is_webp(prefix) {
        return FileType::Webp;
    }
    if is_iso(prefix) {
        return FileType::Iso;
    }
    // PDF after the binary formats: readers accept `%PDF` anywhere in the
    // first KiB, so a header hidden behind junk is still a PDF to us.
    if is_pdf(prefix) {
        return FileType::Pdf;
    }
    if prefix.starts_with(b"#!") {
        return FileType::Script;
    }
    if is_text(prefix) {
        if infer::text::is_html(prefix) {
            return FileType::Html;
        }
        return FileType::Text;
    }
    FileType::Unknown
}

/// A ustar header: magic at 257 and a checksum over the 512-byte header that
/// matches (POSIX.1-1988: the sum of all bytes with the checksum field taken
/// as spaces).
fn is_tar(prefix: &[u8]) -> bool {
    let Some(header) = prefix.get(..512) else {
        // Too short for a header: accept the magic alone (best effort).
        return prefix.get(257..262) == Some(b"ustar".as_slice());
    };
    if &header[257..262] != b"ustar" {
        return false;
    }
    let field = &header[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == stored
}

/// `%PDF` within the first KiB (as `infer::archive::is_pdf`, which tries
/// every offset one by one: a cost on every small text response typed).
fn is_pdf(prefix: &[u8]) -> bool {
    let searched = &prefix[..prefix.len().min(PDF_SEARCH_LIMIT)];
    memchr::memmem::find(searched, b"%PDF").is_some()
}

/// Acrobat accepts the PDF header anywhere in the first 1024 bytes
/// (PDF Reference 1.4, H.3.4.1).
const PDF_SEARCH_LIMIT: usize = 1024;

fn is_iso(prefix: &[u8]) -> bool {
    prefix.get(ISO_MAGIC_OFFSET..ISO_SNIFF_LEN) == Some(ISO_MAGIC)
}

/// UTF-8 (so ASCII) with no NUL byte. A multi-byte character cut by the end
/// of the prefix does not disqualify it.
fn is_text(prefix: &[u8]) -> bool {
    if memchr::memchr(0, prefix).is_some() {
        return false;
    }
    match std::str::from_utf8(prefix) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && prefix.len() - e.valid_up_to() < 4,
    }
}

/// Walks the zip local file headers in the prefix and tells OOXML apart: a
/// `[Content_Types].xml` part plus a `word/`, `xl/` or `ppt/` folder.
fn ooxml_kind(prefix: &[u8]) -> Option<FileType> {
    let mut content_types = false;
    let mut kind = None;
    let mut at = 0usize;
    for _ in 0..OOXML_MAX_ENTRIES {
        let header = prefix.get(at..at.checked_add(30)?)?;
        if !header.starts_with(ZIP_LOCAL_HEADER) {
            break;
        }
        let flags = u16::from_le_bytes([header[6], header[7]]);
        let compressed = u32::from_le_bytes([header[18], header[19], header[20], header[21]]);
        let name_len = usize::from(u16::from_le_bytes([header[26], header[27]]));
        let extra_len = usize::from(u16::from_le_bytes([header[28], header[29]]));
        let name_start = at + 30;
        let Some(name) = prefix.get(name_start..name_start + name_len) else {
            break;
        };
        if name == b"[Content_Types].xml" {
            content_types = true;
        } else if kind.is_none() {
            kind = if name.starts_with(b"word/") {
                Some(FileType::Docx)
            } else if name.starts_with(b"xl/") {
                Some(FileType::Xlsx)
            } else if name.starts_with(b"ppt/") {
                Some(FileType::Pptx)
            } else {
                None
            };
        }
        if content_types && kind.is_some() {
            return kind;
        }
        let data_start = name_start + name_len + extra_len;
        // Bit 3: sizes follow the data in a descriptor; find the next header
        // by its signature instead.
        at = if flags & 0x0008 != 0 && compressed == 0 {
            let rest = prefix.get(data_start..)?;
            data_start + memchr::memmem::find(rest, ZIP_LOCAL_HEADER)?
        } else {
            data_start.checked_add(usize::try_from(compressed).ok()?)?
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip local file header for `name` holding `data` stored.
    fn local_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"PK\x03\x04");
        v.extend_from_slice(&20u16.to_le_bytes()); // version
        v.extend_from_slice(&0u16.to_le_bytes()); // flags
        v.extend_from_slice(&0u16.to_le_bytes()); // stored
        v.extend_from_slice(&[0; 4]); // time, date
        v.extend_from_slice(&[0; 4]); // crc (unchecked here)
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&(name.len() as u16).to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn ooxml(folder_file: &str) -> Vec<u8> {
        let mut v = local_entry("[Content_Types].xml", b"<?xml version=\"1.0\"?><Types/>");
        v.extend(local_entry("_rels/.rels", b"<Relationships/>"));
        v.extend(local_entry(folder_file, b"<doc/>"));
        v
    }

    fn tar_header(name: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        h
    }

    #[test]
    fn executables_by_magic() {
        assert_eq!(sniff(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00"), FileType::Exe);
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01\x00"), FileType::Elf);
        assert_eq!(
            sniff(&[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]),
            FileType::MachO
        );
        assert_eq!(
            sniff(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2]),
            FileType::MachO
        );
    }

    #[test]
    fn java_class_is_not_fat_macho() {
        // CAFEBABE followed by a class file version (>= 45) is Java.
        assert_ne!(
            sniff(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52]),
            FileType::MachO
        );
    }

    #[test]
    fn documents_by_magic() {
        assert_eq!(sniff(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), FileType::Pdf);
        assert_eq!(sniff(b"junk before the header\n%PDF-1.4\n"), FileType::Pdf);
        let mut ole = CFB_MAGIC.to_vec();
        ole.extend_from_slice(&[0; 24]);
        assert_eq!(sniff(&ole), FileType::Ole);
    }

    #[test]
    fn plain_zip_and_ooxml_are_told_apart() {
        let mut zip = local_entry("readme.txt", b"hello");
        zip.extend_from_slice(b"PK\x05\x06");
        assert_eq!(sniff(&zip), FileType::Zip);
        assert_eq!(sniff(b"PK\x05\x06\0\0\0\0"), FileType::Zip); // empty zip
        assert_eq!(sniff(&ooxml("word/document.xml")), FileType::Docx);
        assert_eq!(sniff(&ooxml("xl/workbook.xml")), FileType::Xlsx);
        assert_eq!(sniff(&ooxml("ppt/presentation.xml")), FileType::Pptx);
        // A folder without the content-types part is just a zip.
        assert_eq!(
            sniff(&local_entry("word/document.xml", b"x")),
            FileType::Zip
        );
    }

    #[test]
    fn ooxml_cut_short_is_best_effort_zip() {
        let doc = ooxml("word/document.xml");
        assert_eq!(sniff(&doc[..40]), FileType::Zip);
    }

    #[test]
    fn compressed_and_archive_formats() {
        assert_eq!(
            sniff(&[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c, 0, 4]),
            FileType::SevenZip
        );
        assert_eq!(sniff(b"Rar!\x1a\x07\x01\x00"), FileType::Rar);
        assert_eq!(sniff(b"Rar!\x1a\x07\x00"), FileType::Rar);
        assert_eq!(
            sniff(&[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3]),
            FileType::Gzip
        );
        assert_eq!(sniff(b"BZh91AY&SY"), FileType::Bzip2);
        assert_eq!(
            sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4]),
            FileType::Xz
        );
    }

    #[test]
    fn tar_by_ustar_and_checksum() {
        let mut t = tar_header("MZ-looking-name.txt");
        t.extend_from_slice(&[0; 1024]);
        assert_eq!(sniff(&t), FileType::Tar);
        // The magic with a wrong checksum is not trusted.
        let mut bad = tar_header("a.txt");
        bad[0] = b'b';
        assert_ne!(sniff(&bad), FileType::Tar);
        // Too short for a full header: the magic alone, best effort.
        assert_eq!(sniff(&t[..300]), FileType::Tar);
    }

    #[test]
    fn iso_needs_the_volume_descriptor() {
        let mut iso = vec![0u8; ISO_SNIFF_LEN + 100];
        iso[0x8000] = 1;
        iso[ISO_MAGIC_OFFSET..ISO_SNIFF_LEN].copy_from_slice(ISO_MAGIC);
        assert_eq!(sniff(&iso), FileType::Iso);
        assert_eq!(sniff(&iso[..ISO_SNIFF_LEN]), FileType::Iso);
        // Best effort: cut before the descriptor, it is unknown.
        assert_eq!(sniff(&iso[..SNIFF_LEN]), FileType::Unknown);
    }

    #[test]
    fn images() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), FileType::Png);
        assert_eq!(
            sniff(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F']),
            FileType::Jpeg
        );
        assert_eq!(sniff(b"GIF89a\x01\x00\x01\x00"), FileType::Gif);
        assert_eq!(sniff(b"GIF87a\x01\x00\x01\x00"), FileType::Gif);
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), FileType::Webp);
        assert_ne!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), FileType::Webp);
    }

    #[test]
    fn scripts_html_and_text() {
        assert_eq!(sniff(b"#!/bin/sh\nrm -rf /tmp/x\n"), FileType::Script);
        assert_eq!(sniff(b"#!/usr/bin/env python3\n"), FileType::Script);
        assert_eq!(
            sniff(b"<!DOCTYPE html>\n<html><body>hi</body></html>"),
            FileType::Html
        );
        assert_eq!(sniff(b"  <html>\n"), FileType::Html);
        assert_eq!(sniff(b"hello, world\n"), FileType::Text);
        assert_eq!(sniff("grüße, 世界\n".as_bytes()), FileType::Text);
        // A multi-byte character cut by the prefix end is still text.
        let s = "price: 5 €".as_bytes();
        assert_eq!(sniff(&s[..s.len() - 1]), FileType::Text);
    }

    #[test]
    fn binary_and_empty_are_unknown() {
        assert_eq!(sniff(b""), FileType::Unknown);
        assert_eq!(sniff(b"text\0with nul"), FileType::Unknown);
        assert_eq!(sniff(&[0xff, 0xfe, 0xfd, 0x00, 0x01]), FileType::Unknown);
        assert_eq!(sniff(b"\xc3\x28 invalid utf8"), FileType::Unknown);
    }

    #[test]
    fn names_round_trip_and_are_complete() {
        for (t, name) in FileType::ALL.iter().zip(FileType::ALL_NAMES) {
            assert_eq!(t.name(), name);
            assert_eq!(name.parse::<FileType>(), Ok(*t));
        }
        let err = "docxx".parse::<FileType>().unwrap_err();
        assert!(err.to_string().contains("docxx"));
    }

    #[test]
    fn every_prefix_length_is_safe() {
        let mut inputs = vec![ooxml("word/document.xml"), tar_header("a")];
        inputs.push(b"PK\x03\x04\x14\x00\x08\x00\x00\x00".to_vec());
        for input in inputs {
            for len in 0..=input.len() {
                let _ = sniff(&input[..len]);
            }
        }
    }
}
