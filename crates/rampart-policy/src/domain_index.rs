//! Compiled domain-suffix index: one open-addressing hash table over every domain of
//! every category, list and app, keyed by the normalised domain text.
//!
//! A lookup hashes each suffix of the host (`a.b.example` → `a.b.example`,
//! `b.example`, `example`), so its cost depends on the number of labels, never on the
//! number of entries. Entries live in one byte arena with `u32` offsets; an entry's
//! value is either one packed `(target, flags)` pair or an index into a side table
//! when a domain belongs to several targets. One million domains take ~30 MiB.

/// The entry matches the host itself.
pub(crate) const MATCH_EXACT: u32 = 1;
/// The entry matches hosts below it.
pub(crate) const MATCH_SUBDOMAINS: u32 = 2;

const EMPTY: u32 = u32::MAX;
const SET_BIT: u32 = 1 << 31;
/// Targets are packed as `target << 2 | flags` below the set bit.
pub(crate) const MAX_TARGETS: u32 = 1 << 29;

#[derive(Debug, Clone, Default)]
pub(crate) struct DomainIndex {
    arena: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is entry i's text.
    offsets: Vec<u32>,
    values: Vec<u32>,
    /// Low 32 bits of each entry's hash (fast rejection and rehashing).
    hashes: Vec<u32>,
    slots: Vec<u32>,
    sets: Vec<Vec<u32>>,
}

#[inline]
fn hash(bytes: &[u8]) -> u64 {
    // FxHash-style mixing over 8-byte words: fast for short keys, and good enough
    // because every candidate is confirmed by comparing the text.
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut w = [0u8; 8];
        w[..rem.len()].copy_from_slice(rem);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^ (h >> 29)
}

