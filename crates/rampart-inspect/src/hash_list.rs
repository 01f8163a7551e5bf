//! Known-bad hash lists: hex SHA-256 (and MD5/SHA-1 from imported feeds), one
//! per line, `#` comments, an optional name after the hash.
//!
//! Storage: one sorted `Vec<[u8; N]>` per algorithm, looked up by binary
//! search: 32 bytes per SHA-256, so 1M hashes take 32 MB, with no per-entry
//! allocation and a cache-friendly lookup of ~20 probes. Names (optional)
//! sit in a separate sorted side table keyed by the hash's index, so lists
//! without names cost nothing extra.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::InspectError;

/// The EICAR anti-virus test file (eicar.org), 68 bytes.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A hit: the list it came from and the entry's name, if the line had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashHit {
    pub list: String,
    pub name: Option<String>,
}

impl HashHit {
    /// `list` or `list:name`, for a finding's rule.
    pub fn rule(&self) -> String {
        match &self.name {
            Some(n) => format!("{}:{}", self.list, n),
            None => self.list.clone(),
        }
    }
}

/// One algorithm's table.
#[derive(Debug, Default)]
struct Table<const N: usize> {
    hashes: Vec<[u8; N]>,
    /// (index into `hashes`, name), sorted by index.
    names: Vec<(u32, Box<str>)>,
    /// The list each hash came from (2 bytes per hash).
    list_of: Vec<u16>,
}

impl<const N: usize> Table<N> {
    fn build(mut entries: Vec<([u8; N], u16, Option<Box<str>>)>) -> Table<N> {
        entries.sort_unstable_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut t = Table {
            hashes: Vec::with_capacity(entries.len()),
            names: Vec::new(),
            list_of: Vec::with_capacity(entries.len()),
        };
        for (i, (h, list, name)) in entries.into_iter().enumerate() {
            t.hashes.push(h);
            t.list_of.push(list);
            if let Some(n) = name {
                t.names.push((i as u32, n));
            }
        }
        t
    }

    fn find(&self, h: &[u8; N]) -> Option<(u16, Option<&str>)> {
        let i = self.hashes.binary_search(h).ok()?;
        let name = self
            .names
            .binary_search_by_key(&(i as u32), |e| e.0)
            .ok()
            .map(|j| &*self.names[j].1);
        Some((self.list_of[i], name))
    }

    fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// All configured lists, merged.
#[derive(Debug, Default)]
pub struct HashLists {
    lists: Vec<String>,
    sha256: Table<32>,
    sha1: Table<20>,
    md5: Table<16>,
}

type Entries<const N: usize> = Vec<([u8; N], u16, Option<Box<str>>)>;

#[derive(Default)]
struct Loader {
    lists: Vec<String>,
    sha256: Entries<32>,
    sha1: Entries<20>,
    md5: Entries<16>,
}

impl Loader {
    fn add_list(&mut self, name: String) -> Result<u16, InspectError> {
        let i = u16::try_from(self.lists.len()).map_err(|_| InspectError::Limit {
            key: "hash_lists.files",
            message: "more than 65535 lists".into(),
        })?;
        self.lists.push(name);
        Ok(i)
    }

    fn parse(&mut self, path: &Path, text: &str, list: u16) -> Result<(), InspectError> {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.splitn(2, char::is_whitespace);
            let hex_part = parts.next().unwrap_or("");
            let name = parts
                .next()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Box::from);
            let bad = |message: String| InspectError::HashListLine {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            };
            let bytes = hex::decode(hex_part)
                .map_err(|e| bad(format!("{hex_part:?} is not a hex hash: {e}")))?;
            match bytes.len() {
                32 => self.sha256.push((to_array(&bytes), list, name)),
                20 => self.sha1.push((to_array(&bytes), list, name)),
                16 => self.md5.push((to_array(&bytes), list, name)),
                len => {
                    return Err(bad(format!(
                        "{len}-byte hash {hex_part:?}: expected SHA-256 (64 hex digits), SHA-1 (40) or MD5 (32)"
                    )))
                }
            }
        }
        Ok(())
    }
}

