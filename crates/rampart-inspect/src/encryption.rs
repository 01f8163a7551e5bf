//! Encrypted documents that no engine can look into. Encrypted archive
//! entries (zip, 7z) are found by the archive walker from their headers;
//! this module covers the document formats:
//!
//! - OOXML (docx/xlsx/pptx) with a password is not a zip at all but a CFB
//!   (OLE2) container holding `EncryptionInfo` and `EncryptedPackage`
//!   streams ([MS-OFFCRYPTO] 2.3.4).
//! - PDF: an encrypted document names its security handler with `/Encrypt`
//!   in the trailer or the cross-reference stream dictionary (ISO 32000-1
//!   7.6.1); `/EncryptMetadata` is a different key and does not count.

use std::io::{self, Read, Seek};

/// Whether a CFB file is an encrypted OOXML package. A file that does not
/// parse as CFB is not called encrypted.
pub(crate) fn is_encrypted_ooxml<R: Read + Seek>(reader: R) -> bool {
    match cfb::CompoundFile::open(reader) {
        Ok(file) => file.is_stream("/EncryptionInfo") && file.is_stream("/EncryptedPackage"),
        Err(_) => false,
    }
}

/// Whether a PDF declares encryption: a `/Encrypt` name followed by a
/// delimiter, anywhere in the file (the trailer may be followed by
/// incremental updates, and xref streams sit anywhere).
pub(crate) fn pdf_has_encrypt<R: Read>(mut reader: R) -> io::Result<bool> {
    const KEY: &[u8] = b"/Encrypt";
    let finder = memchr::memmem::Finder::new(KEY);
    let mut buf = vec![0u8; 256 * 1024];
    // Bytes kept from the previous block so a key split by the block edge is
    // still seen, plus one for the delimiter after it.
    let keep = KEY.len();
    let mut filled = 0usize;
    loop {
        let n = reader.read(&mut buf[filled..])?;
        let end = filled + n;
        let window = &buf[..end];
        let mut at = 0;
        while let Some(i) = finder.find(&window[at..]) {
            let pos = at + i + KEY.len();
            match window.get(pos) {
                Some(next) if is_pdf_delimiter(*next) => return Ok(true),
                // Cut at the block edge: decide with the next block.
                None if n > 0 => break,
                _ => {}
            }
            at = pos;
        }
        if n == 0 {
            return Ok(false);
        }
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        filled = end - tail;
    }
}

/// PDF white-space and delimiter characters (ISO 32000-1 7.2.2), which end a
/// name: `/Encrypt 5 0 R`, `/Encrypt<<...>>`, `/Encrypt/...`.
fn is_pdf_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'\0'
            | b'\t'
            | b'\n'
            | b'\x0c'
            | b'\r'
            | b' '
            | b'('
            | b')'
            | b'<'
            | b'>'
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'/'
            | b'%'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_encrypt_key_is_found_but_encrypt_metadata_is_not() {
        assert!(pdf_has_encrypt(&b"trailer\n<< /Size 5 /Encrypt 4 0 R >>"[..]).unwrap());
        assert!(pdf_has_encrypt(&b"<</Encrypt<</Filter/Standard>>>>"[..]).unwrap());
        assert!(!pdf_has_encrypt(&b"<< /EncryptMetadata false >>"[..]).unwrap());
        assert!(!pdf_has_encrypt(&b"%PDF-1.4 plain"[..]).unwrap());
    }

    #[test]
    fn pdf_encrypt_key_split_across_reads_is_found() {
        // A reader returning 3 bytes at a time splits the key everywhere.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert!(pdf_has_encrypt(Trickle(b"xx /Encrypt 4 0 R")).unwrap());
        assert!(pdf_has_encrypt(Trickle(b"xx /Encrypt\n")).unwrap());
        assert!(!pdf_has_encrypt(Trickle(b"xx /EncryptMetadata\n")).unwrap());
    }
}
