//! Runs of exception rules of one shape become one rule and one named set.
//!
//! nftables loads (and reads back) a set element far faster than a rule: 1,000
//! `pass out proto tcp to NET port P` lines as 1,000 rules took 80–200 ms to load and
//! listed back as ~1 MB of JSON; as one rule over a set of 1,000 `NET . P` elements
//! they load in a few tens of ms. Packets are matched against a set in one lookup
//! instead of walking 1,000 rules.
//!
//! **Why it keeps pf's meaning.** A packet's fate is decided by the first rule it
//! matches: its verdict and whether it is logged. Inside a run of consecutive rules
//! with the same verdict, logging and reply-ness, any order gives the same fate, and
//! so does one rule matching the union of their matches. Only such runs are folded;
//! rules never move across a rule with another verdict.
//!
//! **Shape.** Rules fold together when they match the same fields: family, protocols,
//! and which of source address, source port, destination address, destination port
//! they name. Each rule contributes the cross product of its lists as elements of a
//! concatenated interval set (`ip daddr . tcp dport @exc_out_1`).
//!
//! **Overlaps.** The kernel refuses some overlapping elements in one interval set, so
//! no two elements of a set overlap: an element inside one already there is
//! redundant and left out; an element that only partly overlaps one starts a new set
//! (the next rule of the same run, so the union is unchanged).

use super::ast::{Cidr, Family, PortSpec, Proto};
use super::compile::NftRule;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

/// A rule whose lists multiply out to more elements than this stays a rule of its own
/// (with anonymous sets): folding it would only move a large product into a set.
const MAX_ELEMENTS_PER_RULE: usize = 1024;

/// A named set holding the elements of folded exception rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionSet {
    pub name: String,
    /// nftables type, e.g. `ipv4_addr . inet_service`.
    pub kind: String,
    /// As written to nftables and as read back (see [`Part`]'s rendering).
    pub elements: Vec<String>,
}

/// One field of a set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Addr(Cidr),
    Port(PortSpec),
}

impl Part {
    fn text(&self) -> String {
        match self {
            Part::Addr(c) => c.to_string(),
            Part::Port(p) => p.to_string(),
        }
    }

    fn bounds(port: &PortSpec) -> (u16, u16) {
        match *port {
            PortSpec::One(p) => (p, p),
            PortSpec::Range(a, b) => (a, b),
        }
    }

    /// Whether `self` holds all of `other` (same field).
    fn contains(&self, other: &Part) -> bool {
        match (self, other) {
            (Part::Addr(a), Part::Addr(b)) => a.prefix <= b.prefix && within(b.addr, a),
            (Part::Port(a), Part::Port(b)) => {
                let ((a0, a1), (b0, b1)) = (Part::bounds(a), Part::bounds(b));
                a0 <= b0 && b1 <= a1
            }
            _ => false,
        }
    }

    /// Whether `self` and `other` share a value (same field).
    fn meets(&self, other: &Part) -> bool {
        match (self, other) {
            // Two networks share an address only when one holds the other.
            (Part::Addr(_), Part::Addr(_)) => self.contains(other) || other.contains(self),
            (Part::Port(a), Part::Port(b)) => {
                let ((a0, a1), (b0, b1)) = (Part::bounds(a), Part::bounds(b));
                a0 <= b1 && b0 <= a1
            }
            _ => false,
        }
    }
}

/// Whether `addr` lies in `net`.
fn within(addr: IpAddr, net: &Cidr) -> bool {
    if addr.is_ipv4() != net.addr.is_ipv4() {
        return false;
    }
    let (first, last) = span(net);
    let (a, _) = span(&Cidr::host(addr));
    first <= a && a <= last
}

/// Which fields a rule matches, and on what: rules of one shape fold together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    family: Option<Family>,
    protos: Vec<Proto>,
    saddr: bool,
    sport: bool,
    daddr: bool,
    dport: bool,
}

impl Shape {
    fn of(rule: &NftRule) -> Shape {
        Shape {
            family: rule.family,
            protos: rule.protos.clone(),
            saddr: !rule.saddr.is_empty(),
            sport: !rule.sport.is_empty(),
            daddr: !rule.daddr.is_empty(),
            dport: !rule.dport.is_empty(),
        }
    }

