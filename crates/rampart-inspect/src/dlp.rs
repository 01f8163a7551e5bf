//! Sensitive data in uploads: built-in profiles with validators (Luhn for card
//! numbers, ISO 13616 mod-97 for IBANs, key formats) and custom regex and
//! keyword profiles, each with a minimum count.
//!
//! Streaming: text arrives in chunks and a match may straddle two. Each chunk
//! is scanned together with a tail of the previous one; a match counts in
//! exactly one window, the one where it *starts* in the "accept zone" (the
//! window minus its last `OVERLAP` bytes), and since no built-in pattern is
//! longer than `OVERLAP`, that window saw the whole match. A further
//! `LOOKBEHIND` of already-accepted bytes precedes each window so a pattern's
//! `\b` sees the real preceding byte and does not start mid-number.
//!
//! Only masked values leave this module (`4111 **** **** 1111`).

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;

use crate::config::DlpConfig;
use crate::error::InspectError;

/// The built-in profile names.
pub const BUILTIN_PROFILES: [&str; 6] = [
    "payment-card",
    "iban",
    "aws-access-key",
    "aws-secret-key",
    "private-key",
    "jwt",
];

/// Longest match guaranteed to be found across a chunk boundary. Built-in
/// patterns are bounded below this; custom regexes longer than it may be
/// missed when split by a chunk boundary.
pub const OVERLAP: usize = 4096;
const LOOKBEHIND: usize = 256;
/// Masked samples kept per profile.
const MAX_SAMPLES: usize = 5;

#[derive(Debug, Clone, Copy)]
enum Check {
    None,
    Luhn,
    Iban,
    Jwt,
}

#[derive(Debug, Clone, Copy)]
enum Mask {
    /// Digits in groups of four, the first and last four shown.
    Digits,
    /// Alphanumerics in groups of four, the first and last four shown.
    Grouped,
    /// Keep this many characters at the start and the end.
    Edges(usize, usize),
    /// The matched text is a label, not a secret (`-----BEGIN RSA PRIVATE KEY-----`).
    Label,
    /// A JWT: the header segment is shown, payload and signature hidden.
    Jwt,
}

#[derive(Debug)]
enum Detector {
    Pattern {
        re: Regex,
        /// Capture group holding the value (0: the whole match).
        group: usize,
        check: Check,
        mask: Mask,
        /// Where a value starting with an ASCII letter goes instead: the
        /// merged card/IBAN pattern reports IBANs to the `iban` profile.
        alt: Option<(usize, Check, Mask)>,
    },
    Keywords {
        ac: AhoCorasick,
        words: Vec<String>,
    },
}

#[derive(Debug)]
struct Profile {
    name: String,
    min_count: usize,
    detectors: Vec<Detector>,
}

/// The compiled DLP profiles.
#[derive(Debug, Default)]
pub struct Dlp {
    profiles: Vec<Profile>,
}

/// A profile that matched at least its minimum count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlpHit {
    pub profile: String,
    pub count: usize,
    pub masked: Vec<String>,
}

fn compile(profile: &str, pattern: &str) -> Result<Regex, InspectError> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(16 * 1024 * 1024)
        .build()
        .map_err(|e| InspectError::DlpProfile {
            profile: profile.to_owned(),
            message: e.to_string(),
        })
}

/// 13-19 digits, single spaces or dashes between them, on a major network's
/// leading digit (2-6).
const CARD_BODY: &str = "[2-6](?:[ -]?[0-9]){12,18}";
/// Country code, check digits, 11-30 alphanumerics, optionally in groups.
const IBAN_BODY: &str = "[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}";

