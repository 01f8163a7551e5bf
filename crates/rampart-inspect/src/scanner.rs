//! The scanning core: one object (the body, or an archive entry) goes
//! through type → archive walk → encryption → hash lists → YARA → clamd →
//! DLP, and archive entries recurse through the same steps. Limits are
//! shared by the whole body: entry count, expanded bytes and the time budget.

use std::io::Read;
use std::time::Instant;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::archive::{self, EntrySink, Stop, WalkError};
use crate::clamd::ClamdVerdict;
use crate::file_type::{sniff, FileType, ISO_SNIFF_LEN};
use crate::inspector::Inner;
use crate::session::{ClamdOutcome, Streamed};
use crate::spool::Spool;
use crate::verdict::{Direction, Engine, EngineTimes, Finding, UnscannableReason, Verdict};

const READ_BLOCK: usize = 256 * 1024;

pub(crate) struct Walk<'a> {
    inner: &'a Inner,
    direction: Direction,
    deadline: Instant,
    entries: u64,
    expanded: u64,
    /// Set once a limit stopped the walk: nothing more is opened.
    stopped: bool,
    pub(crate) findings: Vec<Finding>,
    pub(crate) times: EngineTimes,
    /// Engine results the session computed while the body streamed: used
    /// for the top-level object instead of reading its spool again.
    pub(crate) streamed: Streamed,
    /// The top-level object's type and hex SHA-256 when the session already
    /// computed them (taken by the depth-0 `scan_object`).
    pub(crate) root: Option<(FileType, String)>,
}

