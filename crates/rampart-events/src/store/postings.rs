//! Block postings: for one field of one index block, which events carry each value.
//!
//! Events are numbered by `seq`, assigned in insert order. Seqs `1..=8192`
//! form block 0, the next 8,192 block 1, and so on. For each indexed field
//! the writer groups a block's events by value and stores one postings blob
//! per field: at every commit for the block being filled, and once more when
//! its last seq is assigned. Building that in memory costs a hash lookup per
//! event and field; a `(field, time)` B-tree index costs a B-tree insert per
//! event (about 2 µs per event per index). Queries read one blob per block
//! and field they touch.
//!
//! Values are keyed by their lowercase ([`key`], the folding the query
//! matcher uses), so a lookup yields every event the case-insensitive query
//! could match; the query still runs on those events and decides.
//!
//! Blob layout (all integers LEB128 varints):
//!
//! ```text
//! u8 format (2; 1 in stores written before non-ASCII values were folded)
//! nkeys
//! nkeys × { key_len, key bytes, list_len (bytes), list }   keys in byte order
//! list = count, first offset, then the gaps between successive offsets
//! ```
//! An offset is `seq - first seq of the block`.

use std::collections::HashMap;

use super::varint;

/// Events per index block.
pub const BLOCK_EVENTS: i64 = 8192;

/// Keys folded by [`key`] only when they had an ASCII capital: a value such
/// as "İris" or "ǅ" was posted as written. Still read (see [`lookup`]).
const FORMAT_V1: u8 = 1;
/// Every key folded by [`key`].
const FORMAT_V2: u8 = 2;

/// A postings blob that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PostingsError {
    #[error("unknown postings format {0}")]
    UnknownFormat(u8),
    #[error("truncated postings")]
    Truncated,
    #[error("postings offset out of block")]
    OutOfBlock,
}

/// First and last seq of `block`.
pub fn block_seqs(block: i64) -> (i64, i64) {
    (block * BLOCK_EVENTS + 1, (block + 1) * BLOCK_EVENTS)
}

/// The key a value is posted under: lowercased the way the query matcher
/// compares (Unicode, not ASCII only), or a query for `host = "ÜNÏ.EXAMPLE"`
/// would find the event in memory and not through the index (found by the
/// fleet store's differential test).
pub fn key(value: &str) -> String {
    crate::query::fold(value)
}

/// Collects one field's postings for one block. The map is hashed with a
/// per-process random seed (foldhash): several times cheaper per event than
/// SipHash, and values an attacker chooses (hosts) still cannot be made to
/// collide without knowing the seed.
#[derive(Default)]
pub struct PostingsBuilder {
    lists: HashMap<String, Vec<u32>, foldhash::fast::RandomState>,
}

