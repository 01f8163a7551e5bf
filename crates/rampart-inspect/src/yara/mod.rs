//! YARA rules with boreal (pure Rust, YARA 4.5 compatible): compiled once
//! per Inspector build, evaluated on every object with the time left in the
//! body's budget.
//!
//! Two paths. The rules that depend only on which of their strings occur
//! ([`plan`]) are scanned *while a long download streams*, block by block
//! on the session's scan thread ([`stream`]), and decided at the end from
//! what was found — no second read of the body for them, no whole-body
//! scan while the last chunk is held. The other rules of the set are
//! compiled into a scanner of their own that scans the whole body at the
//! end. Every object that is not a streamed download (short bodies,
//! uploads, archive entries) is scanned whole by the full rule set.

mod plan;
mod stream;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::InspectError;

pub use stream::STREAM_BLOCK;
pub(crate) use stream::{Witness, YaraStream};

pub(crate) struct YaraRules {
    /// Every rule: whole-body scans, and deciding the streamed rules.
    scanner: boreal::Scanner,
    /// Set when some rules stream (and `inspect.yara.stream` is on).
    streaming: Option<Streaming>,
    /// Which rules take which path, and why (for docs, logs and tests).
    plan: YaraPlan,
}

/// The compiled pieces of the streaming path.
struct Streaming {
    presence: stream::StreamingRules,
    /// The rules that stream: the only ones taken from the witness.
    streamed: HashSet<String>,
    /// The rules that need the whole body (with what they depend on), for
    /// the end of a streamed body, and their names; `None` when every rule
    /// streams.
    whole_file: Option<(boreal::Scanner, HashSet<String>)>,
}

/// Which rules of a rule set are decided while the body streams and which
/// need the whole body: see `docs/inspection.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YaraPlan {
    /// Rules decided from the blocks as they arrive.
    pub streamed: Vec<String>,
    /// Rules that need the whole body, each with the reason.
    pub whole_file: Vec<(String, String)>,
    /// Whether long downloads are scanned while they stream: some rules
    /// allow it and `inspect.yara.stream` is on.
    pub streams: bool,
}

pub(crate) enum YaraOutcome {
    Matches(Vec<String>),
    Timeout,
}

impl YaraOutcome {
    /// Both outcomes: a match found by either is a match; a timeout stays
    /// one only when nothing matched.
    fn and(self, other: YaraOutcome) -> YaraOutcome {
        match (self, other) {
            (YaraOutcome::Matches(mut a), YaraOutcome::Matches(b)) => {
                a.extend(b);
                YaraOutcome::Matches(a)
            }
            (YaraOutcome::Matches(a), YaraOutcome::Timeout)
            | (YaraOutcome::Timeout, YaraOutcome::Matches(a))
                if !a.is_empty() =>
            {
                YaraOutcome::Matches(a)
            }
            _ => YaraOutcome::Timeout,
        }
    }

    fn only(self, names: &HashSet<String>) -> YaraOutcome {
        match self {
            YaraOutcome::Matches(mut found) => {
                found.retain(|n| names.contains(n));
                YaraOutcome::Matches(found)
            }
            YaraOutcome::Timeout => YaraOutcome::Timeout,
        }
    }
}

impl YaraRules {
    /// `stream`: `inspect.yara.stream` (false: every body is scanned whole).
    pub(crate) fn compile(files: &[PathBuf], stream: bool) -> Result<YaraRules, InspectError> {
        let mut compiler = boreal::Compiler::new();
        for path in files {
            // boreal's message starts with `file:line:col:`.
            compiler
                .add_rules_file(path)
                .map_err(|e| InspectError::YaraCompile {
                    message: e.to_string(),
                })?;
        }
        let scanner = compiler.finalize();
        let analysis = plan::analyse(files);
        let mut plan = YaraPlan {
            streamed: analysis.streamed.clone(),
            whole_file: analysis.whole_file.clone(),
            streams: false,
        };
        let streaming = if stream && !analysis.streamed.is_empty() {
            match compile_streaming(&analysis) {
                Ok(streaming) => Some(streaming),
                Err(message) => {
                    // Never expected (the pieces come from rules that
                    // compiled); the whole-body scan stays exact.
                    let reason = format!("the streaming path does not compile: {message}");
                    plan.whole_file = std::mem::take(&mut plan.streamed)
                        .into_iter()
                        .map(|r| (r, reason.clone()))
                        .chain(std::mem::take(&mut plan.whole_file))
                        .collect();
                    None
                }
            }
        } else {
            None
        };
        plan.streams = streaming.is_some();
        Ok(YaraRules {
            scanner,
            streaming,
            plan,
        })
    }