/// Facts about the object being scanned, for findings.
struct Object<'p> {
    path: &'p str,
    file_type: FileType,
    sha256: String,
    size: u64,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(inner: &'a Inner, direction: Direction, started: Instant) -> Walk<'a> {
        Walk {
            inner,
            direction,
            deadline: started + inner.config.scan_timeout,
            entries: 0,
            expanded: 0,
            stopped: false,
            findings: Vec::new(),
            times: EngineTimes::default(),
            streamed: Streamed::default(),
            root: None,
        }
    }

    #[cfg(feature = "yara")]
    fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    fn push(&mut self, obj: &Object<'_>, verdict: Verdict, engine: Engine, rule: String) {
        self.findings.push(Finding {
            verdict,
            reason: verdict.reason(),
            container_path: obj.path.to_owned(),
            engine,
            rule_or_signature: rule,
            file_type: obj.file_type,
            sha256: obj.sha256.clone(),
            size: obj.size,
            count: 0,
            masked_matches: Vec::new(),
            fail: None,
        });
    }

    fn push_failure(
        &mut self,
        obj: &Object<'_>,
        reason: UnscannableReason,
        engine: Engine,
        rule: String,
        fail: Option<crate::config::FailMode>,
    ) {
        self.push(obj, Verdict::Unscannable(reason), engine, rule);
        if let Some(f) = self.findings.last_mut() {
            f.fail = fail;
        }
    }

    fn timed_out(&mut self, obj: &Object<'_>, during: &str) {
        if !self.stopped {
            self.stopped = true;
            self.push(
                obj,
                Verdict::Unscannable(UnscannableReason::Timeout),
                Engine::Scanner,
                format!(
                    "scan_timeout ({:?}) reached during {during}",
                    self.inner.config.scan_timeout
                ),
            );
        }
    }

    /// Scans one complete object held in `spool`.
    pub(crate) fn scan_object(&mut self, path: &str, spool: &Spool, sha256: &[u8; 32], depth: u32) {
        // A streamed body whose spool holds only its start: its full length.
        let (kept, known) = if depth == 0 {
            (self.streamed.kept.take(), self.root.take())
        } else {
            (None, None)
        };
        let (file_type, sha256_hex) = known.unwrap_or_else(|| {
            (
                spool
                    .with_head(ISO_SNIFF_LEN, sniff)
                    .unwrap_or(FileType::Unknown),
                hex::encode(sha256),
            )
        });
        let obj = Object {
            path,
            file_type,
            sha256: sha256_hex,
            size: kept.unwrap_or_else(|| spool.len()),
        };
        // 1. Archives.
        if obj.file_type.is_archive() && !self.stopped {
            if depth >= self.inner.config.archive.max_depth {
                self.push(
                    &obj,
                    Verdict::Unscannable(UnscannableReason::TooDeep),
                    Engine::Archive,
                    format!(
                        "archive nested deeper than max_depth ({})",
                        self.inner.config.archive.max_depth
                    ),
                );
            } else {
                self.walk_archive(&obj, spool, depth);
            }
        }
        // 2. Encrypted documents.
        let t = Instant::now();
        self.check_encryption(&obj, spool);
        self.times.encryption += t.elapsed();
        // 3. Hash lists.
        let t = Instant::now();
        let legacy = if depth == 0 {
            self.streamed.legacy.take()
        } else {
            None
        };
        self.check_hashes(&obj, spool, sha256, legacy);
        self.times.hash += t.elapsed();
        // 4. YARA (decided from the streamed presence scan for a body that
        // streamed: `yara` module).
        let t = Instant::now();
        #[cfg(feature = "yara")]
        let witness = if depth == 0 {
            self.streamed.yara.take()
        } else {
            None
        };
        #[cfg(not(feature = "yara"))]
        let witness = None;
        self.check_yara(&obj, spool, witness);
        self.times.yara += t.elapsed();
        // 5. clamd sees the body once: it opens archives itself.
        if depth == 0 {
            let t = Instant::now();
            self.check_clamd(&obj, spool);
            self.times.clamav += t.elapsed();
        }
        // 6. DLP.
        let t = Instant::now();
        self.check_dlp(&obj, spool);
        self.times.dlp += t.elapsed();
    }

    /// A `multipart/form-data` upload: every part is scanned as a top-level
    /// object (engines, archives and DLP alike) and named by its file name;
    /// the form's raw encoding is only checked against the hash lists. A
    /// body that is not a well-formed form is scanned whole, never less.
    pub(crate) fn scan_form(
        &mut self,
        root: &str,
        spool: &Spool,
        sha256: &[u8; 32],
        boundary: &str,
    ) {
        let max_parts = self.inner.config.archive.max_entries;
        let parts = spool
            .reader()
            .map_err(|e| e.to_string())
            .and_then(|mut r| crate::multipart::parts(&mut r, spool.len(), boundary, max_parts));
        let Ok(parts) = parts else {
            self.scan_object(root, spool, sha256, 0);
            return;
        };
        let head = spool.head(ISO_SNIFF_LEN).unwrap_or_default();
        let form = Object {
            path: root,
            file_type: sniff(&head),
            sha256: hex::encode(sha256),
            size: spool.len(),
        };
        let t = Instant::now();
        self.check_hashes(&form, spool, sha256, None);
        self.times.hash += t.elapsed();
        for (index, part) in parts.iter().enumerate() {
            if self.stopped {
                return;
            }
            let label = part.label(index);
            match self.copy_part(spool, part) {
                Ok((part_spool, part_sha)) => self.scan_object(&label, &part_spool, &part_sha, 0),
                Err(e) => {
                    let obj = Object {
                        path: &label,
                        file_type: FileType::Unknown,
                        sha256: String::new(),
                        size: part.len,
                    };
                    self.push_failure(
                        &obj,
                        UnscannableReason::EngineError,
                        Engine::Scanner,
                        format!("spool: {e}"),
                        None,
                    );
                }
            }
        }
    }

    /// One part of a form, copied to a spool of its own (memory up to the
    /// threshold, then a file) with its SHA-256.
    fn copy_part(
        &self,
        spool: &Spool,
        part: &crate::multipart::Part,
    ) -> std::io::Result<(Spool, [u8; 32])> {
        use std::io::{Seek, SeekFrom};
        let mut reader = spool.reader()?;
        reader.seek(SeekFrom::Start(part.start))?;
        let mut reader = reader.take(part.len);
        let mut out = Spool::new(self.inner.config.memory_threshold, &self.inner.spool_dir);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_BLOCK];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write(&buf[..n])?;
        }
        Ok((out, hasher.finalize().into()))
    }

    /// A body cut at `max_scan_size`: only its full hash is known.
    pub(crate) fn check_hashes_only(
        &mut self,
        path: &str,
        file_type: FileType,
        sha256: &[u8; 32],
        size: u64,
    ) {
        let obj = Object {
            path,
            file_type,
            sha256: hex::encode(sha256),
            size,
        };
        if let Some(hit) = self.inner.hashes.find_sha256(sha256) {
            self.push(&obj, Verdict::Malicious, Engine::Hash, hit.rule());
        }
    }

    /// The kept prefix of a body cut at `max_scan_size`: rules and DLP can
    /// still find something in it (archives cannot be opened from a prefix).
    pub(crate) fn scan_prefix(
        &mut self,
        path: &str,
        spool: &Spool,
        file_type: FileType,
        sha256: &str,
    ) {
        let obj = Object {
            path,
            file_type,
            sha256: sha256.to_owned(),
            size: spool.len(),
        };
        let t = Instant::now();
        #[cfg(feature = "yara")]
        let witness = self.streamed.yara.take();
        #[cfg(not(feature = "yara"))]
        let witness = None;
        self.check_yara(&obj, spool, witness);
        self.times.yara += t.elapsed();
        let t = Instant::now();
        self.check_dlp(&obj, spool);
        self.times.dlp += t.elapsed();
    }

    fn walk_archive(&mut self, obj: &Object<'_>, spool: &Spool, depth: u32) {
        let reader = match spool.reader() {
            Ok(r) => r,
            Err(e) => {
                self.push_failure(
                    obj,
                    UnscannableReason::EngineError,
                    Engine::Archive,
                    format!("spool: {e}"),
                    None,
                );
                return;
            }
        };
        let gzip_name = gunzipped_name(obj.path);
        let limits = &self.inner.config.archive;
        let mut sink = Sink {
            walk: self,
            parent: obj.path,
            depth,
            container_size: spool.len(),
            container_expanded: 0,
        };
        let result = archive::walk(
            obj.file_type,
            reader,
            &gzip_name,
            limits.sevenz_memory_kib,
            &mut sink,
        );
        match result {
            Ok(()) => {}
            Err(WalkError::Stop(stop)) => self.record_stop(obj, stop),
            Err(WalkError::Encrypted(rule)) => {
                self.push(obj, Verdict::Encrypted, Engine::Encryption, rule.to_owned())
            }
            Err(WalkError::Corrupt(detail)) => {
                if !self.stopped {
                    self.push(
                        obj,
                        Verdict::Unscannable(UnscannableReason::Corrupt),
                        Engine::Archive,
                        detail,
                    );
                }
            }
        }
    }

    /// Records why a walk stopped, once, at the container where it happened.
    fn record_stop(&mut self, obj: &Object<'_>, stop: Stop) {
        if self.stopped {
            return;
        }
        match stop {
            Stop::Bomb(detail) => self.push(
                obj,
                Verdict::Unscannable(UnscannableReason::Bomb),
                Engine::Archive,
                detail,
            ),
            Stop::TooLarge => self.push(
                obj,
                Verdict::Unscannable(UnscannableReason::TooLarge),
                Engine::Archive,
                format!(
                    "an entry is larger than max_scan_size ({} bytes)",
                    self.inner.config.max_scan_size
                ),
            ),
            Stop::Timeout => self.timed_out(obj, "archive extraction"),
            // Recorded where it happened; `stopped` is already set.
            Stop::Unwind => {}
        }
        self.stopped = true;
    }

    fn check_encryption(&mut self, obj: &Object<'_>, spool: &Spool) {
        let encrypted = match obj.file_type {
            FileType::Ole => spool
                .reader()
                .map(crate::encryption::is_encrypted_ooxml)
                .ok()
                .filter(|e| *e)
                .map(|_| "ooxml-encrypted-package"),
            FileType::Pdf => match spool.reader().and_then(crate::encryption::pdf_has_encrypt) {
                Ok(true) => Some("pdf-encrypt"),
                Ok(false) => None,
                Err(e) => {
                    self.push_failure(
                        obj,
                        UnscannableReason::EngineError,
                        Engine::Encryption,
                        format!("spool: {e}"),
                        None,
                    );
                    None
                }
            },
            _ => None,
        };
        if let Some(rule) = encrypted {
            self.push(obj, Verdict::Encrypted, Engine::Encryption, rule.to_owned());
        }
    }

    /// `legacy`: the MD5 and SHA-1 when the session computed them while
    /// the body streamed.
    fn check_hashes(
        &mut self,
        obj: &Object<'_>,
        spool: &Spool,
        sha256: &[u8; 32],
        legacy: Option<([u8; 16], [u8; 20])>,
    ) {
        let lists = &self.inner.hashes;
        if let Some(hit) = lists.find_sha256(sha256) {
            self.push(obj, Verdict::Malicious, Engine::Hash, hit.rule());
            return;
        }
        if !lists.needs_legacy_digests() {
            return;
        }
        if let Some((md5, sha1)) = legacy {
            if let Some(hit) = lists.find_sha1(&sha1).or_else(|| lists.find_md5(&md5)) {
                self.push(obj, Verdict::Malicious, Engine::Hash, hit.rule());
            }
            return;
        }
        // MD5/SHA-1 only when an imported feed has them: a second pass.
        let mut md5 = Md5::new();
        let mut sha1 = Sha1::new();
        let read = spool.reader().and_then(|mut r| {
            let mut buf = vec![0u8; READ_BLOCK];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                md5.update(&buf[..n]);
                sha1.update(&buf[..n]);
            }
        });
        if let Err(e) = read {
            self.push_failure(
                obj,
                UnscannableReason::EngineError,
                Engine::Hash,
                format!("spool: {e}"),
                None,
            );
            return;
        }
        let md5: [u8; 16] = md5.finalize().into();
        let sha1: [u8; 20] = sha1.finalize().into();
        if let Some(hit) = lists.find_sha1(&sha1).or_else(|| lists.find_md5(&md5)) {
            self.push(obj, Verdict::Malicious, Engine::Hash, hit.rule());
        }
    }

    /// `witness`: what the presence scan found while the body streamed
    /// (the rules are then decided from it, the spool is not read).
    #[cfg(feature = "yara")]
    fn check_yara(
        &mut self,
        obj: &Object<'_>,
        spool: &Spool,
        witness: Option<crate::yara::Witness>,
    ) {
        let Some(rules) = &self.inner.yara else {
            return;
        };
        let fail = Some(self.inner.config.yara.fail);
        let Some(budget) = self.remaining() else {
            self.timed_out(obj, "yara");
            return;
        };
        let outcome = match witness {
            Some(witness) => rules.decide(witness, || spool.bytes(), budget),
            None => spool.bytes().map(|bytes| rules.scan(&bytes, budget)),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                self.push_failure(
                    obj,
                    UnscannableReason::EngineError,
                    Engine::Yara,
                    format!("spool: {e}"),
                    fail,
                );
                return;
            }
        };
        match outcome {
            crate::yara::YaraOutcome::Matches(names) => {
                for name in names {
                    self.push(obj, Verdict::Malicious, Engine::Yara, name);
                }
            }
            crate::yara::YaraOutcome::Timeout => {
                self.push_failure(
                    obj,
                    UnscannableReason::Timeout,
                    Engine::Yara,
                    "yara scan timed out".into(),
                    fail,
                );
            }
        }
    }

    #[cfg(not(feature = "yara"))]
    fn check_yara(&mut self, _obj: &Object<'_>, _spool: &Spool, _witness: Option<()>) {}

    fn check_clamd(&mut self, obj: &Object<'_>, spool: &Spool) {
        let Some(client) = &self.inner.clamd else {
            return;
        };
        let Some(config) = &self.inner.config.clamav else {
            return;
        };
        let fail = Some(config.fail);
        let streamed = self.streamed.clamd.take();
        if obj.size > config.max_stream_size || matches!(streamed, Some(ClamdOutcome::TooLarge)) {
            // Not an engine failure: the fail mode is for clamd being down or
            // erroring. A body clamd would refuse is unscannable for it, and
            // `inspect.actions.unscannable` decides (else every download past
            // StreamMaxLength would be blocked by fail = "closed").
            self.push_failure(
                obj,
                UnscannableReason::TooLarge,
                Engine::Clamav,
                format!(
                    "larger than clamav.max_stream_size ({} bytes)",
                    config.max_stream_size
                ),
                None,
            );
            return;
        }
        let result = match streamed {
            // Sent while the body streamed: only the answer was missing.
            Some(ClamdOutcome::Verdict(result)) => result,
            Some(ClamdOutcome::Awaiting(stream)) => stream.reply(),
            _ => spool
                .reader()
                .map_err(crate::clamd::ClamdError::Io)
                .and_then(|mut r| client.scan(&mut r)),
        };
        match result {
            Ok(ClamdVerdict::Clean) => {}
            Ok(ClamdVerdict::Found(sig)) => self.push(obj, Verdict::Malicious, Engine::Clamav, sig),
            Err(e) => self.push_failure(
                obj,
                UnscannableReason::EngineError,
                Engine::Clamav,
                e.to_string(),
                fail,
            ),
        }
    }

    fn check_dlp(&mut self, obj: &Object<'_>, spool: &Spool) {
        let dlp = &self.inner.dlp;
        if dlp.is_empty() {
            return;
        }
        let wanted = match self.direction {
            Direction::Upload => true,
            Direction::Download => self.inner.config.dlp.downloads,
        };
        // Text-bearing objects only: archives are scanned through their
        // entries, media and executables hold no typed-in secrets.
        let textual = matches!(
            obj.file_type,
            FileType::Text | FileType::Html | FileType::Script | FileType::Unknown
        );
        if !wanted || !textual {
            return;
        }
        let mut scan = dlp.scan();
        let read = spool.reader().and_then(|mut r| {
            let mut buf = vec![0u8; READ_BLOCK];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                scan.feed(&buf[..n]);
            }
        });
        if let Err(e) = read {
            self.push_failure(
                obj,
                UnscannableReason::EngineError,
                Engine::Dlp,
                format!("spool: {e}"),
                None,
            );
            return;
        }
        for hit in scan.finish() {
            self.findings.push(Finding {
                verdict: Verdict::Sensitive,
                reason: None,
                container_path: obj.path.to_owned(),
                engine: Engine::Dlp,
                rule_or_signature: hit.profile,
                file_type: obj.file_type,
                sha256: obj.sha256.clone(),
                size: obj.size,
                count: hit.count,
                masked_matches: hit.masked,
                fail: None,
            });
        }
    }
}