impl PostingsBuilder {
    /// Record that the event at `offset` (added in increasing order) has `value`.
    pub fn add(&mut self, value: &str, offset: u32) {
        // Most values repeat within a block: look up by the borrowed form
        // first and allocate a key only for a new value. Only an ASCII value
        // without capitals is known to be its own key: outside ASCII, letters
        // that are not capitals still fold ("ǅ" → "ǆ").
        if !value.is_ascii() || value.bytes().any(|b| b.is_ascii_uppercase()) {
            self.lists.entry(key(value)).or_default().push(offset);
        } else if let Some(list) = self.lists.get_mut(value) {
            list.push(offset);
        } else {
            self.lists.insert(value.to_string(), vec![offset]);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The blob, keys sorted.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<(&String, &Vec<u32>)> = self.lists.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = vec![FORMAT_V2];
        varint::put(&mut out, entries.len() as u64);
        let mut list = Vec::new();
        for (key, offsets) in entries {
            // Callers add in seq order; anything else is sorted here rather
            // than encoded as a wrong list.
            let sorted;
            let offsets = if offsets.windows(2).all(|w| w[0] < w[1]) {
                offsets
            } else {
                let mut copy = offsets.clone();
                copy.sort_unstable();
                copy.dedup();
                sorted = copy;
                &sorted
            };
            varint::put(&mut out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
            list.clear();
            varint::put(&mut list, offsets.len() as u64);
            let mut prev = 0u32;
            for (i, &o) in offsets.iter().enumerate() {
                varint::put(&mut list, u64::from(if i == 0 { o } else { o - prev }));
                prev = o;
            }
            varint::put(&mut out, list.len() as u64);
            out.extend_from_slice(&list);
        }
        out
    }
}

/// The offsets posted under `key` (already normalised with [`key`]), ascending.
pub fn lookup(blob: &[u8], key: &str) -> Result<Vec<u32>, PostingsError> {
    let mut r = varint::Reader::new(blob);
    let format = r.byte()?;
    if format != FORMAT_V1 && format != FORMAT_V2 {
        return Err(PostingsError::UnknownFormat(format));
    }
    let nkeys = r.varint()?;
    let mut found: Vec<u32> = Vec::new();
    for _ in 0..nkeys {
        let klen = r.len()?;
        let k = r.take(klen)?;
        let llen = r.len()?;
        let list = r.take(llen)?;
        if format == FORMAT_V1 && !k.is_ascii() {
            // A V1 key outside ASCII may be an unfolded value: compare its
            // fold, wherever it sorts (the Kelvin sign folds to ASCII "k").
            let folded = std::str::from_utf8(k).map(crate::query::fold);
            if folded.as_deref() == Ok(key) {
                found = merge(&found, &decode_list(list)?);
            }
            continue;
        }
        match k.cmp(key.as_bytes()) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Greater if format == FORMAT_V2 => break,
            std::cmp::Ordering::Greater => continue,
            std::cmp::Ordering::Equal => found = merge(&found, &decode_list(list)?),
        }
    }
    Ok(found)
}

/// Sorted union of two ascending offset lists.
fn merge(a: &[u32], b: &[u32]) -> Vec<u32> {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn decode_list(list: &[u8]) -> Result<Vec<u32>, PostingsError> {
    let mut r = varint::Reader::new(list);
    let count = r.varint()?;
    if count > BLOCK_EVENTS as u64 {
        return Err(PostingsError::OutOfBlock);
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 0u64;
    for i in 0..count {
        let v = r.varint()?;
        at = if i == 0 {
            v
        } else {
            at.checked_add(v).ok_or(PostingsError::OutOfBlock)?
        };
        if at >= BLOCK_EVENTS as u64 {
            return Err(PostingsError::OutOfBlock);
        }
        out.push(at as u32);
    }
    Ok(out)
}

impl From<varint::Truncated> for PostingsError {
    fn from(_: varint::Truncated) -> PostingsError {
        PostingsError::Truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_partition_the_seqs() {
        assert_eq!(block_seqs(0), (1, BLOCK_EVENTS));
        assert_eq!(block_seqs(1), (BLOCK_EVENTS + 1, 2 * BLOCK_EVENTS));
    }

    #[test]
    fn values_outside_ascii_are_posted_folded() {
        // "İris" has no ASCII capital but folds to "i̇ris"; "ǅ" is no capital
        // and still folds. Both were once posted as written.
        let mut b = PostingsBuilder::default();
        for (i, v) in ["İris", "i̇ris", "ǅ", "\u{212A}elvin"].iter().enumerate() {
            b.add(v, i as u32);
        }
        let blob = b.encode();
        assert_eq!(lookup(&blob, &key("İRIS")).unwrap(), vec![0, 1]);
        assert_eq!(lookup(&blob, &key("Ǆ")).unwrap(), vec![2]);
        assert_eq!(lookup(&blob, &key("kelvin")).unwrap(), vec![3]);
    }

    #[test]
    fn v1_blobs_with_unfolded_keys_still_answer_folded_lookups() {
        // A V1 blob as the old builder wrote it: "İris" and the Kelvin sign
        // kept as written, ASCII values lowercased, keys in byte order.
        let mut blob = vec![FORMAT_V1];
        let entries: [(&str, &[u32]); 3] =
            [("alice", &[0]), ("İris", &[1, 4]), ("\u{212A}elvin", &[2])];
        varint::put(&mut blob, entries.len() as u64);
        for (k, offsets) in entries {
            varint::put(&mut blob, k.len() as u64);
            blob.extend_from_slice(k.as_bytes());
            let mut list = Vec::new();
            varint::put(&mut list, offsets.len() as u64);
            let mut prev = 0;
            for (i, &o) in offsets.iter().enumerate() {
                varint::put(&mut list, u64::from(if i == 0 { o } else { o - prev }));
                prev = o;
            }
            varint::put(&mut blob, list.len() as u64);
            blob.extend_from_slice(&list);
        }
        assert_eq!(lookup(&blob, &key("İris")).unwrap(), vec![1, 4]);
        assert_eq!(lookup(&blob, &key("KELVIN")).unwrap(), vec![2]);
        assert_eq!(lookup(&blob, "alice").unwrap(), vec![0]);
        assert_eq!(lookup(&blob, "bob").unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn lookups_find_every_offset_of_a_value_case_insensitively() {
        let mut b = PostingsBuilder::default();
        for (i, v) in ["alice", "Bob", "alice", "carol", "ALICE", "bob"]
            .iter()
            .enumerate()
        {
            b.add(v, i as u32 * 1000);
        }
        let blob = b.encode();
        assert_eq!(lookup(&blob, "alice").unwrap(), vec![0, 2000, 4000]);
        assert_eq!(lookup(&blob, "bob").unwrap(), vec![1000, 5000]);
        assert_eq!(lookup(&blob, "carol").unwrap(), vec![3000]);
        assert_eq!(lookup(&blob, "dave").unwrap(), Vec::<u32>::new());
        assert_eq!(lookup(&blob, "").unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let mut b = PostingsBuilder::default();
        for i in 0..300u32 {
            b.add(&format!("host{}", i % 17), i * 3);
        }
        let blob = b.encode();
        for cut in 0..blob.len() {
            let _ = lookup(&blob[..cut], "host16");
        }
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0xff;
            let _ = lookup(&bad, "host3");
        }
        assert_eq!(lookup(&[9], "x"), Err(PostingsError::UnknownFormat(9)));
        assert_eq!(lookup(&[], "x"), Err(PostingsError::Truncated));
    }
}