    fn fields(&self) -> usize {
        [self.saddr, self.sport, self.daddr, self.dport]
            .iter()
            .filter(|f| **f)
            .count()
    }
}

/// The elements of one rule: the cross product of its lists, in set field order.
fn elements(rule: &NftRule) -> Vec<Vec<Part>> {
    let dims: Vec<Vec<Part>> = [
        rule.saddr
            .iter()
            .copied()
            .map(Part::Addr)
            .collect::<Vec<_>>(),
        rule.sport.iter().copied().map(Part::Port).collect(),
        rule.daddr.iter().copied().map(Part::Addr).collect(),
        rule.dport.iter().copied().map(Part::Port).collect(),
    ]
    .into_iter()
    .filter(|d| !d.is_empty())
    .collect();
    dims.iter().fold(vec![Vec::new()], |acc, dim| {
        acc.iter()
            .flat_map(|prefix| {
                dim.iter().map(move |part| {
                    let mut e = prefix.clone();
                    e.push(*part);
                    e
                })
            })
            .collect()
    })
}

fn element_count(rule: &NftRule) -> usize {
    [
        rule.saddr.len(),
        rule.sport.len(),
        rule.daddr.len(),
        rule.dport.len(),
    ]
    .iter()
    .filter(|n| **n > 0)
    .product()
}

/// Render a block of rules (in first-match order) for the chain `tag` (`in`/`out`),
/// folding runs of one shape into named sets, which are appended to `sets`.
pub fn fold(rules: &[NftRule], tag: &str, sets: &mut Vec<ExceptionSet>) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rules.len() {
        let fate = |r: &NftRule| (r.verdict, r.log, r.reply);
        let end = rules[start..]
            .iter()
            .position(|r| fate(r) != fate(&rules[start]))
            .map_or(rules.len(), |n| start + n);
        // Same fate: the order inside the run is free (see the module doc).
        let mut run: Vec<&NftRule> = rules[start..end].iter().collect();
        run.sort_by_key(|r| Shape::of(r));
        for group in run.chunk_by(|a, b| Shape::of(a) == Shape::of(b)) {
            let shape = Shape::of(group[0]);
            if group.len() < 2 || shape.fields() == 0 {
                out.extend(group.iter().map(|r| r.render()));
            } else {
                fold_group(group, &shape, tag, sets, &mut out);
            }
        }
        start = end;
    }
    out
}

/// One set being filled, and the lines of the rules in it.
#[derive(Default)]
struct Pending {
    elements: Vec<Vec<Part>>,
    lines: Vec<usize>,
    index: AddrIndex,
}

/// The elements of a pending set by their first address field, so that checking a
/// new element for overlaps looks at the few elements whose network nests with its
/// own instead of at every element (1,000 rules would be half a million pairs).
#[derive(Default)]
struct AddrIndex {
    /// Which field of an element is indexed (`None`: the shape has no address).
    field: Option<usize>,
    /// The prefix lengths present.
    lengths: BTreeSet<u8>,
    /// (prefix length, network as a number) → elements.
    nets: BTreeMap<(u8, u128), Vec<usize>>,
}

/// A network as the numbers of its first and last address (IPv4 in the low bits).
fn span(c: &Cidr) -> (u128, u128) {
    let (addr, bits) = match c.addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
        IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let host = u128::MAX
        .checked_shr(128 - bits + u32::from(c.prefix))
        .unwrap_or(0);
    (addr & !host, addr | host)
}

impl AddrIndex {
    fn new(shape: &Shape) -> AddrIndex {
        let field = if shape.saddr {
            Some(0)
        } else if shape.daddr {
            Some(usize::from(shape.sport))
        } else {
            None
        };
        AddrIndex {
            field,
            ..AddrIndex::default()
        }
    }

    fn cidr(&self, element: &[Part]) -> Option<Cidr> {
        match element.get(self.field?) {
            Some(Part::Addr(c)) => Some(*c),
            _ => None,
        }
    }

    fn insert(&mut self, element: &[Part], at: usize) {
        if let Some(c) = self.cidr(element) {
            self.lengths.insert(c.prefix);
            self.nets
                .entry((c.prefix, span(&c).0))
                .or_default()
                .push(at);
        }
    }