/// The member of `x.gz` is `x`; of `x.tgz`, `x.tar` (likewise for bzip2 and
/// xz); anything else gets `.decompressed` appended.
fn gunzipped_name(path: &str) -> String {
    let last = path.rsplit("!/").next().unwrap_or(path);
    let last = last.rsplit('/').next().unwrap_or(last);
    for (suffix, replacement) in [
        (".tgz", ".tar"),
        (".tbz2", ".tar"),
        (".tbz", ".tar"),
        (".txz", ".tar"),
        (".gz", ""),
        (".bz2", ""),
        (".xz", ""),
    ] {
        if let Some(stem) = last.strip_suffix(suffix).filter(|s| !s.is_empty()) {
            return format!("{stem}{replacement}");
        }
    }
    format!("{last}.decompressed")
}

/// The walker's view of one container being opened.
struct Sink<'w, 'a> {
    walk: &'w mut Walk<'a>,
    parent: &'w str,
    depth: u32,
    container_size: u64,
    container_expanded: u64,
}

impl EntrySink for Sink<'_, '_> {
    fn count_entry(&mut self) -> Result<(), Stop> {
        if self.walk.stopped {
            return Err(Stop::Unwind);
        }
        self.walk.entries += 1;
        let max = self.walk.inner.config.archive.max_entries;
        if self.walk.entries > max {
            return Err(Stop::Bomb(format!(
                "more than max_entries ({max}) archive entries"
            )));
        }
        if Instant::now() >= self.walk.deadline {
            return Err(Stop::Timeout);
        }
        Ok(())
    }

