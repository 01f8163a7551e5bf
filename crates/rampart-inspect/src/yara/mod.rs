//! YARA rules with boreal (pure Rust, YARA 4.5 compatible): compiled once
//! per Inspector build, evaluated on every object with the time left in the
//! body's budget.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::InspectError;

pub(crate) struct YaraRules {
    scanner: boreal::Scanner,
}

pub(crate) enum YaraOutcome {
    Matches(Vec<String>),
    Timeout,
}

impl YaraRules {
    pub(crate) fn compile(files: &[PathBuf]) -> Result<YaraRules, InspectError> {
        let mut compiler = boreal::Compiler::new();
        for path in files {
            // boreal's message starts with `file:line:col:`.
            compiler
                .add_rules_file(path)
                .map_err(|e| InspectError::YaraCompile {
                    message: e.to_string(),
                })?;
        }
        Ok(YaraRules {
            scanner: compiler.finalize(),
        })
    }

    pub(crate) fn scan(&self, data: &[u8], budget: Duration) -> YaraOutcome {
        // Cloning shares the compiled rules (an Arc); only the parameters
        // are per scan.
        let mut scanner = self.scanner.clone();
        scanner
            .set_scan_params(boreal::scanner::ScanParams::default().timeout_duration(Some(budget)));
        let names = |rules: &[boreal::scanner::EvaluatedRule<'_>]| {
            rules
                .iter()
                .map(|r| {
                    if r.namespace.is_empty() || r.namespace == "default" {
                        r.name.to_owned()
                    } else {
                        format!("{}:{}", r.namespace, r.name)
                    }
                })
                .collect::<Vec<_>>()
        };
        match scanner.scan_mem(data) {
            Ok(result) => YaraOutcome::Matches(names(&result.rules)),
            // A rule that matched before the timeout is still a match.
            Err((_, partial)) if !partial.rules.is_empty() => {
                YaraOutcome::Matches(names(&partial.rules))
            }
            Err(_) => YaraOutcome::Timeout,
        }
    }
}