    pub(crate) fn plan(&self) -> &YaraPlan {
        &self.plan
    }

    /// A presence scan for one streaming body, when some rules stream.
    pub(crate) fn stream(&self) -> Option<YaraStream> {
        self.streaming
            .as_ref()
            .map(|s| YaraStream::new(&s.presence, STREAM_BLOCK))
    }

    /// Whether a streamed body must still be read whole at the end (some
    /// rules need it): its spool is then kept.
    pub(crate) fn streamed_body_needs_rereading(&self) -> bool {
        self.streaming
            .as_ref()
            .is_none_or(|s| s.whole_file.is_some())
    }

    /// Decides the rules for a body that streamed: the streamed rules from
    /// the witness, the others by scanning `body` (read only if some rules
    /// need it; its error is returned as is).
    pub(crate) fn decide<B: std::ops::Deref<Target = [u8]>, E>(
        &self,
        witness: Witness,
        body: impl FnOnce() -> Result<B, E>,
        budget: Duration,
    ) -> Result<YaraOutcome, E> {
        let Some(streaming) = &self.streaming else {
            // Not reached: no stream without streaming rules.
            return Ok(self.scan(&body()?, budget));
        };
        let started = Instant::now();
        let streamed = witness
            .evaluate(&self.scanner, budget)
            .only(&streaming.streamed);
        let Some((whole, names)) = &streaming.whole_file else {
            return Ok(streamed);
        };
        let bytes = body()?;
        let left = budget.saturating_sub(started.elapsed());
        let rest = if left.is_zero() {
            YaraOutcome::Timeout
        } else {
            scan_with(whole, &bytes, left).only(names)
        };
        Ok(streamed.and(rest))
    }

    pub(crate) fn scan(&self, data: &[u8], budget: Duration) -> YaraOutcome {
        scan_with(&self.scanner, data, budget)
    }
}

fn scan_with(scanner: &boreal::Scanner, data: &[u8], budget: Duration) -> YaraOutcome {
    // Cloning shares the compiled rules (an Arc); only the parameters
    // are per scan.
    let mut scanner = scanner.clone();
    scanner.set_scan_params(boreal::scanner::ScanParams::default().timeout_duration(Some(budget)));
    match scanner.scan_mem(data) {
        Ok(result) => YaraOutcome::Matches(rule_names(&result.rules)),
        // A rule that matched before the timeout is still a match.
        Err((_, partial)) if !partial.rules.is_empty() => {
            YaraOutcome::Matches(rule_names(&partial.rules))
        }
        Err(_) => YaraOutcome::Timeout,
    }
}

fn compile_streaming(analysis: &plan::Plan) -> Result<Streaming, String> {
    let mut compiler = boreal::Compiler::new();
    compiler
        .add_rules_str(&analysis.presence_source)
        .map_err(|e| e.to_string())?;
    let presence = stream::StreamingRules {
        presence: compiler.finalize(),
        presence_rules: analysis.presence_rules,
        longest: analysis.longest,
    };
    let whole_file = if analysis.whole_file.is_empty() {
        None
    } else {
        let source = analysis
            .whole_file_source
            .as_deref()
            .ok_or("the rules that need the whole body could not be cut from their files")?;
        let mut compiler = boreal::Compiler::new();
        compiler.add_rules_str(source).map_err(|e| e.to_string())?;
        let names = analysis.whole_file.iter().map(|(n, _)| n.clone()).collect();
        Some((compiler.finalize(), names))
    };
    Ok(Streaming {
        presence,
        streamed: analysis.streamed.iter().cloned().collect(),
        whole_file,
    })
}