impl DomainIndex {
    pub(crate) fn new() -> Self {
        DomainIndex {
            offsets: vec![0],
            slots: vec![EMPTY; 16],
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// Approximate heap use in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + 4 * (self.offsets.capacity() + self.values.capacity() + self.hashes.capacity())
            + 4 * self.slots.capacity()
            + self
                .sets
                .iter()
                .map(|s| 24 + 4 * s.capacity())
                .sum::<usize>()
    }

    fn text(&self, entry: u32) -> &[u8] {
        let e = entry as usize;
        &self.arena[self.offsets[e] as usize..self.offsets[e + 1] as usize]
    }

    #[inline]
    fn find(&self, key: &[u8], h: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if self.hashes[slot as usize] == h as u32 && self.text(slot) == key {
                return Some(slot);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let mut slots = vec![EMPTY; cap];
        let mask = cap - 1;
        for (entry, &h32) in self.hashes.iter().enumerate() {
            // Low 32 bits are enough to place entries in tables up to 2^32 slots.
            let mut i = (h32 as usize) & mask;
            while slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            slots[i] = entry as u32;
        }
        self.slots = slots;
    }

    /// Adds `domain` (already normalised) for `target` with the given match flags.
    pub(crate) fn insert(&mut self, domain: &str, target: u32, flags: u32) {
        debug_assert!(target < MAX_TARGETS);
        let key = domain.as_bytes();
        let h = hash(key);
        let packed = (target << 2) | flags;
        if let Some(entry) = self.find(key, h) {
            self.merge(entry as usize, packed);
            return;
        }
        if (self.values.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let entry = self.values.len() as u32;
        self.arena.extend_from_slice(key);
        self.offsets.push(self.arena.len() as u32);
        self.values.push(packed);
        self.hashes.push(h as u32);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
    }

    fn merge(&mut self, entry: usize, packed: u32) {
        let value = self.values[entry];
        let target = packed >> 2;
        if value & SET_BIT == 0 {
            if value >> 2 == target {
                self.values[entry] = value | packed;
                return;
            }
            self.sets.push(vec![value, packed]);
            self.values[entry] = SET_BIT | (self.sets.len() as u32 - 1);
            return;
        }
        let set = &mut self.sets[(value & !SET_BIT) as usize];
        match set.iter_mut().find(|p| **p >> 2 == target) {
            Some(p) => *p |= packed,
            None => set.push(packed),
        }
    }

    /// Releases spare capacity once building is done.
    pub(crate) fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.offsets.shrink_to_fit();
        self.values.shrink_to_fit();
        self.hashes.shrink_to_fit();
        for s in &mut self.sets {
            s.shrink_to_fit();
        }
        self.sets.shrink_to_fit();
    }

    /// Calls `f(target, matched_suffix)` for every target whose entries cover `host`
    /// (normalised). Walks suffixes from the full host to the last label.
    #[inline]
    pub(crate) fn lookup(&self, host: &str, mut f: impl FnMut(u32, &str)) {
        if self.values.is_empty() || host.is_empty() {
            return;
        }
        let bytes = host.as_bytes();
        let mut start = 0usize;
        loop {
            let key = &bytes[start..];
            if let Some(entry) = self.find(key, hash(key)) {
                let want = if start == 0 {
                    MATCH_EXACT
                } else {
                    MATCH_SUBDOMAINS
                };
                let suffix = &host[start..];
                let value = self.values[entry as usize];
                if value & SET_BIT == 0 {
                    if value & want != 0 {
                        f(value >> 2, suffix);
                    }
                } else {
                    for &p in &self.sets[(value & !SET_BIT) as usize] {
                        if p & want != 0 {
                            f(p >> 2, suffix);
                        }
                    }
                }
            }
            match bytes[start..].iter().position(|&b| b == b'.') {
                Some(dot) => start += dot + 1,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn targets(index: &DomainIndex, host: &str) -> Vec<u32> {
        let mut v = Vec::new();
        index.lookup(host, |t, _| v.push(t));
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn exact_entries_match_only_the_host() {
        let mut idx = DomainIndex::new();
        idx.insert("a.example", 1, MATCH_EXACT);
        assert_eq!(targets(&idx, "a.example"), vec![1]);
        assert!(targets(&idx, "x.a.example").is_empty());
    }

    #[test]
    fn subdomain_entries_skip_the_apex() {
        let mut idx = DomainIndex::new();
        idx.insert("example.org", 2, MATCH_SUBDOMAINS);
        assert!(targets(&idx, "example.org").is_empty());
        assert_eq!(targets(&idx, "deep.www.example.org"), vec![2]);
        assert!(targets(&idx, "badexample.org").is_empty());
    }

    #[test]
    fn one_domain_can_belong_to_many_targets_with_their_own_flags() {
        let mut idx = DomainIndex::new();
        idx.insert("example.net", 1, MATCH_EXACT);
        idx.insert("example.net", 2, MATCH_SUBDOMAINS);
        idx.insert("example.net", 3, MATCH_EXACT | MATCH_SUBDOMAINS);
        idx.insert("example.net", 1, MATCH_SUBDOMAINS);
        assert_eq!(targets(&idx, "example.net"), vec![1, 3]);
        assert_eq!(targets(&idx, "w.example.net"), vec![1, 2, 3]);
    }

    #[test]
    fn growing_keeps_every_entry_findable() {
        let mut idx = DomainIndex::new();
        for i in 0..5000u32 {
            idx.insert(&format!("host{i}.example"), i % 7, MATCH_EXACT);
        }
        for i in 0..5000u32 {
            assert_eq!(targets(&idx, &format!("host{i}.example")), vec![i % 7]);
        }
        assert_eq!(idx.len(), 5000);
    }

    fn naive(entries: &[(String, u32, u32)], host: &str) -> Vec<u32> {
        let mut v: Vec<u32> = entries
            .iter()
            .filter(|(d, _, flags)| {
                (host == d && flags & MATCH_EXACT != 0)
                    || (host.ends_with(&format!(".{d}")) && flags & MATCH_SUBDOMAINS != 0)
            })
            .map(|(_, t, _)| *t)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-c]{1,2}", 1..4).prop_map(|labels| labels.join("."))
    }

    proptest! {
        #[test]
        fn suffix_lookup_agrees_with_naive_scan(
            entries in prop::collection::vec((domain(), 0u32..5, 1u32..4), 0..40),
            hosts in prop::collection::vec(domain(), 1..20),
        ) {
            let mut idx = DomainIndex::new();
            for (d, t, f) in &entries {
                idx.insert(d, *t, *f);
            }
            for h in &hosts {
                prop_assert_eq!(targets(&idx, h), naive(&entries, h));
            }
        }

        #[test]
        fn a_domain_matches_its_own_wildcard(d in domain(), sub in "[a-z]{1,8}") {
            let mut idx = DomainIndex::new();
            idx.insert(&d, 9, MATCH_SUBDOMAINS);
            let host = format!("{sub}.{d}");
            prop_assert_eq!(targets(&idx, &host), vec![9]);
            prop_assert!(targets(&idx, &d).is_empty());
        }
    }
}
