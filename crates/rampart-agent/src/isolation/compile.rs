//! Exceptions → nftables rules for the `input` and `output` chains.
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
//!
//! The rules come out typed ([`NftRule`]): [`super::sets`] folds runs of rules of the
//! same shape into one rule and a named set before they are rendered.

use super::ast::{Action, Cidr, Direction, Endpoint, ExceptionRule, Family, PortSpec, Proto};
use std::fmt::Write;

/// The prefix of every log line isolation writes (`journalctl -k | grep rampart-isolate`).
pub const LOG_PREFIX: &str = "rampart-isolate: ";

/// What a matching packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    pub fn nft(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        }
    }
}

/// One compiled exception rule for one chain and one family, before rendering.
/// Empty address or port lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    /// The family the rule is confined to; `None`: both (no address, no family).
    pub family: Option<Family>,
    /// Protocols of that family; empty: any.
    pub protos: Vec<Proto>,
    pub saddr: Vec<Cidr>,
    pub sport: Vec<PortSpec>,
    pub daddr: Vec<Cidr>,
    pub dport: Vec<PortSpec>,
    /// A reply rule: only established packets in a connection's reply direction.
    pub reply: bool,
    pub log: bool,
    pub verdict: Verdict,
    /// The exception file's line.
    pub line: usize,
}

impl NftRule {
    /// The rule's matches before its address and port checks (family, protocols),
    /// with a trailing space when not empty, and the header its ports are read from
    /// (`tcp`, `udp` or `th`) when it has ports.
    pub fn prefix(&self) -> (String, Option<&'static str>) {
        let mut m = String::new();
        let has_addrs = !self.saddr.is_empty() || !self.daddr.is_empty();
        // ICMP and ICMPv6 already imply their family.
        let implied = !self.protos.is_empty() && self.protos.iter().all(|p| p.family().is_some());
        if let Some(f) = self.family {
            if !has_addrs && !implied {
                let _ = write!(m, "meta nfproto {} ", nfproto(f));
            }
        }
        let has_ports = !self.sport.is_empty() || !self.dport.is_empty();
        let header = match self.protos.as_slice() {
            [] => None,
            [p] if has_ports => Some(p.nft_name()),
            ps => {
                let names: Vec<&str> = ps.iter().map(|p| p.nft_name()).collect();
                let _ = write!(m, "meta l4proto {} ", braced(&names));
                has_ports.then_some("th")
            }
        };
        (m, header)
    }

    /// What follows the matches: the reply-state check, logging, the verdict.
    pub fn suffix(&self) -> String {
        let mut s = String::new();
        if self.reply {
            s.push_str("ct state established ct direction reply ");
        }
        if self.log {
            let _ = write!(s, "log prefix \"{LOG_PREFIX}\" ");
        }
        s.push_str(self.verdict.nft());
        s
    }

    /// The `ip`/`ip6` keyword of the rule's addresses.
    pub fn addr_key(&self) -> &'static str {
        match self.family {
            Some(Family::Inet6) => "ip6",
            _ => "ip",
        }
    }

    /// The rule as one line of nftables text, with its lists as anonymous sets.
    pub fn render(&self) -> String {
        let key = self.addr_key();
        let mut m = String::new();
        for (addrs, field) in [(&self.saddr, "saddr"), (&self.daddr, "daddr")] {
            if !addrs.is_empty() {
                let _ = write!(m, "{key} {field} {} ", set_of(addrs));
            }
        }
        let (prefix, header) = self.prefix();
        m.push_str(&prefix);
        if let Some(header) = header {
            port_match(&mut m, header, "sport", &self.sport);
            port_match(&mut m, header, "dport", &self.dport);
        }
        let reply = if self.reply { " reply" } else { "" };
        format!("{m}{} comment \"line {}{reply}\"", self.suffix(), self.line)
    }
}

/// Compiled exception rules, in nftables (first-match) order per block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledExceptions {
    /// Reply rules for flows opened by `pass out` (go early in `input`).
    pub input_replies: Vec<NftRule>,
    /// Reply rules for flows opened by `pass in` (go early in `output`).
    pub output_replies: Vec<NftRule>,
    /// Decisions for incoming packets.
    pub input: Vec<NftRule>,
    /// Decisions for outgoing packets.
    pub output: Vec<NftRule>,
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
                let Some(forward) = nft_rule(rule, family, false) else {
                    continue;
                };
                let (decisions, replies) = match direction {
                    Direction::Out => (&mut out.output, &mut out.input_replies),
                    Direction::In => (&mut out.input, &mut out.output_replies),
                };
                decisions.push(forward);
                if rule.action == Action::Pass && !rule.no_state {
                    if let Some(reply) = nft_rule(rule, family, true) {
                        replies.push(reply);
                    }
                }
            }
        }
    }
    out
}

/// One rule for one family (`None`: family-agnostic); `reply` swaps source and
/// destination and makes it the reply rule. `None` when the rule cannot match that
/// family.
fn nft_rule(rule: &ExceptionRule, family: Option<Family>, reply: bool) -> Option<NftRule> {
    let (src, dst) = if reply {
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
    let addrs = |side: &Endpoint| -> Option<Vec<Cidr>> {
        match family {
            None => Some(Vec::new()),
            Some(f) => match side.addrs_of(f) {
                None => Some(Vec::new()),
                Some(a) if a.is_empty() => None,
                Some(a) => Some(a),
            },
        }
    };
    let (verdict, log) = if reply {
        (Verdict::Accept, false)
    } else {
        let verdict = match rule.action {
            Action::Pass => Verdict::Accept,
            Action::Block => Verdict::Drop,
        };
        (verdict, rule.log)
    };
    Some(NftRule {
        family,
        protos,
        saddr: addrs(src)?,
        sport: src.ports.clone(),
        daddr: addrs(dst)?,
        dport: dst.ports.clone(),
        reply,
        log,
        verdict,
        line: rule.line,
    })
}

fn nfproto(f: Family) -> &'static str {
    match f {
        Family::Inet => "ipv4",
        Family::Inet6 => "ipv6",
    }
}

fn port_match(m: &mut String, header: &str, field: &str, ports: &[PortSpec]) {
    if ports.is_empty() {
        return;
    }
    let ports: Vec<String> = ports.iter().map(PortSpec::to_string).collect();
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
