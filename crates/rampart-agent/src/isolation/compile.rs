//! Exceptions → nftables rule text for the `input` and `output` chains.
//!
//! **Order.** The file follows pf: the *last* matching rule decides, unless a matching
//! rule is `quick`, which decides at once. nftables stops at the *first* matching
//! verdict, so the compiler emits the `quick` rules in file order, then the other
//! rules in reverse file order; the first nftables match is then exactly pf's
//! decision. No match leaves the packet to the chain's policy: drop.
//!
//! **State.** pf's `pass` keeps state by default: the replies of a passed flow pass
//! too. For each stateful `pass` the compiler adds a *reply rule* to the other chain
//! (addresses and ports swapped) that accepts only `ct state established` packets in
//! the `reply` direction of a connection, so a flow the attacker opened towards us
//! from a passed port is not mistaken for a reply. Reply rules sit before all
//! decisions, as pf's state table is consulted before its rules. `no state` adds no
//! reply rule.
//!
//! **Families.** A rule without addresses or `inet`/`inet6` matches both families
//! (one family-agnostic nftables rule); a rule with a mixed address list becomes one
//! rule per family, each with its own addresses, as pf expands it.

use super::ast::{Action, Cidr, Direction, Endpoint, ExceptionRule, Family, PortSpec, Proto};
use std::fmt::Write;

/// The prefix of every log line isolation writes (`journalctl -k | grep rampart-isolate`).
pub const LOG_PREFIX: &str = "rampart-isolate: ";

/// Compiled exception rules, one nftables rule per line, without indentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledExceptions {
    /// Reply rules for flows opened by `pass out` (go early in `input`).
    pub input_replies: Vec<String>,
    /// Reply rules for flows opened by `pass in` (go early in `output`).
    pub output_replies: Vec<String>,
    /// Decisions for incoming packets, in nftables (first-match) order.
    pub input: Vec<String>,
    /// Decisions for outgoing packets, in nftables (first-match) order.
    pub output: Vec<String>,
}

/// Compile validated rules (see the module doc for the order and state semantics).
pub fn compile(rules: &[ExceptionRule]) -> CompiledExceptions {
    let mut out = CompiledExceptions::default();
    let quick = rules.iter().filter(|r| r.quick);
    let last_match = rules.iter().filter(|r| !r.quick).rev();
    for rule in quick.chain(last_match) {
        let directions: &[Direction] = match rule.direction {
            Some(Direction::Out) => &[Direction::Out],
            Some(Direction::In) => &[Direction::In],
            None => &[Direction::Out, Direction::In],
        };
        let families: Vec<Option<Family>> = match rule.families() {
            None => vec![None],
            Some(f) => f.into_iter().map(Some).collect(),
        };
        for &direction in directions {
            for &family in &families {
                let Some(forward) = matcher(rule, family, false) else {
                    continue;
                };
                let verdict = match rule.action {
                    Action::Pass => "accept",
                    Action::Block => "drop",
                };
                let log = if rule.log {
                    format!("log prefix \"{LOG_PREFIX}\" ")
                } else {
                    String::new()
                };
                let line = format!("{forward}{log}{verdict} comment \"line {}\"", rule.line);
                let (decisions, replies) = match direction {
                    Direction::Out => (&mut out.output, &mut out.input_replies),
                    Direction::In => (&mut out.input, &mut out.output_replies),
                };
                decisions.push(line);
                if rule.action == Action::Pass && !rule.no_state {
                    if let Some(reply) = matcher(rule, family, true) {
                        replies.push(format!(
                            "{reply}ct state established ct direction reply accept comment \"line {} reply\"",
                            rule.line
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The match part of one rule for one family (`None`: family-agnostic), with a
/// trailing space when not empty; `swap` exchanges source and destination for the
/// reply rule. `None` when the rule cannot match that family.
fn matcher(rule: &ExceptionRule, family: Option<Family>, swap: bool) -> Option<String> {
    let (src, dst) = if swap {
        (&rule.to, &rule.from)
    } else {
        (&rule.from, &rule.to)
    };
    let protos: Vec<Proto> = rule
        .protos
        .iter()
        .copied()
        .filter(|p| match (family, p.family()) {
            (Some(f), Some(pf)) => f == pf,
            _ => true,
        })
        .collect();
    if !rule.protos.is_empty() && protos.is_empty() {
        return None;
    }
    let mut m = String::new();
    let mut names_family = false;
    if let Some(f) = family {
        for (side, field) in [(src, "saddr"), (dst, "daddr")] {
            if let Some(addrs) = side.addrs_of(f) {
                if addrs.is_empty() {
                    return None;
                }
                let key = match f {
                    Family::Inet => "ip",
                    Family::Inet6 => "ip6",
                };
                let _ = write!(m, "{key} {field} {} ", set_of(&addrs));
                names_family = true;
            }
        }
        // ICMP and ICMPv6 already imply their family.
        let implied = !protos.is_empty() && protos.iter().all(|p| p.family().is_some());
        if !names_family && !implied {
            let nfproto = match f {
                Family::Inet => "ipv4",
                Family::Inet6 => "ipv6",
            };
            m.insert_str(0, &format!("meta nfproto {nfproto} "));
        }
    }
    let has_ports = !src.ports.is_empty() || !dst.ports.is_empty();
    let header = match protos.as_slice() {
        [] => None,
        [p] if has_ports => Some(p.nft_name().to_string()),
        ps => {
            let names: Vec<&str> = ps.iter().map(|p| p.nft_name()).collect();
            let _ = write!(m, "meta l4proto {} ", braced(&names));
            if has_ports {
                Some("th".to_string())
            } else {
                None
            }
        }
    };
    if let Some(header) = header {
        port_match(&mut m, &header, "sport", src);
        port_match(&mut m, &header, "dport", dst);
    }
    Some(m)
}

fn port_match(m: &mut String, header: &str, field: &str, side: &Endpoint) {
    if side.ports.is_empty() {
        return;
    }
    let ports: Vec<String> = side.ports.iter().map(PortSpec::to_string).collect();
    let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
    let _ = write!(m, "{header} {field} {} ", braced(&refs));
}

fn set_of(addrs: &[Cidr]) -> String {
    let texts: Vec<String> = addrs.iter().map(Cidr::to_string).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    braced(&refs)
}

/// One item as itself, several as an anonymous set (nftables merges duplicates and
/// overlapping networks in anonymous sets itself).
fn braced(items: &[&str]) -> String {
    match items {
        [one] => one.to_string(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}