fn to_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl HashLists {
    /// Loads the built-in list (when `builtin`) and the named files.
    pub fn load(builtin: bool, files: &[PathBuf]) -> Result<HashLists, InspectError> {
        let mut loader = Loader::default();
        if builtin {
            let list = loader.add_list("builtin".into())?;
            for variant in eicar_variants() {
                let h: [u8; 32] = Sha256::digest(&variant).into();
                loader
                    .sha256
                    .push((h, list, Some("EICAR-Test-File".into())));
            }
        }
        for path in files {
            let text =
                std::fs::read_to_string(path).map_err(|source| InspectError::HashListRead {
                    path: path.clone(),
                    source,
                })?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            let list = loader.add_list(name)?;
            loader.parse(path, &text, list)?;
        }
        Ok(HashLists {
            lists: loader.lists,
            sha256: Table::build(loader.sha256),
            sha1: Table::build(loader.sha1),
            md5: Table::build(loader.md5),
        })
    }

    /// Parses one list from text (tests, tools).
    pub fn from_text(name: &str, text: &str) -> Result<HashLists, InspectError> {
        let mut loader = Loader::default();
        let list = loader.add_list(name.to_owned())?;
        loader.parse(Path::new(name), text, list)?;
        Ok(HashLists {
            lists: loader.lists,
            sha256: Table::build(loader.sha256),
            sha1: Table::build(loader.sha1),
            md5: Table::build(loader.md5),
        })
    }

    pub fn len(&self) -> usize {
        self.sha256.len() + self.sha1.len() + self.md5.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether MD5 or SHA-1 must be computed for lookups at all.
    pub fn needs_legacy_digests(&self) -> bool {
        self.sha1.len() + self.md5.len() > 0
    }

    fn hit(&self, found: Option<(u16, Option<&str>)>) -> Option<HashHit> {
        let (list, name) = found?;
        Some(HashHit {
            list: self
                .lists
                .get(usize::from(list))
                .cloned()
                .unwrap_or_default(),
            name: name.map(str::to_owned),
        })
    }

    pub fn find_sha256(&self, h: &[u8; 32]) -> Option<HashHit> {
        self.hit(self.sha256.find(h))
    }

    pub fn find_sha1(&self, h: &[u8; 20]) -> Option<HashHit> {
        self.hit(self.sha1.find(h))
    }

    pub fn find_md5(&self, h: &[u8; 16]) -> Option<HashHit> {
        self.hit(self.md5.find(h))
    }
}

/// EICAR as published and with the trailing whitespace the specification
/// allows (editors and `echo` add a newline).
fn eicar_variants() -> Vec<Vec<u8>> {
    ["", "\n", "\r\n", " ", " \n", "\n\n"]
        .iter()
        .map(|tail| [EICAR, tail.as_bytes()].concat())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_knows_eicar_and_its_newline_variant() {
        let lists = HashLists::load(true, &[]).unwrap();
        let h: [u8; 32] = Sha256::digest(EICAR).into();
        assert_eq!(
            hex::encode(h),
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
        );
        assert_eq!(
            lists.find_sha256(&h).unwrap().rule(),
            "builtin:EICAR-Test-File"
        );
        let h2: [u8; 32] = Sha256::digest([EICAR, b"\n"].concat()).into();
        assert!(lists.find_sha256(&h2).is_some());
        assert!(lists.find_sha256(&[0; 32]).is_none());
    }

    #[test]
    fn parses_all_three_algorithms_comments_and_names() {
        let text = "# feed\n\
            275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f eicar test\n\
            \n\
            3395856ce81f2b7382dee72602f798b642f14140  # sha1 of eicar\n\
            44D88612FEA8A8F36DE82E1278ABB02F\n";
        let lists = HashLists::from_text("feed", text).unwrap();
        assert_eq!(lists.len(), 3);
        assert!(lists.needs_legacy_digests());
        let md5: [u8; 16] = to_array(&hex::decode("44d88612fea8a8f36de82e1278abb02f").unwrap());
        assert_eq!(lists.find_md5(&md5).unwrap().rule(), "feed");
        let sha: [u8; 32] = Sha256::digest(EICAR).into();
        assert_eq!(lists.find_sha256(&sha).unwrap().rule(), "feed:eicar test");
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let err = HashLists::from_text("feed.txt", "# ok\nabcd\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "feed.txt:2: 2-byte hash \"abcd\": expected SHA-256 (64 hex digits), SHA-1 (40) or MD5 (32)"
        );
        let err = HashLists::from_text("feed.txt", "zz\n").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("feed.txt:1: \"zz\" is not a hex hash"));
    }

    #[test]
    fn a_million_hashes_load_and_are_found() {
        // Distinct pseudo-random hashes, cheap to make in a debug build.
        let hash_of = |i: u64| -> [u8; 32] {
            let mut h = [0u8; 32];
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for part in h.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                part.copy_from_slice(&x.to_le_bytes());
            }
            h[..8].copy_from_slice(&i.to_be_bytes());
            h
        };
        let mut text = String::with_capacity(65 * 1_000_000);
        for i in 0u64..1_000_000 {
            text.push_str(&hex::encode(hash_of(i)));
            text.push('\n');
        }
        let lists = HashLists::from_text("big", &text).unwrap();
        assert_eq!(lists.len(), 1_000_000);
        assert_eq!(lists.sha256.hashes.capacity() * 32, 32_000_000);
        assert!(lists.find_sha256(&hash_of(777_777)).is_some());
        assert!(lists.find_sha256(&hash_of(1_000_001)).is_none());
    }
}
