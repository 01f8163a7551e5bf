//! YARA rules with boreal (pure Rust, YARA 4.5 compatible): compiled once
//! per Inspector build, evaluated on every object with the time left in the
//! body's budget.
//!
//! Two paths. A rule set whose every rule depends only on which of its
//! strings occur ([`plan`]) is scanned *while the body streams*, block by
//! block on the session's scan thread ([`stream`]), and decided at the end
//! from what was found — no second read of the body, no whole-body scan
//! while the last chunk is held. Any other rule set, and every object that
//! is not a streamed download (short bodies, uploads, archive entries), is
//! scanned whole at the end.

mod plan;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::InspectError;

pub use stream::STREAM_BLOCK;
pub(crate) use stream::{Witness, YaraStream};

pub(crate) struct YaraRules {
    scanner: boreal::Scanner,
    /// Set when every rule streams.
    streaming: Option<stream::StreamingRules>,
    /// Which rules take which path, and why (for docs, logs and tests).
    plan: YaraPlan,
}

/// Which rules of a rule set are decided while the body streams and which
/// need the whole body: see `docs/inspection.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YaraPlan {
    /// Rules decided from the blocks as they arrive.
    pub streamed: Vec<String>,
    /// Rules that need the whole body, each with the reason.
    pub whole_file: Vec<(String, String)>,
    /// Whether the rule set is scanned while the body streams: only when
    /// no rule needs the whole body (a whole-body scan would read
    /// everything again anyway) and `inspect.yara.stream` is on.
    pub streams: bool,
}

pub(crate) enum YaraOutcome {
    Matches(Vec<String>),
    Timeout,
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
        let streaming = if stream && analysis.whole_file.is_empty() && !analysis.streamed.is_empty()
        {
            match compile_presence(&analysis) {
                Ok(rules) => Some(rules),
                Err(message) => {
                    // Never expected (the strings come from rules that
                    // compiled); the whole-body scan stays exact.
                    plan.whole_file = std::mem::take(&mut plan.streamed)
                        .into_iter()
                        .map(|r| (r, format!("presence rules do not compile: {message}")))
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

    /// A presence scan for one streaming body, when the rule set streams.
    pub(crate) fn stream(&self) -> Option<YaraStream> {
        self.streaming
            .as_ref()
            .map(|rules| YaraStream::new(rules, STREAM_BLOCK))
    }

    /// Decides the rules from a finished presence scan.
    pub(crate) fn evaluate(&self, witness: Witness, budget: Duration) -> YaraOutcome {
        witness.evaluate(&self.scanner, budget)
    }

    pub(crate) fn scan(&self, data: &[u8], budget: Duration) -> YaraOutcome {
        // Cloning shares the compiled rules (an Arc); only the parameters
        // are per scan.
        let mut scanner = self.scanner.clone();
        scanner
            .set_scan_params(boreal::scanner::ScanParams::default().timeout_duration(Some(budget)));
        match scanner.scan_mem(data) {
            Ok(result) => YaraOutcome::Matches(rule_names(&result.rules)),
            // A rule that matched before the timeout is still a match.
            Err((_, partial)) if !partial.rules.is_empty() => {
                YaraOutcome::Matches(rule_names(&partial.rules))
            }
            Err(_) => YaraOutcome::Timeout,
        }
    }
}

fn compile_presence(analysis: &plan::Plan) -> Result<stream::StreamingRules, String> {
    let mut compiler = boreal::Compiler::new();
    compiler
        .add_rules_str(&analysis.presence_source)
        .map_err(|e| e.to_string())?;
    Ok(stream::StreamingRules {
        presence: compiler.finalize(),
        presence_rules: analysis.presence_rules,
        longest: analysis.longest,
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

    fn rules() -> &'static YaraRules {
        static RULES_ONCE: OnceLock<YaraRules> = OnceLock::new();
        RULES_ONCE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rules.yar");
            std::fs::write(&path, RULES).unwrap();
            let rules = YaraRules::compile(&[path], true).unwrap();
            assert!(rules.plan().streams, "{:?}", rules.plan());
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

    fn streamed(data: &[u8], block: usize, cuts: &[usize]) -> Vec<String> {
        let rules = rules();
        let streaming = rules.streaming.as_ref().unwrap();
        let mut stream = YaraStream::new(streaming, block);
        let mut rest = data;
        for &cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((cut.max(1)).min(rest.len()));
            stream.feed(now);
            rest = later;
        }
        sorted(rules.evaluate(stream.finish(), Duration::from_secs(10)))
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
            let whole = sorted(rules().scan(&data, Duration::from_secs(10)));
            prop_assert_eq!(streamed(&data, block, &cuts), whole);
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
                        streamed(&data, block, &[5]),
                        whole,
                        "plant {plant:?} at {at}, block {block}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_rule_set_with_a_whole_body_rule_is_scanned_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yar");
        std::fs::write(
            &path,
            "rule s { strings: $a = \"x\" condition: $a }\nrule big { condition: filesize > 10 }\n",
        )
        .unwrap();
        let rules = YaraRules::compile(&[path], true).unwrap();
        let plan = rules.plan();
        assert!(!plan.streams);
        assert_eq!(plan.streamed, ["s"]);
        assert_eq!(plan.whole_file.len(), 1);
        assert!(plan.whole_file[0].1.contains("filesize"));
        assert!(rules.stream().is_none());
    }
}
