//! One body's scan: fed chunk by chunk while the gateway forwards it, then
//! finished (blocking; call it under `spawn_blocking`) for the verdict.

use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::InspectError;
use crate::file_type::{sniff, ISO_SNIFF_LEN};
use crate::inspector::Inner;
use crate::scanner::Walk;
use crate::spool::Spool;
use crate::verdict::{Direction, Engine, Finding, ScanReport, UnscannableReason, Verdict};

/// What the gateway knows about a body. Only used for naming and for the
/// direction: the type always comes from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanContext {
    pub direction: Direction,
    /// From `Content-Disposition`, a multipart part or the URL path.
    pub file_name: Option<String>,
    pub content_type: Option<String>,
}

impl ScanContext {
    pub fn download() -> ScanContext {
        ScanContext {
            direction: Direction::Download,
            file_name: None,
            content_type: None,
        }
    }

    pub fn upload() -> ScanContext {
        ScanContext {
            direction: Direction::Upload,
            file_name: None,
            content_type: None,
        }
    }

    pub fn with_file_name(mut self, name: impl Into<String>) -> ScanContext {
        self.file_name = Some(name.into());
        self
    }

    /// The body's `Content-Type`: an upload sent as `multipart/form-data` is
    /// scanned part by part, each named by its file name.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> ScanContext {
        self.content_type = Some(content_type.into());
        self
    }
}

/// A body being scanned. Memory is bounded by `memory_threshold`; the spool
/// file (if any) is deleted when the session drops.
pub struct ScanSession {
    inner: Arc<Inner>,
    context: ScanContext,
    hasher: Sha256,
    spool: Spool,
    size: u64,
    /// Past `max_scan_size`: still hashed, no longer kept.
    truncated: bool,
    spool_error: Option<String>,
}

impl ScanSession {
    pub(crate) fn new(inner: Arc<Inner>, context: ScanContext) -> ScanSession {
        let spool = Spool::new(inner.config.memory_threshold, &inner.spool_dir);
        ScanSession {
            inner,
            context,
            hasher: Sha256::new(),
            spool,
            size: 0,
            truncated: false,
            spool_error: None,
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the body has passed `max_scan_size` (its verdict will be
    /// `unscannable: too-large`, or worse).
    pub fn is_too_large(&self) -> bool {
        self.truncated
    }

    /// Adds the next chunk of the body. Errors only when the spool file
    /// cannot be written; the session then finishes as `unscannable:
    /// engine-error`, so the gateway may ignore the error and carry on.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        // The hash covers every byte, also past the cap, so hash lists still
        // recognise a file too large to scan.
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.truncated || self.spool_error.is_some() {
            return Ok(());
        }
        let max = self.inner.config.max_scan_size;
        let room = max.saturating_sub(self.spool.len());
        let keep = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if let Err(e) = self.spool.write(keep) {
            self.spool_error = Some(e.to_string());
            return Err(InspectError::Spool(e));
        }
        if keep.len() < chunk.len() {
            self.truncated = true;
        }
        Ok(())
    }

    /// The boundary of an upload sent as `multipart/form-data`.
    fn form_boundary(&self) -> Option<String> {
        if self.context.direction != Direction::Upload {
            return None;
        }
        crate::multipart::boundary(self.context.content_type.as_deref()?)
    }

    /// How many bytes of the body are kept for the scan: every byte fed, up
    /// to `max_scan_size`.
    pub fn kept_len(&self) -> u64 {
        self.spool.len()
    }

    /// A second handle on the spool file, once the kept bytes have spilled
    /// past `memory_threshold` to disk (`None` while they are in memory): the
    /// gateway forwards a held upload from it, with positioned reads
    /// (`FileExt::read_at`) because the scan moves the shared file offset.
    /// The file holds the first [`ScanSession::kept_len`] bytes of the body
    /// and stays readable through this handle after the session is dropped.
    pub fn spool_file(&self) -> Option<std::io::Result<std::fs::File>> {
        self.spool.file().map(std::fs::File::try_clone)
    }

    /// Scans what was fed and returns the report. Blocking (file I/O,
    /// decompression, rule engines, clamd): run it off the async workers.
    pub fn finish(self) -> ScanReport {
        let started = Instant::now();
        let sha256: [u8; 32] = self.hasher.clone().finalize().into();
        let sha_hex = hex::encode(sha256);
        let root = root_name(&self.context);
        let head = self.spool.head(ISO_SNIFF_LEN).unwrap_or_default();
        let file_type = sniff(&head);
        let mut walk = Walk::new(&self.inner, self.context.direction, started);
        if let Some(message) = &self.spool_error {
            walk.findings.push(Finding {
                verdict: Verdict::Unscannable(UnscannableReason::EngineError),
                reason: Some(UnscannableReason::EngineError),
                container_path: root.clone(),
                engine: Engine::Scanner,
                rule_or_signature: format!("spool: {message}"),
                file_type,
                sha256: sha_hex.clone(),
                size: self.size,
                count: 0,
                masked_matches: Vec::new(),
                fail: None,
            });
            walk.check_hashes_only(&root, file_type, &sha256, self.size);
        } else if self.truncated {
            walk.findings.push(Finding {
                verdict: Verdict::Unscannable(UnscannableReason::TooLarge),
                reason: Some(UnscannableReason::TooLarge),
                container_path: root.clone(),
                engine: Engine::Scanner,
                rule_or_signature: format!(
                    "larger than max_scan_size ({} bytes)",
                    self.inner.config.max_scan_size
                ),
                file_type,
                sha256: sha_hex.clone(),
                size: self.size,
                count: 0,
                masked_matches: Vec::new(),
                fail: None,
            });
            walk.check_hashes_only(&root, file_type, &sha256, self.size);
            // Rules and DLP still look at the part that was kept.
            walk.scan_prefix(&root, &self.spool, file_type, &sha_hex);
        } else if let Some(boundary) = self.form_boundary() {
            walk.scan_form(&root, &self.spool, &sha256, &boundary);
        } else {
            walk.scan_object(&root, &self.spool, &sha256, 0);
        }
        let times = walk.times;
        ScanReport::new(
            file_type,
            self.size,
            sha_hex,
            walk.findings,
            started.elapsed(),
            times,
        )
    }
}

/// The top-level name in container paths: the file name's last path
/// segment, or `body`.
fn root_name(context: &ScanContext) -> String {
    context
        .file_name
        .as_deref()
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .filter(|n| !n.is_empty())
        .unwrap_or("body")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_name_is_the_last_segment() {
        let c = ScanContext::download().with_file_name("dir/sub/invoice.zip");
        assert_eq!(root_name(&c), "invoice.zip");
        assert_eq!(root_name(&ScanContext::upload()), "body");
    }
}
