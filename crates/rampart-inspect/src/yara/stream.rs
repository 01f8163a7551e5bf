//! YARA over a body as it streams: blocks are scanned for the strings of the
//! streaming rules as they arrive, and at the end the rules are evaluated
//! from what was found, without reading the body again.
//!
//! Exactness. Each block is scanned together with the last `longest - 1`
//! bytes of the previous one, so every occurrence of a string (at most
//! `longest` bytes, see `plan`) lies whole inside one scanned window; a
//! window is a substring of the body, so every occurrence found in it is
//! one in the body. The presence scan therefore finds exactly the strings
//! that occur in the whole body.
//!
//! The rules are then evaluated by boreal itself (same semantics as the
//! whole-body scan, nothing re-implemented) over a *witness*: one memory
//! region per string found, holding the bytes of one of its occurrences,
//! scanned as fragmented memory (regions are scanned separately, so nothing
//! matches across two of them). Every string that matches in a region
//! occurs in the body (the region is a substring of it), and every string
//! found has its region: the witness has exactly the body's set of present
//! strings, which is all a streaming rule's condition depends on.

use std::time::Duration;

use boreal::memory::{FragmentedMemory, MemoryParams, Region, RegionDescription};
use boreal::scanner::ScanParams;

use super::{rule_names, YaraOutcome};

/// Bytes gathered before a window is scanned: large enough that the fixed
/// cost of a boreal scan is noise, small enough to bound memory per flow.
pub const STREAM_BLOCK: usize = 256 * 1024;

/// The compiled pieces of a rule set that streams.
pub(crate) struct StreamingRules {
    /// One rule per string of the streaming rules (`s<index>`).
    pub(crate) presence: boreal::Scanner,
    pub(crate) presence_rules: usize,
    /// Longest string occurrence: windows overlap by one byte less.
    pub(crate) longest: usize,
}

/// One body's presence scan.
pub(crate) struct YaraStream {
    scanner: boreal::Scanner,
    /// The previous window's last `overlap` bytes, then the bytes not yet scanned.
    window: Vec<u8>,
    overlap: usize,
    block: usize,
    /// Bytes at the end of `window` not scanned yet.
    fresh: usize,
    /// Per presence rule: the bytes of one occurrence, once found.
    found: Vec<Option<Vec<u8>>>,
    remaining: usize,
}

/// What a finished presence scan found, to be evaluated by the full rules.
pub(crate) struct Witness {
    regions: Vec<Vec<u8>>,
}

impl YaraStream {
    pub(crate) fn new(rules: &StreamingRules, block: usize) -> YaraStream {
        let mut scanner = rules.presence.clone();
        // One match per string is all presence needs; its bytes must be whole.
        scanner.set_scan_params(
            ScanParams::default()
                .string_max_nb_matches(1)
                .match_max_length(rules.longest.max(1)),
        );
        let overlap = rules.longest.saturating_sub(1);
        YaraStream {
            scanner,
            window: Vec::with_capacity(overlap + block),
            overlap,
            block: block.max(1),
            fresh: 0,
            found: vec![None; rules.presence_rules],
            remaining: rules.presence_rules,
        }
    }

    /// Takes the next bytes of the body. Windows are cut at exact multiples
    /// of the block size, whatever the chunking.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining == 0 {
                // Every string has been seen: nothing left to look for.
                return;
            }
            let room = self.block - self.fresh;
            let (now, later) = data.split_at(room.min(data.len()));
            self.window.extend_from_slice(now);
            self.fresh += now.len();
            data = later;
            if self.fresh == self.block {
                self.scan_window();
            }
        }
    }

    fn scan_window(&mut self) {
        if self.fresh == 0 {
            return;
        }
        // No timeout: the presence rules are literal and bounded hex
        // strings, linear in the window.
        if let Ok(result) = self.scanner.scan_mem(&self.window) {
            for rule in &result.rules {
                let index = rule.name.get(1..).and_then(|i| i.parse::<usize>().ok());
                let Some(slot) = index.and_then(|i| self.found.get_mut(i)) else {
                    continue;
                };
                if slot.is_some() {
                    continue;
                }
                let occurrence = rule
                    .matches
                    .first()
                    .and_then(|s| s.matches.first())
                    .map(|m| m.data.to_vec());
                if let Some(bytes) = occurrence {
                    *slot = Some(bytes);
                    self.remaining -= 1;
                }
            }
        }
        let keep = self.overlap.min(self.window.len());
        self.window.drain(..self.window.len() - keep);
        self.fresh = 0;
    }

    /// Scans what is left and returns the strings found.
    pub(crate) fn finish(mut self) -> Witness {
        if self.remaining > 0 {
            self.scan_window();
        }
        Witness {
            regions: self.found.into_iter().flatten().collect(),
        }
    }
}

impl Witness {
    /// Evaluates the full rule set over the witness.
    pub(crate) fn evaluate(self, rules: &boreal::Scanner, budget: Duration) -> YaraOutcome {
        let mut scanner = rules.clone();
        scanner.set_scan_params(ScanParams::default().timeout_duration(Some(budget)));
        let memory = WitnessMemory {
            regions: self.regions,
            next: 0,
            start: 0,
            current: None,
        };
        match scanner.scan_fragmented(memory) {
            Ok(result) => YaraOutcome::Matches(rule_names(&result.rules)),
            Err((_, partial)) if !partial.rules.is_empty() => {
                YaraOutcome::Matches(rule_names(&partial.rules))
            }
            Err(_) => YaraOutcome::Timeout,
        }
    }
}

/// The witness's regions laid end to end (with a one-byte gap, so that no
/// two are adjacent) as boreal's fragmented memory.
#[derive(Debug)]
struct WitnessMemory {
    regions: Vec<Vec<u8>>,
    next: usize,
    /// Where the next region starts.
    start: usize,
    current: Option<(usize, usize)>,
}

impl FragmentedMemory for WitnessMemory {
    fn next(&mut self, _params: &MemoryParams) -> Option<RegionDescription> {
        let index = self.next;
        let region = self.regions.get(index)?;
        let description = RegionDescription {
            start: self.start,
            length: region.len(),
        };
        self.current = Some((index, self.start));
        self.start += region.len() + 1;
        self.next += 1;
        Some(description)
    }

    fn fetch(&mut self, _params: &MemoryParams) -> Option<Region<'_>> {
        let (index, start) = self.current?;
        Some(Region {
            start,
            mem: self.regions.get(index)?,
        })
    }

    fn reset(&mut self) {
        self.next = 0;
        self.start = 0;
        self.current = None;
    }
}
