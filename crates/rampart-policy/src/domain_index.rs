//! Compiled domain-suffix index: one open-addressing hash table over every domain of
//! every category, list and app, keyed by the normalised domain text.
//!
//! A lookup hashes each suffix of the host (`a.b.example` → `a.b.example`,
//! `b.example`, `example`), so its cost depends on the number of labels, never on the
//! number of entries. Domain texts live in one byte arena; each table slot holds an
//! entry's hash tag, text position and value, where the value is one packed
//! `(target, flags)` pair or an index into a side table when a domain belongs to
//! several targets. One million domains take ~50 MiB.

/// The entry matches the host itself.
pub(crate) const MATCH_EXACT: u32 = 1;
/// The entry matches hosts below it.
pub(crate) const MATCH_SUBDOMAINS: u32 = 2;

const SET_BIT: u32 = 1 << 31;
/// Targets are packed as `target << 2 | flags` below the set bit.
pub(crate) const MAX_TARGETS: u32 = 1 << 29;

/// One table slot. `len == 0` marks an empty slot (domains are never empty). The
/// entry lives in the slot itself, so a probe that finds its tag already has the
/// value and text position: a hit costs the slot and the text, nothing else.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tag: u32,
    start: u32,
    len: u32,
    value: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DomainIndex {
    arena: Vec<u8>,
    slots: Vec<Slot>,
    count: usize,
    /// Bit filter over entry hashes (~16 bits per entry): small enough to stay in
    /// cache, it rejects most suffixes that are not in the index without touching
    /// the large slot table. Built by `shrink`.
    filter: Vec<u64>,
    sets: Vec<Vec<u32>>,
}

