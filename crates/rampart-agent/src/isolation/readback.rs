//! Reading the table back from the kernel (`nft -j list table inet rampart_isolate`)
//! and comparing it with what was applied: the status is what the kernel holds, not
//! what the agent believes it did.

use super::error::IsolationError;
use super::table::{Expected, KeepSets, FINGERPRINT_PREFIX, TABLE};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

/// One base chain as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub hook: Option<String>,
    pub policy: Option<String>,
    pub rules: usize,
}

/// The parts of the kernel's table that isolation checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelTable {
    /// From the first rule of `input`, if it carries one.
    pub fingerprint: Option<String>,
    pub chains: BTreeMap<String, ChainState>,
    /// Set name → elements as text, sorted.
    pub sets: BTreeMap<String, Vec<String>>,
}

/// What the kernel holds compared with what should be there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum KernelState {
    /// The table is there with the expected rules, policies and kept addresses.
    Isolated,
    /// The table is there but differs; each entry says how.
    Drift { reasons: Vec<String> },
    /// No isolation table.
    Absent,
}

/// Parse `nft -j list table inet rampart_isolate` output.
pub fn parse_listing(json: &str) -> Result<KernelTable, IsolationError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| IsolationError::ReadBack(e.to_string()))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| IsolationError::ReadBack("no \"nftables\" array".into()))?;
    let mut table = KernelTable::default();
    let mut rule_counts: BTreeMap<String, usize> = BTreeMap::new();
    let ours = |obj: &Value| obj.get("table").and_then(Value::as_str) == Some(TABLE);
    for item in items {
        if let Some(chain) = item.get("chain").filter(|c| ours(c)) {
            let Some(name) = chain.get("name").and_then(Value::as_str) else {
                continue;
            };
            table.chains.insert(
                name.to_string(),
                ChainState {
                    hook: chain
                        .get("hook")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    policy: chain
                        .get("policy")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    rules: 0,
                },
            );
        } else if let Some(set) = item.get("set").filter(|s| ours(s)) {
            let Some(name) = set.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut elements: Vec<String> = set
                .get("elem")
                .and_then(Value::as_array)
                .map(|elems| elems.iter().map(element_text).collect())
                .unwrap_or_default();
            elements.sort();
            table.sets.insert(name.to_string(), elements);
        } else if let Some(rule) = item.get("rule").filter(|r| ours(r)) {
            let Some(chain) = rule.get("chain").and_then(Value::as_str) else {
                continue;
            };
            // Counted apart from the chains: the listing's order is not a promise.
            let count = rule_counts.entry(chain.to_string()).or_insert(0usize);
            if chain == "input" && *count == 0 {
                table.fingerprint = rule
                    .get("comment")
                    .and_then(Value::as_str)
                    .and_then(|c| c.strip_prefix(FINGERPRINT_PREFIX))
                    .map(str::to_string);
            }
            *count += 1;
        }
    }
    for (chain, count) in rule_counts {
        if let Some(state) = table.chains.get_mut(&chain) {
            state.rules = count;
        }
    }
    Ok(table)
}

/// A set element as nftables prints it: an address, `addr/len` or `a-b`.
fn element_text(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(p) = v.get("prefix") {
        let addr = p.get("addr").and_then(Value::as_str).unwrap_or("?");
        let len = p.get("len").and_then(Value::as_u64).unwrap_or(0);
        // A full-length prefix is the address itself, as the spec writes it.
        let full = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => u64::MAX,
        };
        if len == full {
            return addr.to_string();
        }
        return format!("{addr}/{len}");
    }
    if let Some([a, b]) = v.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return format!("{}-{}", element_text(a), element_text(b));
    }
    if let Some(inner) = v.get("elem").and_then(|e| e.get("val")) {
        return element_text(inner);
    }
    // A concatenation (`addr . port`), as the batch writes it.
    if let Some(parts) = v.get("concat").and_then(Value::as_array) {
        return parts
            .iter()
            .map(element_text)
            .collect::<Vec<_>>()
            .join(" . ");
    }
    v.to_string()
}

fn texts(addrs: &[IpAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    v.sort();
    v
}

/// Compare the kernel's table (`None`: no table) with what was applied.
pub fn compare(kernel: Option<&KernelTable>, expected: &Expected) -> KernelState {
    let Some(kernel) = kernel else {
        return KernelState::Absent;
    };
    let mut reasons = Vec::new();
    match &kernel.fingerprint {
        Some(fp) if *fp == expected.fingerprint => {}
        Some(fp) => reasons.push(format!(
            "rules fingerprint is {fp}, expected {}",
            expected.fingerprint
        )),
        None => reasons.push("the first input rule lost its fingerprint comment".into()),
    }
    for (name, rules) in [
        ("input", expected.input_rules),
        ("output", expected.output_rules),
        ("forward", expected.forward_rules),
    ] {
        match kernel.chains.get(name) {
            None => reasons.push(format!("chain {name} is missing")),
            Some(chain) => {
                if chain.hook.as_deref() != Some(name) {
                    reasons.push(format!("chain {name} is not hooked to {name}"));
                }
                if chain.policy.as_deref() != Some("drop") {
                    reasons.push(format!(
                        "chain {name} policy is {}, expected drop",
                        chain.policy.as_deref().unwrap_or("none")
                    ));
                }
                if chain.rules != rules {
                    reasons.push(format!(
                        "chain {name} has {} rules, expected {rules}",
                        chain.rules
                    ));
                }
            }
        }
    }
    let KeepSets {
        keep4,
        keep6,
        dns4,
        dns6,
    } = &expected.sets;
    for (name, want) in [
        ("keep4", keep4),
        ("keep6", keep6),
        ("dns4", dns4),
        ("dns6", dns6),
    ] {
        let want = texts(want);
        match kernel.sets.get(name) {
            None => reasons.push(format!("set {name} is missing")),
            Some(have) if *have != want => reasons.push(format!(
                "set {name} holds [{}], expected [{}]",
                have.join(", "),
                want.join(", ")
            )),
            Some(_) => {}
        }
    }
    for (name, want) in &expected.exception_sets {
        match kernel.sets.get(name) {
            None => reasons.push(format!("exception set {name} is missing")),
            Some(have) if have != want => reasons.push(set_difference(name, have, want)),
            Some(_) => {}
        }
    }
    if reasons.is_empty() {
        KernelState::Isolated
    } else {
        KernelState::Drift { reasons }
    }
}

/// How an exception set differs, briefly: it may hold thousands of elements.
fn set_difference(name: &str, have: &[String], want: &[String]) -> String {
    const SHOWN: usize = 3;
    let missing: Vec<&str> = want
        .iter()
        .filter(|e| have.binary_search(e).is_err())
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = have
        .iter()
        .filter(|e| want.binary_search(e).is_err())
        .map(String::as_str)
        .collect();
    let list = |v: &[&str]| {
        let shown = v.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
        if v.len() > SHOWN {
            format!("{shown}, ... ({} in all)", v.len())
        } else {
            shown
        }
    };
    let mut text = format!(
        "exception set {name} holds {} elements, expected {}",
        have.len(),
        want.len()
    );
    if !missing.is_empty() {
        let _ = write!(text, "; missing [{}]", list(&missing));
    }
    if !extra.is_empty() {
        let _ = write!(text, "; unexpected [{}]", list(&extra));
    }
    text
}
