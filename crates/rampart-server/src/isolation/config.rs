//! `[isolation]` and `[[response]]` in rampart.toml, and their compiled form: the
//! exception files read and checked with the agent's own parser (so a file the agent
//! would refuse is refused here, with `FILE:LINE:COL`), the response queries parsed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rampart_events::Query;
use serde::Deserialize;

/// `[isolation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// pf-style exception file for every isolated device (docs/isolation.md).
    pub exceptions: Option<PathBuf>,
    /// Exception files per device group: a device in one of these groups gets that
    /// file instead of `exceptions` (the first group listed that matches wins).
    pub groups: Vec<GroupExceptions>,
    /// DNS resolvers kept open (udp/tcp 53 to these only).
    pub resolvers: Vec<IpAddr>,
    /// More host names or addresses to keep reachable, besides the server and gateway
    /// the agent enrolled with (a second gateway, the address behind a NAT).
    pub keep: Vec<String>,
}

/// `[[isolation.groups]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupExceptions {
    pub group: String,
    pub exceptions: PathBuf,
}

/// What a response rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseAction {
    Isolate,
}

/// `scope = { groups = [...], devices = [...] }`: empty means every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    pub groups: Vec<String>,
    pub devices: Vec<String>,
}

/// `[[response]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRuleConfig {
    pub name: String,
    /// An event query (docs/events.md), e.g. `dst_port = 4444 and action = block`.
    pub query: String,
    pub action: ResponseAction,
    #[serde(default)]
    pub scope: Scope,
    /// At most this many isolations per minute by this rule.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Only log and record what the rule would do.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_rate_limit() -> u32 {
    10
}

/// A checked exception file: its text (sent to agents) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionFile {
    pub path: PathBuf,
    pub text: String,
}

/// A response rule ready to match.
#[derive(Debug, Clone)]
pub struct ResponseRule {
    pub name: String,
    pub query: Query,
    pub query_text: String,
    pub action: ResponseAction,
    pub scope: Scope,
    pub rate_limit: u32,
    pub dry_run: bool,
}

/// Everything of `[isolation]` and `[[response]]`, checked.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub exceptions: Option<ExceptionFile>,
    pub groups: Vec<(String, ExceptionFile)>,
    pub resolvers: Vec<IpAddr>,
    pub keep: Vec<String>,
    pub rules: Vec<ResponseRule>,
}

impl Compiled {
    /// Reads every exception file and parses every query; the first problem is the
    /// error (exception files report every error of the file, `FILE:LINE:COL` each).
    pub fn load(
        isolation: &IsolationConfig,
        response: &[ResponseRuleConfig],
    ) -> Result<Compiled, String> {
        let exceptions = isolation
            .exceptions
            .as_deref()
            .map(read_exceptions)
            .transpose()?;
        let mut groups = Vec::new();
        for g in &isolation.groups {
            groups.push((g.group.clone(), read_exceptions(&g.exceptions)?));
        }
        let mut rules = Vec::new();
        for r in response {
            if r.name.trim().is_empty() {
                return Err("[[response]]: a rule needs a name".into());
            }
            if rules.iter().any(|x: &ResponseRule| x.name == r.name) {
                return Err(format!(
                    "[[response]] \"{}\": the name is used twice",
                    r.name
                ));
            }
            if r.query.trim().is_empty() {
                return Err(format!(
                    "[[response]] \"{}\": query is empty (it would match every event)",
                    r.name
                ));
            }
            let query = rampart_events::parse_query(&r.query)
                .map_err(|e| format!("[[response]] \"{}\": {}", r.name, e.render(&r.query)))?;
            if r.rate_limit == 0 {
                return Err(format!(
                    "[[response]] \"{}\": rate_limit = 0 would never act (use dry_run = true to only record)",
                    r.name
                ));
            }
            rules.push(ResponseRule {
                name: r.name.clone(),
                query,
                query_text: r.query.clone(),
                action: r.action,
                scope: r.scope.clone(),
                rate_limit: r.rate_limit,
                dry_run: r.dry_run,
            });
        }
        Ok(Compiled {
            exceptions,
            groups,
            resolvers: isolation.resolvers.clone(),
            keep: isolation.keep.clone(),
            rules,
        })
    }

    /// The exception file for a device in `groups`.
    pub fn exceptions_for(&self, groups: &[String]) -> Option<&ExceptionFile> {
        self.groups
            .iter()
            .find(|(g, _)| groups.iter().any(|d| d == g))
            .map(|(_, f)| f)
            .or(self.exceptions.as_ref())
    }
}

fn read_exceptions(path: &Path) -> Result<ExceptionFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the isolation exceptions {}: {e}",
            path.display()
        )
    })?;
    rampart_agent::isolation::parse_rules(&path.display().to_string(), &text)
        .map_err(|e| e.to_string())?;
    Ok(ExceptionFile {
        path: path.to_path_buf(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, query: &str) -> ResponseRuleConfig {
        ResponseRuleConfig {
            name: name.into(),
            query: query.into(),
            action: ResponseAction::Isolate,
            scope: Scope::default(),
            rate_limit: 1,
            dry_run: false,
        }
    }

    #[test]
    fn a_bad_exception_file_is_refused_with_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ex.pf");
        std::fs::write(
            &path,
            "pass out proto tcp to 203.0.113.2 port 22\npass out proot tcp\n",
        )
        .unwrap();
        let config = IsolationConfig {
            exceptions: Some(path.clone()),
            ..Default::default()
        };
        let err = Compiled::load(&config, &[]).unwrap_err();
        assert!(err.contains(&format!("{}:2:10:", path.display())), "{err}");
        std::fs::write(&path, "pass out proto tcp to 203.0.113.2 port 22\n").unwrap();
        let ok = Compiled::load(&config, &[]).unwrap();
        assert!(ok.exceptions.unwrap().text.contains("port 22"));
    }

    #[test]
    fn response_queries_are_parsed_at_load() {
        let err = Compiled::load(&IsolationConfig::default(), &[rule("r", "dst_port = = 1")])
            .unwrap_err();
        assert!(err.starts_with("[[response]] \"r\": query column"), "{err}");
        let err = Compiled::load(
            &IsolationConfig::default(),
            &[rule("r", "type = alert"), rule("r", "x = 1")],
        )
        .unwrap_err();
        assert!(err.contains("twice") || err.contains("unknown"), "{err}");
        let ok =
            Compiled::load(&IsolationConfig::default(), &[rule("r", "dst_port = 4444")]).unwrap();
        assert_eq!(ok.rules.len(), 1);
    }

    #[test]
    fn a_group_file_replaces_the_default_for_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pf"), dir.path().join("b.pf"));
        std::fs::write(&a, "pass out to 192.0.2.1\n").unwrap();
        std::fs::write(&b, "pass out to 192.0.2.2\n").unwrap();
        let config = IsolationConfig {
            exceptions: Some(a.clone()),
            groups: vec![GroupExceptions {
                group: "servers".into(),
                exceptions: b.clone(),
            }],
            ..Default::default()
        };
        let c = Compiled::load(&config, &[]).unwrap();
        assert_eq!(c.exceptions_for(&["eng".into()]).unwrap().path, a);
        assert_eq!(c.exceptions_for(&["servers".into()]).unwrap().path, b);
    }
}