/// Copies `src` into a new exactly-sized vector whose memory is advised for
/// transparent huge pages before it is first touched (Linux; elsewhere a plain copy).
fn huge_page_copy<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(src.len());
    advise_huge_pages(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(src));
    v.extend_from_slice(src);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    if len < HUGE {
        return;
    }
    // Only whole 2 MiB-aligned ranges inside the allocation can become huge pages.
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: [start, end) lies inside an allocation we own and have not handed
        // out; MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
        // A failure (e.g. THP disabled) is harmless and ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

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
    // MurmurHash3's fmix64 finaliser: spreads every input bit into the low bits
    // that pick the slot, so linear probing does not cluster on shared suffixes.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl DomainIndex {
    pub(crate) fn new() -> Self {
        DomainIndex {
            slots: vec![Slot::default(); 16],
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Calls `f(domain, target, flags)` for every entry. Walks the whole table: for
    /// exports (the agent's steering rules), never on the data path.
    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(&str, u32, u32)) {
        for slot in self.slots.iter().filter(|s| s.len != 0) {
            let Ok(domain) = std::str::from_utf8(self.text(slot)) else {
                continue;
            };
            if slot.value & SET_BIT == 0 {
                f(domain, slot.value >> 2, slot.value & 3);
            } else {
                for &p in &self.sets[(slot.value & !SET_BIT) as usize] {
                    f(domain, p >> 2, p & 3);
                }
            }
        }
    }

    /// Approximate heap use in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + std::mem::size_of::<Slot>() * self.slots.capacity()
            + 8 * self.filter.capacity()
            + self
                .sets
                .iter()
                .map(|s| 24 + 4 * s.capacity())
                .sum::<usize>()
    }

    fn text(&self, slot: &Slot) -> &[u8] {
        &self.arena[slot.start as usize..slot.start as usize + slot.len as usize]
    }

    /// The slot index holding `key`, if any.
    #[inline]
    fn find(&self, key: &[u8], h: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        loop {
            let slot = &self.slots[i];
            if slot.len == 0 {
                return None;
            }
            if slot.tag == h as u32 && slot.len as usize == key.len() && self.text(slot) == key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let mut slots = vec![Slot::default(); cap];
        let mask = cap - 1;
        for slot in self.slots.iter().filter(|s| s.len != 0) {
            // The 32-bit tag is the hash's low half: enough to place entries in
            // tables up to 2^32 slots.
            let mut i = (slot.tag as usize) & mask;
            while slots[i].len != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = *slot;
        }
        self.slots = slots;
    }

    /// Adds `domain` (already normalised) for `target` with the given match flags.
    pub(crate) fn insert(&mut self, domain: &str, target: u32, flags: u32) {
        debug_assert!(target < MAX_TARGETS);
        let key = domain.as_bytes();
        if key.is_empty() {
            return;
        }
        // The filter describes a finished index; a later insert rebuilds it in `shrink`.
        self.filter.clear();
        let h = hash(key);
        let packed = (target << 2) | flags;
        if let Some(i) = self.find(key, h) {
            self.merge(i, packed);
            return;
        }
        // Grow at 3/4 load: probes stay short and a hit's neighbours share its line.
        if (self.count + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        while self.slots[i].len != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot {
            tag: h as u32,
            start,
            len: key.len() as u32,
            value: packed,
        };
        self.count += 1;
    }

    fn merge(&mut self, slot: usize, packed: u32) {
        let value = self.slots[slot].value;
        let target = packed >> 2;
        if value & SET_BIT == 0 {
            if value >> 2 == target {
                self.slots[slot].value = value | packed;
                return;
            }
            self.sets.push(vec![value, packed]);
            self.slots[slot].value = SET_BIT | (self.sets.len() as u32 - 1);
            return;
        }
        let set = &mut self.sets[(value & !SET_BIT) as usize];
        match set.iter_mut().find(|p| **p >> 2 == target) {
            Some(p) => *p |= packed,
            None => set.push(packed),
        }
    }

    #[inline]
    fn filter_bit(&self, h: u64) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        // High hash bits: independent of the low bits that choose the slot.
        let bits = self.filter.len() * 64;
        let i = ((h >> 40) as usize) & (bits - 1);
        self.filter[i / 64] & (1 << (i % 64)) != 0
    }

    fn build_filter(&mut self) {
        let bits = (self.count * 16).next_power_of_two().max(64);
        let mut filter = vec![0u64; bits / 64];
        for slot in self.slots.iter().filter(|s| s.len != 0) {
            let h = hash(self.text(slot));
            let i = ((h >> 40) as usize) & (bits - 1);
            filter[i / 64] |= 1 << (i % 64);
        }
        self.filter = filter;
    }

    /// Releases spare capacity and builds the lookup filter once building is done.
    pub(crate) fn shrink(&mut self) {
        self.build_filter();
        // Final copies into huge-page-backed memory where the OS allows it: lookups
        // touch random places of tens of MiB, and 4 KiB pages would add a TLB miss
        // (a page-table walk) to nearly every one of them.
        self.arena = huge_page_copy(&self.arena);
        self.slots = huge_page_copy(&self.slots);
        self.filter = huge_page_copy(&self.filter);
        for s in &mut self.sets {
            s.shrink_to_fit();
        }
        self.sets.shrink_to_fit();
    }

    /// Calls `f(target, matched_suffix)` for every target whose entries cover `host`
    /// (normalised). Walks suffixes from the full host to the last label.
    #[inline]
    pub(crate) fn lookup(&self, host: &str, mut f: impl FnMut(u32, &str)) {
        if self.count == 0 || host.is_empty() {
            return;
        }
        const BATCH: usize = 16;
        let bytes = host.as_bytes();
        let mask = self.slots.len() - 1;
        let mut next = Some(0usize);
        while let Some(batch_start) = next {
            // Pass 1: hash every suffix and load its first slot. The loads do not
            // depend on each other, so the CPU overlaps their cache misses instead of
            // paying one memory round trip per label.
            let mut starts = [0usize; BATCH];
            let mut hashes = [0u64; BATCH];
            let mut first = [false; BATCH];
            let mut n = 0;
            let mut start = batch_start;
            next = None;
            loop {
                let h = hash(&bytes[start..]);
                starts[n] = start;
                hashes[n] = h;
                // Reading the slot's length starts the memory access for this suffix.
                first[n] = self.filter_bit(h) && self.slots[(h as usize) & mask].len != 0;
                n += 1;
                match bytes[start..].iter().position(|&b| b == b'.') {
                    Some(dot) if n == BATCH => {
                        next = Some(start + dot + 1);
                        break;
                    }
                    Some(dot) => start += dot + 1,
                    None => break,
                }
            }
            // Pass 2: resolve each suffix; most end at an empty first slot.
            for k in 0..n {
                if !first[k] {
                    continue;
                }
                let start = starts[k];
                let Some(slot) = self.find(&bytes[start..], hashes[k]) else {
                    continue;
                };
                let want = if start == 0 {
                    MATCH_EXACT
                } else {
                    MATCH_SUBDOMAINS
                };
                let suffix = &host[start..];
                let value = self.slots[slot].value;
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
            // After `shrink` the filter and huge-page copies are in use: same answers.
            idx.shrink();
            for h in hosts.iter().chain(entries.iter().map(|e| &e.0)) {
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