fn builtin(name: &str) -> Result<Vec<Detector>, InspectError> {
    let pattern = |p: &str, group, check, mask| -> Result<Detector, InspectError> {
        Ok(Detector::Pattern {
            re: compile(name, p)?,
            group,
            check,
            mask,
            alt: None,
        })
    };
    Ok(vec![match name {
        // 13-19 digits, single spaces or dashes between them, on a major
        // network's leading digit (2-6); validated by Luhn.
        "payment-card" => pattern(
            &format!(r"(?-u)\b{CARD_BODY}\b"),
            0,
            Check::Luhn,
            Mask::Digits,
        )?,
        // Country code, check digits, 11-30 alphanumerics (optionally in
        // groups separated by single spaces); validated by mod-97.
        "iban" => pattern(
            &format!(r"(?-u)\b{IBAN_BODY}\b"),
            0,
            Check::Iban,
            Mask::Grouped,
        )?,
        "aws-access-key" => pattern(
            r"(?-u)\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            0,
            Check::None,
            Mask::Edges(4, 4),
        )?,
        // A 40-character secret is only recognisable next to its name.
        "aws-secret-key" => pattern(
            r#"(?i-u)aws[a-z_ .-]{0,20}?(?:secret|sk)[a-z_ .-]{0,20}?["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            1,
            Check::None,
            Mask::Edges(0, 4),
        )?,
        "private-key" => pattern(
            r"(?-u)-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----",
            0,
            Check::None,
            Mask::Label,
        )?,
        // header.payload.signature, both JSON parts base64url of `{"`.
        "jwt" => pattern(
            r"(?-u)\beyJ[A-Za-z0-9_-]{8,1500}\.eyJ[A-Za-z0-9_-]{8,1500}\.[A-Za-z0-9_-]{16,1000}",
            0,
            Check::Jwt,
            Mask::Jwt,
        )?,
        other => {
            return Err(InspectError::DlpProfile {
                profile: other.to_owned(),
                message: format!(
                    "unknown built-in profile (known: {})",
                    BUILTIN_PROFILES.join(", ")
                ),
            })
        }
    }])
}

/// Card numbers and IBANs are the two patterns without a literal to
/// prefilter on, so each costs a full DFA pass; one alternation does both in
/// one pass (a card starts with a digit, an IBAN with a letter).
fn merge_card_and_iban(profiles: &mut [Profile]) -> Result<(), InspectError> {
    let card = profiles.iter().position(|p| p.name == "payment-card");
    let iban = profiles.iter().position(|p| p.name == "iban");
    let (Some(card), Some(iban)) = (card, iban) else {
        return Ok(());
    };
    let re = compile(
        "payment-card",
        &format!(r"(?-u)\b(?:{CARD_BODY}|{IBAN_BODY})\b"),
    )?;
    profiles[card].detectors = vec![Detector::Pattern {
        re,
        group: 0,
        check: Check::Luhn,
        mask: Mask::Digits,
        alt: Some((iban, Check::Iban, Mask::Grouped)),
    }];
    profiles[iban].detectors = Vec::new();
    Ok(())
}

impl Dlp {
    pub fn new(config: &DlpConfig) -> Result<Dlp, InspectError> {
        let mut profiles = Vec::new();
        for name in &config.profiles {
            profiles.push(Profile {
                name: name.clone(),
                min_count: config.min_count.max(1),
                detectors: builtin(name)?,
            });
        }
        merge_card_and_iban(&mut profiles)?;
        for custom in &config.custom {
            if custom.regex.is_empty() && custom.keywords.is_empty() {
                return Err(InspectError::DlpProfile {
                    profile: custom.name.clone(),
                    message: "needs at least one `regex` or `keywords` entry".into(),
                });
            }
            if BUILTIN_PROFILES.contains(&custom.name.as_str()) {
                return Err(InspectError::DlpProfile {
                    profile: custom.name.clone(),
                    message: "name taken by a built-in profile".into(),
                });
            }
            let mut detectors = Vec::new();
            for r in &custom.regex {
                let p = if custom.case_insensitive {
                    format!("(?i){r}")
                } else {
                    r.clone()
                };
                detectors.push(Detector::Pattern {
                    re: compile(&custom.name, &p)?,
                    group: 0,
                    check: Check::None,
                    mask: Mask::Edges(2, 2),
                    alt: None,
                });
            }
            if !custom.keywords.is_empty() {
                let ac = AhoCorasick::builder()
                    .ascii_case_insensitive(custom.case_insensitive)
                    .build(&custom.keywords)
                    .map_err(|e| InspectError::DlpProfile {
                        profile: custom.name.clone(),
                        message: e.to_string(),
                    })?;
                detectors.push(Detector::Keywords {
                    ac,
                    words: custom.keywords.clone(),
                });
            }
            profiles.push(Profile {
                name: custom.name.clone(),
                min_count: custom.min_count.max(1),
                detectors,
            });
        }
        Ok(Dlp { profiles })
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// A streaming scan over one object.
    pub fn scan(&self) -> DlpScan<'_> {
        DlpScan {
            dlp: self,
            window: Vec::new(),
            base: 0,
            next_start: 0,
            counts: vec![0; self.profiles.len()],
            samples: vec![Vec::new(); self.profiles.len()],
        }
    }

