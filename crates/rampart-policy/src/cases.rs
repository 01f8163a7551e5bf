//! Policy unit tests (`rampart policy test FILE CASES.toml`): each case describes a
//! flow and the decisions expected of each stage.

use std::net::IpAddr;

use serde::Deserialize;

use crate::facts::{
    ConnectionFacts, Direction, Identity, InspectionFacts, Process, RequestFacts, ResponseFacts,
    SteeringFacts,
};
use crate::policy::Policy;
use crate::verdict::{Decision, Outcome};

/// A cases file: `[[case]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One flow and what the policy must decide for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    #[serde(default)]
    pub dst_ip: Option<IpAddr>,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub process_path: Option<String>,
    #[serde(default)]
    pub file_type: Option<String>,
    /// Inspection verdicts of the body (`malicious`, `encrypted`...).
    #[serde(default)]
    pub verdicts: Vec<String>,
    /// DLP profiles that found sensitive data.
    #[serde(default)]
    pub dlp: Vec<String>,
    /// `download` or `upload`.
    #[serde(default)]
    pub direction: Option<String>,
    /// Body size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    pub expect: Expect,
}

/// Expected decisions; only the fields given are checked. Egress is written
/// `direct`, `via <upstream>` or `source <address>`; `*_rule` fields name rule ids
/// (`default` for the stage default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub steering: Option<String>,
    pub steering_rule: Option<String>,
    pub steering_log: Option<bool>,
    pub decryption: Option<String>,
    pub decryption_rule: Option<String>,
    pub access: Option<String>,
    pub access_rule: Option<String>,
    pub egress: Option<String>,
    pub egress_rule: Option<String>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A URL split into what the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Splits `scheme://host[:port]/path?query` (http, https; a bare host means https).
pub fn split_url(url: &str) -> Result<UrlParts, String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed =
        url::Url::parse(&with_scheme).map_err(|e| format!("invalid URL \"{url}\": {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("URL \"{url}\" has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("URL \"{url}\" has no port and an unknown scheme"))?;
    let mut path = parsed.path().to_string();
    if let Some(q) = parsed.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(UrlParts { host, port, path })
}

/// Parses a cases file; the error names the line and column.
pub fn parse_cases(text: &str) -> Result<CaseFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn check(failures: &mut Vec<String>, what: &str, expected: &Option<String>, got: &str) {
    if let Some(e) = expected {
        if e != got {
            failures.push(format!("{what}: expected {e}, got {got}"));
        }
    }
}

fn check_decision<A: std::fmt::Display>(
    failures: &mut Vec<String>,
    what: &str,
    expected: &Option<String>,
    expected_rule: &Option<String>,
    d: &Decision<A>,
) {
    let got = d.action.to_string();
    if let Some(e) = expected {
        if *e != got {
            failures.push(format!(
                "{what}: expected {e}, got {got} (rule {})",
                d.rule_id
            ));
        }
    }
    check(failures, &format!("{what} rule"), expected_rule, &d.rule_id);
}

impl Policy {
    /// Runs one case against this policy.
    pub fn run_case(&self, case: &Case) -> CaseResult {
        let mut failures = Vec::new();
        let parts = match split_url(&case.url) {
            Ok(p) => p,
            Err(e) => {
                return CaseResult {
                    name: case.name.clone(),
                    failures: vec![e],
                };
            }
        };
        let identity = Identity {
            user: case.user.clone(),
            groups: case.groups.clone(),
            device: case.device.clone(),
            source_ip: case.source_ip,
        };
        let process = case.process.as_ref().map(|name| Process {
            name: name.clone(),
            path: case.process_path.clone(),
        });
        let conn = ConnectionFacts {
            identity: &identity,
            process: process.as_ref(),
            host: Some(&parts.host),
            dst_ip: case.dst_ip,
            port: parts.port,
        };
        let e = &case.expect;
        if e.steering.is_some() || e.steering_rule.is_some() || e.steering_log.is_some() {
            match &process {
                Some(p) => {
                    let v = self.evaluate_steering(&SteeringFacts {
                        identity: &identity,
                        process: p,
                        host: Some(&parts.host),
                        dst_ip: case.dst_ip,
                        port: parts.port,
                    });
                    check_decision(
                        &mut failures,
                        "steering",
                        &e.steering,
                        &e.steering_rule,
                        &v.decision,
                    );
                    if let Some(log) = e.steering_log {
                        if log != v.log {
                            failures.push(format!("steering log: expected {log}, got {}", v.log));
                        }
                    }
                }
                None => failures.push("steering expectations need `process = \"...\"`".into()),
            }
        }
        let cv = self.evaluate_connection(&conn);
        check_decision(
            &mut failures,
            "decryption",
            &e.decryption,
            &e.decryption_rule,
            &cv.decryption,
        );
        let req = RequestFacts {
            connection: conn,
            method: case.method.as_deref().unwrap_or("GET"),
            path: &parts.path,
        };
        let direction = match case.direction.as_deref().map(|d| (d, Direction::parse(d))) {
            None => None,
            Some((_, Some(d))) => Some(d),
            Some((d, None)) => {
                return CaseResult {
                    name: case.name.clone(),
                    failures: vec![format!(
                        "unknown direction \"{d}\" (expected one of: {})",
                        Direction::NAMES.join(", ")
                    )],
                };
            }
        };
        let verdicts: Vec<&str> = case.verdicts.iter().map(String::as_str).collect();
        let dlp: Vec<&str> = case.dlp.iter().map(String::as_str).collect();
        let rv = self.evaluate_request(&req);
        let access = match rv.access {
            Outcome::Decided(d) => d,
            Outcome::Pending { .. } => self.evaluate_response(&ResponseFacts {
                request: req,
                inspection: InspectionFacts {
                    file_type: case.file_type.as_deref(),
                    verdicts: &verdicts,
                    dlp: &dlp,
                    direction,
                    size: case.size,
                },
            }),
        };
        check_decision(&mut failures, "access", &e.access, &e.access_rule, &access);
        check_decision(
            &mut failures,
            "egress",
            &e.egress,
            &e.egress_rule,
            &rv.egress,
        );
        CaseResult {
            name: case.name.clone(),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_url_defaults_port_by_scheme_and_keeps_query() {
        let p = split_url("http://Example.COM/a/b?x=1").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("example.com", 80, "/a/b?x=1")
        );
        assert_eq!(split_url("example.org").unwrap().port, 443);
        assert_eq!(split_url("https://h.example:8443/").unwrap().port, 8443);
        assert!(split_url("https://").is_err());
    }

    #[test]
    fn cases_file_rejects_unknown_expectation_keys() {
        let err = parse_cases("[[case]]\nname='x'\nurl='a.example'\nexpect={acess='block'}\n")
            .unwrap_err();
        assert!(err.contains("acess"), "{err}");
    }
}