    fn encrypted(&mut self, name: &str, rule: &'static str) {
        let path = format!("{}!/{}", self.parent, name);
        let obj = Object {
            path: &path,
            file_type: FileType::Unknown,
            sha256: String::new(),
            size: 0,
        };
        self.walk.push(
            &obj,
            Verdict::Encrypted,
            Engine::Encryption,
            rule.to_owned(),
        );
    }

    fn unreadable(&mut self, name: &str, detail: String) {
        let path = format!("{}!/{}", self.parent, name);
        let obj = Object {
            path: &path,
            file_type: FileType::Unknown,
            sha256: String::new(),
            size: 0,
        };
        self.walk.push(
            &obj,
            Verdict::Unscannable(UnscannableReason::Corrupt),
            Engine::Archive,
            detail,
        );
    }

    fn entry(
        &mut self,
        name: &str,
        reader: &mut dyn Read,
        compressed: Option<u64>,
    ) -> Result<(), Stop> {
        let path = format!("{}!/{}", self.parent, name);
        let config = &self.walk.inner.config;
        let limits = &config.archive;
        let mut spool = Spool::new(config.memory_threshold, &self.walk.inner.spool_dir);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut entry_len: u64 = 0;
        let ratio_exceeded = |expanded: u64, compressed: u64| {
            expanded > limits.ratio_floor && expanded / compressed.max(1) > limits.max_ratio
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // This entry is unreadable (bad CRC, truncated stream,
                    // unsupported method); others may still be fine.
                    let obj = Object {
                        path: &path,
                        file_type: sniff(&spool.head(ISO_SNIFF_LEN).unwrap_or_default()),
                        sha256: String::new(),
                        size: entry_len,
                    };
                    self.walk.push(
                        &obj,
                        Verdict::Unscannable(UnscannableReason::Corrupt),
                        Engine::Archive,
                        e.to_string(),
                    );
                    return Ok(());
                }
            };
            let n64 = n as u64;
            entry_len += n64;
            self.walk.expanded += n64;
            self.container_expanded += n64;
            if self.walk.expanded > limits.max_expanded_size {
                return Err(Stop::Bomb(format!(
                    "archive contents larger than max_expanded_size ({} bytes) at {path}",
                    limits.max_expanded_size
                )));
            }
            if ratio_exceeded(self.container_expanded, self.container_size) {
                return Err(Stop::Bomb(format!(
                    "expands more than max_ratio ({}x) its container at {path}",
                    limits.max_ratio
                )));
            }
            if let Some(c) = compressed {
                if ratio_exceeded(entry_len, c) {
                    return Err(Stop::Bomb(format!(
                        "entry {path} expands more than max_ratio ({}x)",
                        limits.max_ratio
                    )));
                }
            }
            if entry_len > config.max_scan_size {
                return Err(Stop::TooLarge);
            }
            if Instant::now() >= self.walk.deadline {
                return Err(Stop::Timeout);
            }
            hasher.update(&buf[..n]);
            if let Err(e) = spool.write(&buf[..n]) {
                let obj = Object {
                    path: &path,
                    file_type: FileType::Unknown,
                    sha256: String::new(),
                    size: entry_len,
                };
                self.walk.push_failure(
                    &obj,
                    UnscannableReason::EngineError,
                    Engine::Archive,
                    format!("spool: {e}"),
                    None,
                );
                return Ok(());
            }
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        self.walk
            .scan_object(&path, &spool, &sha256, self.depth + 1);
        if self.walk.stopped {
            // A limit was hit deeper down: unwind every level.
            return Err(Stop::Unwind);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_members_are_named_after_the_container() {
        assert_eq!(gunzipped_name("bundle.tar.gz"), "bundle.tar");
        assert_eq!(gunzipped_name("a.zip!/logs.tgz"), "logs.tar");
        assert_eq!(gunzipped_name("body"), "body.decompressed");
        assert_eq!(gunzipped_name("x.tar.xz"), "x.tar");
    }
}