    /// Scans a whole buffer at once.
    pub fn scan_all(&self, data: &[u8]) -> Vec<DlpHit> {
        let mut s = self.scan();
        s.feed(data);
        s.finish()
    }
}

/// A scan in progress; see the module doc for the window scheme.
pub struct DlpScan<'a> {
    dlp: &'a Dlp,
    /// Bytes from absolute offset `base`.
    window: Vec<u8>,
    base: u64,
    /// Matches starting before this offset were counted already.
    next_start: u64,
    counts: Vec<usize>,
    samples: Vec<Vec<String>>,
}

impl DlpScan<'_> {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.window.extend_from_slice(chunk);
        // Wait for enough bytes that the accept zone is worth a pass.
        if self.window.len() < 4 * OVERLAP + LOOKBEHIND {
            return;
        }
        let zone_end = self.base + (self.window.len() - OVERLAP) as u64;
        self.pass(zone_end);
        self.next_start = zone_end;
        let keep = OVERLAP + LOOKBEHIND;
        let drop = self.window.len() - keep;
        self.window.drain(..drop);
        self.base += drop as u64;
    }

    pub fn finish(mut self) -> Vec<DlpHit> {
        let end = self.base + self.window.len() as u64;
        self.pass(end);
        self.dlp
            .profiles
            .iter()
            .zip(self.counts)
            .zip(self.samples)
            .filter(|((p, count), _)| *count >= p.min_count)
            .map(|((p, count), masked)| DlpHit {
                profile: p.name.clone(),
                count,
                masked,
            })
            .collect()
    }

    /// Counts matches starting in [next_start, zone_end).
    fn pass(&mut self, zone_end: u64) {
        let window = &self.window[..];
        let in_zone = |start: usize| {
            let abs = self.base + start as u64;
            abs >= self.next_start && abs < zone_end
        };
        for (i, profile) in self.dlp.profiles.iter().enumerate() {
            for detector in &profile.detectors {
                match detector {
                    Detector::Pattern {
                        re,
                        group,
                        check,
                        mask,
                        alt,
                    } => {
                        if *group == 0 {
                            for m in re.find_iter(window) {
                                if !in_zone(m.start()) {
                                    continue;
                                }
                                let value = m.as_bytes();
                                let (target, check, mask) = match alt {
                                    Some((j, c, k))
                                        if value.first().is_some_and(u8::is_ascii_alphabetic) =>
                                    {
                                        (*j, c, k)
                                    }
                                    _ => (i, check, mask),
                                };
                                if check.passes(value) {
                                    record(
                                        &mut self.counts[target],
                                        &mut self.samples[target],
                                        mask.apply(value),
                                    );
                                }
                            }
                        } else {
                            for c in re.captures_iter(window) {
                                let (Some(whole), Some(value)) = (c.get(0), c.get(*group)) else {
                                    continue;
                                };
                                if in_zone(whole.start()) && check.passes(value.as_bytes()) {
                                    record(
                                        &mut self.counts[i],
                                        &mut self.samples[i],
                                        mask.apply(value.as_bytes()),
                                    );
                                }
                            }
                        }
                    }
                    Detector::Keywords { ac, words } => {
                        for m in ac.find_iter(window) {
                            if in_zone(m.start()) {
                                let word = words
                                    .get(m.pattern().as_usize())
                                    .cloned()
                                    .unwrap_or_default();
                                record(&mut self.counts[i], &mut self.samples[i], word);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn record(count: &mut usize, samples: &mut Vec<String>, masked: String) {
    *count += 1;
    if samples.len() < MAX_SAMPLES && !samples.contains(&masked) {
        samples.push(masked);
    }
}

impl Check {
    fn passes(&self, value: &[u8]) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => luhn(value),
            Check::Iban => iban_mod97(value),
            Check::Jwt => value.starts_with(b"eyJ"),
        }
    }
}

/// The Luhn (mod 10) check over the digits, separators ignored.
pub fn luhn(value: &[u8]) -> bool {
    // No allocation: this runs on every card-shaped number in the text.
    let mut sum = 0u32;
    let mut count = 0usize;
    for b in value.iter().rev().filter(|b| b.is_ascii_digit()) {
        let d = u32::from(b - b'0');
        sum += if count % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        count += 1;
    }
    (13..=19).contains(&count) && sum.is_multiple_of(10)
}

/// ISO 13616: move the first four characters to the end, letters to
/// 10..35, and the number mod 97 must be 1.
pub fn iban_mod97(value: &[u8]) -> bool {
    let compact: Vec<u8> = value.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

impl Mask {
    fn apply(&self, value: &[u8]) -> String {
        let text = String::from_utf8_lossy(value);
        match self {
            Mask::Digits => {
                let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).collect();
                group4(&mask_middle(&digits, 4, 4))
            }
            Mask::Grouped => {
                let chars: Vec<char> = text.chars().filter(|c| *c != ' ').collect();
                group4(&mask_middle(&chars, 4, 4))
            }
            Mask::Edges(head, tail) => {
                let chars: Vec<char> = text.chars().collect();
                mask_middle(&chars, *head, *tail).into_iter().collect()
            }
            Mask::Label => text.into_owned(),
            Mask::Jwt => {
                let header = text.split('.').next().unwrap_or("");
                let header: String = header.chars().take(24).collect();
                format!("{header}.****.****")
            }
        }
    }
}

/// Hides all but `head` leading and `tail` trailing characters; short values
/// are hidden entirely so the kept edges never reveal most of a secret.
fn mask_middle(chars: &[char], head: usize, tail: usize) -> Vec<char> {
    let n = chars.len();
    if n < 2 * (head + tail) {
        return vec!['*'; n];
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < head || i >= n - tail { *c } else { '*' })
        .collect()
}

fn group4(chars: &[char]) -> String {
    let mut s = String::with_capacity(chars.len() + chars.len() / 4);
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push(' ');
        }
        s.push(*c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CustomDlpProfile;

    fn all() -> Dlp {
        Dlp::new(&DlpConfig::default()).unwrap()
    }

    fn hit<'a>(hits: &'a [DlpHit], profile: &str) -> Option<&'a DlpHit> {
        hits.iter().find(|h| h.profile == profile)
    }

    #[test]
    fn card_numbers_pass_luhn_and_are_masked() {
        let hits = all().scan_all(b"card: 4111 1111 1111 1111, other 5500-0000-0000-0004.");
        let h = hit(&hits, "payment-card").unwrap();
        assert_eq!(h.count, 2);
        assert_eq!(h.masked, vec!["4111 **** **** 1111", "5500 **** **** 0004"]);
        let json = br#"{"card":"4012888888881881"}"#;
        assert_eq!(
            hit(&all().scan_all(json), "payment-card").unwrap().masked,
            vec!["4012 **** **** 1881"]
        );
    }

    #[test]
    fn card_number_failing_luhn_is_not_sensitive() {
        let hits = all().scan_all(b"order 4111 1111 1111 1112 shipped");
        assert!(hit(&hits, "payment-card").is_none());
    }

    #[test]
    fn iban_needs_mod97() {
        let hits = all()
            .scan_all(b"pay to DE89 3704 0044 0532 0130 00 today, not DE89 3704 0044 0532 0130 01");
        let h = hit(&hits, "iban").unwrap();
        assert_eq!(h.count, 1);
        assert_eq!(h.masked, vec!["DE89 **** **** **** **30 00"]);
        assert!(iban_mod97(b"GB82WEST12345698765432"));
    }

    #[test]
    fn aws_keys_private_keys_and_jwts() {
        let text = b"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n\
            aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n\
            -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n\
            token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\n";
        let hits = all().scan_all(text);
        assert_eq!(
            hit(&hits, "aws-access-key").unwrap().masked,
            vec!["AKIA************MPLE"]
        );
        let secret = hit(&hits, "aws-secret-key").unwrap();
        assert_eq!(secret.masked, vec![format!("{}EKEY", "*".repeat(36))]);
        assert_eq!(
            hit(&hits, "private-key").unwrap().masked,
            vec!["-----BEGIN OPENSSH PRIVATE KEY-----"]
        );
        assert_eq!(
            hit(&hits, "jwt").unwrap().masked,
            vec!["eyJhbGciOiJIUzI1NiJ9.****.****"]
        );
        // Nothing of the secrets themselves leaves the scanner.
        let all_masked: String = hits.iter().flat_map(|h| h.masked.clone()).collect();
        assert!(!all_masked.contains("IOSFODNN7EXA"));
        assert!(!all_masked.contains("wJalrXUtnFEMI"));
    }

    #[test]
    fn matches_straddling_chunk_boundaries_count_once() {
        let dlp = all();
        let mut text = vec![b'x'; 3 * OVERLAP];
        text.extend_from_slice(b" 4111 1111 1111 1111 ");
        text.extend(std::iter::repeat_n(b'y', 5 * OVERLAP));
        text.extend_from_slice(b" 4111-1111-1111-1111 ");
        text.extend(std::iter::repeat_n(b'z', OVERLAP));
        for chunk in [1usize, 7, 100, 4096, 5000, 16384, text.len()] {
            let mut scan = dlp.scan();
            for c in text.chunks(chunk) {
                scan.feed(c);
            }
            let hits = scan.finish();
            assert_eq!(
                hit(&hits, "payment-card").map(|h| h.count),
                Some(2),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn custom_profiles_with_minimum_count() {
        let cfg = DlpConfig {
            profiles: vec![],
            custom: vec![CustomDlpProfile {
                name: "project-names".into(),
                regex: vec![r"\bEMP-[0-9]{6}\b".into()],
                keywords: vec!["Falcon".into()],
                case_insensitive: true,
                min_count: 3,
            }],
            ..DlpConfig::default()
        };
        let dlp = Dlp::new(&cfg).unwrap();
        assert!(dlp.scan_all(b"falcon EMP-123456").is_empty());
        let hits = dlp.scan_all(b"falcon EMP-123456 emp-654321");
        assert_eq!(hits[0].count, 3);
        assert!(hits[0].masked.contains(&"Falcon".to_owned()));
        assert!(hits[0].masked.contains(&"EM******56".to_owned()));
    }

    #[test]
    fn bad_profiles_are_rejected_by_name() {
        let cfg = DlpConfig {
            profiles: vec!["credit-card".into()],
            ..DlpConfig::default()
        };
        let err = Dlp::new(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("DLP profile \"credit-card\": unknown built-in profile"),
            "{err}"
        );
        let cfg = DlpConfig {
            profiles: vec![],
            custom: vec![CustomDlpProfile {
                name: "broken".into(),
                regex: vec!["(".into()],
                keywords: vec![],
                case_insensitive: false,
                min_count: 1,
            }],
            ..DlpConfig::default()
        };
        assert!(Dlp::new(&cfg)
            .unwrap_err()
            .to_string()
            .starts_with("DLP profile \"broken\""));
    }
}