    /// The elements that can meet `element`: those whose network holds its network
    /// or lies inside it. `None`: no index, every element is a candidate.
    fn candidates(&self, element: &[Part]) -> Option<Vec<usize>> {
        let c = self.cidr(element)?;
        let (first, last) = span(&c);
        let mut found = Vec::new();
        for &len in &self.lengths {
            if len <= c.prefix {
                let outer = span(&Cidr {
                    addr: c.addr,
                    prefix: len,
                })
                .0;
                if let Some(v) = self.nets.get(&(len, outer)) {
                    found.extend_from_slice(v);
                }
            } else {
                for v in self.nets.range((len, first)..=(len, last)).map(|(_, v)| v) {
                    found.extend_from_slice(v);
                }
            }
        }
        Some(found)
    }
}

fn fold_group(
    group: &[&NftRule],
    shape: &Shape,
    tag: &str,
    sets: &mut Vec<ExceptionSet>,
    out: &mut Vec<String>,
) {
    let first = group[0];
    let fresh = || Pending {
        index: AddrIndex::new(shape),
        ..Pending::default()
    };
    let mut pending = fresh();
    for rule in group {
        if element_count(rule) > MAX_ELEMENTS_PER_RULE {
            out.push(rule.render());
            continue;
        }
        for element in elements(rule) {
            let candidates = pending
                .index
                .candidates(&element)
                .unwrap_or_else(|| (0..pending.elements.len()).collect());
            let near = || candidates.iter().map(|&i| &pending.elements[i]);
            let contains = |e: &Vec<Part>| e.iter().zip(&element).all(|(a, b)| a.contains(b));
            let meets = |e: &Vec<Part>| e.iter().zip(&element).all(|(a, b)| a.meets(b));
            if near().any(contains) {
                continue;
            }
            if near().any(meets) {
                let full = std::mem::replace(&mut pending, fresh());
                emit(first, shape, tag, full, sets, out);
            }
            pending.index.insert(&element, pending.elements.len());
            pending.elements.push(element);
            if pending.lines.last() != Some(&rule.line) {
                pending.lines.push(rule.line);
            }
        }
    }
    if !pending.elements.is_empty() {
        emit(first, shape, tag, pending, sets, out);
    }
}

/// Write out one folded rule and its set.
fn emit(
    like: &NftRule,
    shape: &Shape,
    tag: &str,
    pending: Pending,
    sets: &mut Vec<ExceptionSet>,
    out: &mut Vec<String>,
) {
    let name = format!("exc_{tag}_{}", sets.len() + 1);
    let (prefix, header) = like.prefix();
    let key = like.addr_key();
    let addr_type = match like.family {
        Some(Family::Inet6) => "ipv6_addr",
        _ => "ipv4_addr",
    };
    let header = header.unwrap_or("th");
    let fields: Vec<(String, &str)> = [
        (shape.saddr, format!("{key} saddr"), addr_type),
        (shape.sport, format!("{header} sport"), "inet_service"),
        (shape.daddr, format!("{key} daddr"), addr_type),
        (shape.dport, format!("{header} dport"), "inet_service"),
    ]
    .into_iter()
    .filter(|(used, _, _)| *used)
    .map(|(_, expr, kind)| (expr, kind))
    .collect();
    let lookup: Vec<&str> = fields.iter().map(|(e, _)| e.as_str()).collect();
    let kind: Vec<&str> = fields.iter().map(|(_, k)| *k).collect();
    let mut lines = pending.lines;
    lines.sort_unstable();
    lines.dedup();
    let which = match lines.as_slice() {
        [one] => format!("line {one}"),
        few if few.len() <= 4 => format!(
            "lines {}",
            few.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        many => format!(
            "{} rules, lines {}-{}",
            many.len(),
            many[0],
            many[many.len() - 1]
        ),
    };
    let reply = if like.reply { " reply" } else { "" };
    let mut rule = String::new();
    let _ = write!(
        rule,
        "{prefix}{} @{name} {} comment \"{which}{reply}\"",
        lookup.join(" . "),
        like.suffix()
    );
    out.push(rule);
    sets.push(ExceptionSet {
        name,
        kind: kind.join(" . "),
        elements: pending
            .elements
            .iter()
            .map(|e| e.iter().map(Part::text).collect::<Vec<_>>().join(" . "))
            .collect(),
    });
}