/// Rule names as findings show them: `namespace:name` outside the default
/// namespace.
fn rule_names(rules: &[boreal::scanner::EvaluatedRule<'_>]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            if r.namespace.is_empty() || r.namespace == "default" {
                r.name.to_owned()
            } else {
                format!("{}:{}", r.namespace, r.name)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Differential: the streamed verdicts equal the whole-body verdicts, on
    //! random data with rule strings planted anywhere (across block
    //! boundaries too), for random block sizes and random chunking.

    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    const RULES: &str = r#"
rule lit { strings: $a = "MARKER-ONE" condition: $a }
rule both { strings: $a = "alpha" $b = "BETA" condition: $a and $b }
rule and_not { strings: $a = "gamma" $b = "delta" condition: $a and not $b }
rule hex { strings: $h = { 4D 5A [2-6] ( 50 45 | 7F 45 4C ) ?0 } condition: $h }
rule wide_nocase { strings: $w = "wIdE" wide nocase condition: $w }
rule xored { strings: $x = "xorme" xor(1-3) condition: $x }
rule two_of { strings: $a = "one" $b = "two" $c = "three" condition: 2 of them }
rule none_of { strings: $a = "zzz" $b = "yyy" condition: none of them }
rule percent { strings: $a = "p1x" $b = "p2x" $c = "p3x" $d = "p4x" condition: 50% of them }
private rule priv { strings: $a = "secret" private condition: $a }
rule uses_priv { condition: priv and not lit }
rule any_rule { condition: any of (both, hex*) }
rule always { condition: true }
rule anon { strings: $ = "anon1" $ = { 61 6E ?? 6E 32 } condition: all of them }
rule alpha_free { strings: $a = "alpha" condition: not $a }
rule masked { strings: $m = { 7E ~00 ?A B? ~?1 } condition: $m or (alpha_free and not $m) }
"#;

    /// Rules that need the whole body, added to `RULES` for the mixed set:
    /// the streamed rules come from the witness, these from a scan of the
    /// body by a scanner of their own (with the rules they depend on).
    const WHOLE_BODY_RULES: &str = r#"
rule counted { strings: $a = "one" condition: #a > 1 }
rule sized { condition: filesize > 200 and both }
rule regex { strings: $r = /al+pha[^a]/ condition: $r and not lit }
rule positioned { strings: $a = "two" condition: $a in (0..100) or any of (counted, sized) }
rule word { strings: $w = "three" fullword condition: $w }
rule after_all { condition: positioned and priv }
"#;

    /// What the tests plant: occurrences (and near misses) of the strings.
    const PLANTS: &[&[u8]] = &[
        b"MARKER-ONE",
        b"MARKER-ON",
        b"alpha",
        b"BETA",
        b"beta",
        b"gamma",
        b"delta",
        b"MZ\x01\x02PE\x30",
        b"MZ\x01\x02\x03\x04\x05\x06\x7fEL\xa0",
        b"MZ\x01PE\x30",
        b"w\x00I\x00d\x00E\x00",
        b"W\x00i\x00D\x00e\x00",
        b"wIdE",
        b"\x7a\x6d\x70\x6f\x67", // "xorme" ^ 2
        b"xorme",
        b"one",
        b"two",
        b"three",
        b"zzz",
        b"yyy",
        b"p1x",
        b"p2x",
        b"p3x",
        b"p4x",
        b"secret",
        b"anon1",
        b"anXn2",
        b"\x7e\x01\x3a\xb7\x22",
        b"\x7e\x00\x3a\xb7\x22",
    ];

    fn compile(source: &str) -> YaraRules {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yar");
        std::fs::write(&path, source).unwrap();
        let rules = YaraRules::compile(&[path], true).unwrap();
        assert!(rules.plan().streams, "{:?}", rules.plan());
        rules
    }

    /// Every rule streams.
    fn rules() -> &'static YaraRules {
        static ONCE: OnceLock<YaraRules> = OnceLock::new();
        ONCE.get_or_init(|| compile(RULES))
    }

    /// Some rules stream, some need the whole body.
    fn mixed_rules() -> &'static YaraRules {
        static ONCE: OnceLock<YaraRules> = OnceLock::new();
        ONCE.get_or_init(|| {
            let rules = compile(&format!("{RULES}{WHOLE_BODY_RULES}"));
            assert_eq!(rules.plan().whole_file.len(), 6, "{:?}", rules.plan());
            rules
        })
    }

    fn sorted(outcome: YaraOutcome) -> Vec<String> {
        match outcome {
            YaraOutcome::Matches(mut names) => {
                names.sort();
                names
            }
            YaraOutcome::Timeout => panic!("timed out"),
        }
    }

    fn body(seed: &[u8], plants: &[(usize, usize)]) -> Vec<u8> {
        // A small alphabet of the strings' own letters makes near misses common.
        const ALPHABET: &[u8] = b"aeilmnoprstwxyzMEBTA\x00\x7e";
        let mut data: Vec<u8> = seed
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
            .collect();
        for &(at, which) in plants {
            let plant = PLANTS[which % PLANTS.len()];
            let at = at % (data.len() + 1);
            data.splice(at..at, plant.iter().copied());
        }
        data
    }

    fn streamed(rules: &YaraRules, data: &[u8], block: usize, cuts: &[usize]) -> Vec<String> {
        let streaming = rules.streaming.as_ref().unwrap();
        let mut stream = YaraStream::new(&streaming.presence, block);
        let mut rest = data;
        for &cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((cut.max(1)).min(rest.len()));
            stream.feed(now);
            rest = later;
        }
        let decided = rules.decide(
            stream.finish(),
            || Ok::<_, ()>(data.to_vec()),
            Duration::from_secs(10),
        );
        sorted(decided.unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn streamed_verdicts_equal_whole_body_verdicts(
            seed in proptest::collection::vec(any::<u8>(), 0..400),
            plants in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..8),
            block in 1usize..48,
            cuts in proptest::collection::vec(1usize..70, 1..6),
        ) {
            let data = body(&seed, &plants);
            for rules in [rules(), mixed_rules()] {
                let whole = sorted(rules.scan(&data, Duration::from_secs(10)));
                prop_assert_eq!(streamed(rules, &data, block, &cuts), whole);
            }
        }
    }

    #[test]
    fn every_plant_split_at_every_offset_is_found() {
        // Each plant straddles a block boundary at every possible split.
        for plant in PLANTS {
            for block in [1, 2, 3, 7, 16] {
                for shift in 0..=plant.len() + 1 {
                    let mut data = vec![b'.'; block * 3 + 40];
                    let at = (block * 2).saturating_sub(shift).min(data.len());
                    data.splice(at..at, plant.iter().copied());
                    let whole = sorted(rules().scan(&data, Duration::from_secs(10)));
                    assert_eq!(
                        streamed(rules(), &data, block, &[5]),
                        whole,
                        "plant {plant:?} at {at}, block {block}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_rule_set_with_a_whole_body_rule_streams_the_others() {
        let mixed = compile(
            "rule s { strings: $a = \"x\" condition: $a }\nrule big { condition: filesize > 10 }\n",
        );
        let plan = mixed.plan();
        assert_eq!(plan.streamed, ["s"]);
        assert_eq!(plan.whole_file.len(), 1);
        assert!(plan.whole_file[0].1.contains("filesize"), "{plan:?}");
        assert!(mixed.streamed_body_needs_rereading());
        assert!(!rules().streamed_body_needs_rereading());
    }

    #[test]
    fn a_global_rule_that_needs_the_whole_body_stops_all_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yar");
        std::fs::write(
            &path,
            "global rule small { condition: filesize < 1000 }\nrule s { strings: $a = \"x\" condition: $a }\n",
        )
        .unwrap();
        let rules = YaraRules::compile(&[path], true).unwrap();
        assert!(!rules.plan().streams, "{:?}", rules.plan());
        assert!(rules.stream().is_none());
    }
}
