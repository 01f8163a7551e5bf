//! The isolation table, `table inet rampart_isolate`, as one `nft -f -` batch.
//!
//! The batch declares the table empty, deletes it and declares it in full: nftables
//! applies a batch as one transaction, so the old table (if any) is replaced without a
//! moment where the host is unprotected, and a failing batch changes nothing. No other
//! table is ever named: release deletes this table only, never `flush ruleset`.
//!
//! The table does not use the `owner` flag: it must outlive the agent (a crash or
//! `kill -9` leaves the device isolated).

use super::ast::ExceptionRule;
use super::compile::{compile, CompiledExceptions};
use super::sets::{fold, ExceptionSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::net::IpAddr;

/// The table's name in the `inet` family.
pub const TABLE: &str = "rampart_isolate";

/// Base chain priority: before mangle (-150), NAT (-100) and filter (0), so isolation
/// decides before the steering table can redirect a packet to the local proxy, and
/// after conntrack (-200), so `ct state` is known.
pub const PRIORITY: i32 = -160;

/// The first rule of `input` carries this comment followed by the fingerprint, the
/// one place `nft -j list` reports back text we wrote (table comments are not in
/// nftables 1.0.6's JSON).
pub const FINGERPRINT_PREFIX: &str = "rampart-isolate fp=";

/// What isolation keeps reachable, and the operator's exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationSpec {
    /// The Rampart server (API, config channel).
    #[serde(default)]
    pub server_addrs: Vec<IpAddr>,
    /// The gateway(s) the agent's tunnel uses.
    #[serde(default)]
    pub gateway_addrs: Vec<IpAddr>,
    /// DNS resolvers: only udp/tcp 53 to these stays open.
    #[serde(default)]
    pub resolvers: Vec<IpAddr>,
    /// Operator exceptions, parsed and validated ([`super::parse_rules`]).
    #[serde(default)]
    pub exceptions: Vec<ExceptionRule>,
}

impl IsolationSpec {
    /// Whether `other` compiles to the same rules: then only the sets' contents can
    /// differ, and [`super::Isolator::refresh_sets`] updates them in place.
    pub fn same_rules(&self, other: &IsolationSpec) -> bool {
        self.exceptions == other.exceptions
    }

    /// The server and gateway addresses this spec keeps and `next` does not.
    pub fn kept_addresses_dropped_by(&self, next: &IsolationSpec) -> Vec<IpAddr> {
        let now = KeepSets::from_spec(next);
        let before = KeepSets::from_spec(self);
        before
            .keep4
            .iter()
            .chain(&before.keep6)
            .filter(|a| !now.keeps(a))
            .copied()
            .collect()
    }
}

/// The contents of the named sets, which can change (names re-resolved) without
/// reloading the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepSets {
    pub keep4: Vec<IpAddr>,
    pub keep6: Vec<IpAddr>,
    pub dns4: Vec<IpAddr>,
    pub dns6: Vec<IpAddr>,
}

impl KeepSets {
    /// Sorted and deduplicated, so two specs listing the same addresses compare equal.
    pub fn from_spec(spec: &IsolationSpec) -> KeepSets {
        let split = |addrs: Vec<IpAddr>| {
            let mut v4: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv4).collect();
            let mut v6: Vec<IpAddr> = addrs.into_iter().filter(IpAddr::is_ipv6).collect();
            v4.sort();
            v4.dedup();
            v6.sort();
            v6.dedup();
            (v4, v6)
        };
        let keep: Vec<IpAddr> = spec
            .server_addrs
            .iter()
            .chain(&spec.gateway_addrs)
            .copied()
            .collect();
        let (keep4, keep6) = split(keep);
        let (dns4, dns6) = split(spec.resolvers.clone());
        KeepSets {
            keep4,
            keep6,
            dns4,
            dns6,
        }
    }

    /// `(set name, nftables type, elements)` for each set, in table order.
    pub fn sets(&self) -> [(&'static str, &'static str, &[IpAddr]); 4] {
        [
            ("keep4", "ipv4_addr", &self.keep4),
            ("keep6", "ipv6_addr", &self.keep6),
            ("dns4", "ipv4_addr", &self.dns4),
            ("dns6", "ipv6_addr", &self.dns6),
        ]
    }

    /// Whether `addr` is a kept (server or gateway) address.
    pub fn keeps(&self, addr: &IpAddr) -> bool {
        self.keep4.contains(addr) || self.keep6.contains(addr)
    }
}

/// The rules of each chain, and the named sets the folded exception rules use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chains {
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub sets: Vec<ExceptionSet>,
}

impl Chains {
    /// The rules isolation always has, then the compiled exceptions.
    pub fn build(exceptions: &[ExceptionRule]) -> Chains {
        let CompiledExceptions {
            input_replies,
            output_replies,
            input: input_decisions,
            output: output_decisions,
        } = compile(exceptions);
        let mut input = vec![
            "iif \"lo\" accept".to_string(),
            "ip saddr @keep4 accept".to_string(),
            "ip6 saddr @keep6 accept".to_string(),
            // DHCP answers are broadcast or to an address not yet configured, so
            // conntrack cannot pair them with the request: matched by ports.
            "udp sport 67 udp dport 68 accept comment \"DHCPv4\"".to_string(),
            "meta nfproto ipv6 udp sport 547 udp dport 546 accept comment \"DHCPv6\"".to_string(),
            // Without neighbour discovery IPv6 cannot reach even the kept addresses.
            // Redirects are left out: no one on the link may reroute an isolated host.
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, mld-listener-query } accept".to_string(),
            "ip saddr @dns4 meta l4proto { tcp, udp } th sport 53 ct state established ct direction reply accept comment \"DNS\"".to_string(),
            "ip6 saddr @dns6 meta l4proto { tcp, udp } th sport 53 ct state established ct direction reply accept comment \"DNS\"".to_string(),
            // ICMP errors about a tracked flow (path MTU for the tunnel).
            "ct state related meta l4proto { icmp, ipv6-icmp } accept".to_string(),
        ];
        let mut output = vec![
            "oif \"lo\" accept".to_string(),
            "ip daddr @keep4 accept".to_string(),
            "ip6 daddr @keep6 accept".to_string(),
            "udp sport 68 udp dport 67 accept comment \"DHCPv4\"".to_string(),
            "meta nfproto ipv6 udp sport 546 udp dport 547 accept comment \"DHCPv6\"".to_string(),
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report } accept".to_string(),
            "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept comment \"DNS\"".to_string(),
            "ip6 daddr @dns6 meta l4proto { tcp, udp } th dport 53 accept comment \"DNS\"".to_string(),
            "ct state related meta l4proto { icmp, ipv6-icmp } accept".to_string(),
        ];
        let mut sets = Vec::new();
        input.extend(fold(&input_replies, "in", &mut sets));
        output.extend(fold(&output_replies, "out", &mut sets));
        // A TCP flow that conntrack picks up mid-stream (its entry was deleted when
        // isolation began) is `new` without SYN: refuse it, so a cut connection cannot
        // come back through an exception. Kept addresses are accepted above, so the
        // management tunnel survives its entry being deleted.
        let syn_only = "ct state new tcp flags & (fin | syn | rst | ack) != syn drop".to_string();
        input.push(syn_only.clone());
        output.push(syn_only);
        input.extend(fold(&input_decisions, "in", &mut sets));
        output.extend(fold(&output_decisions, "out", &mut sets));
        Chains {
            input,
            output,
            sets,
        }
    }

    /// A hash of every rule and of the exception sets' elements: equal fingerprints
    /// mean the same rules, whatever the kept-address sets contain.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for (chain, rules) in [("input", &self.input), ("output", &self.output)] {
            hash.update(chain.as_bytes());
            for rule in rules {
                hash.update(b"\n");
                hash.update(rule.as_bytes());
            }
            hash.update(b"\n\n");
        }
        for set in &self.sets {
            hash.update(format!("set {} {}", set.name, set.kind).as_bytes());
            for element in &set.elements {
                hash.update(b"\n");
                hash.update(element.as_bytes());
            }
            hash.update(b"\n\n");
        }
        hash.update(PRIORITY.to_string().as_bytes());
        let digest = hash.finalize();
        digest[..8].iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// What the kernel should hold after the batch: compared with the read-back table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub fingerprint: String,
    pub input_rules: usize,
    pub output_rules: usize,
    pub forward_rules: usize,
    pub sets: KeepSets,
    /// The exception sets by name, elements sorted as the read-back sorts them.
    pub exception_sets: Vec<(String, Vec<String>)>,
}

/// The complete batch for `nft -f -`, and what it should leave in the kernel.
pub fn ruleset(spec: &IsolationSpec) -> (String, Expected) {
    let chains = Chains::build(&spec.exceptions);
    let sets = KeepSets::from_spec(spec);
    let fingerprint = chains.fingerprint();
    let elements: usize = chains.sets.iter().map(|s| s.elements.len()).sum();
    let mut t = String::with_capacity(
        2048 + 120 * (chains.input.len() + chains.output.len()) + 40 * elements,
    );
    let _ = writeln!(t, "table inet {TABLE} {{}}");
    let _ = writeln!(t, "delete table inet {TABLE}");
    let _ = writeln!(t, "table inet {TABLE} {{");
    let _ = writeln!(
        t,
        "\tcomment \"Rampart isolation: default drop, see docs/isolation.md\""
    );
    for (name, kind, elements) in sets.sets() {
        let _ = write!(t, "\tset {name} {{ type {kind};");
        if !elements.is_empty() {
            let _ = write!(t, " elements = {{ {} }};", join(elements));
        }
        let _ = writeln!(t, " }}");
    }
    for set in &chains.sets {
        // Elements never overlap (see `sets`), so no `auto-merge`: the kernel keeps
        // exactly these elements and the read-back can compare them one by one.
        let _ = writeln!(
            t,
            "\tset {} {{ type {}; flags interval; elements = {{ {} }}; }}",
            set.name,
            set.kind,
            set.elements.join(", ")
        );
    }
    for (name, rules) in [("input", &chains.input), ("output", &chains.output)] {
        let _ = writeln!(t, "\tchain {name} {{");
        let _ = writeln!(
            t,
            "\t\ttype filter hook {name} priority {PRIORITY}; policy drop;"
        );
        for (i, rule) in rules.iter().enumerate() {
            if i == 0 && name == "input" {
                // The fingerprint rides on the first rule (see FINGERPRINT_PREFIX).
                let _ = writeln!(
                    t,
                    "\t\t{rule} comment \"{FINGERPRINT_PREFIX}{fingerprint}\""
                );
            } else {
                let _ = writeln!(t, "\t\t{rule}");
            }
        }
        let _ = writeln!(t, "\t}}");
    }
    // A device under isolation forwards nothing (containers and VMs included).
    let _ = writeln!(
        t,
        "\tchain forward {{\n\t\ttype filter hook forward priority {PRIORITY}; policy drop;\n\t}}"
    );
    let _ = writeln!(t, "}}");
    let exception_sets = chains
        .sets
        .iter()
        .map(|set| {
            let mut elements = set.elements.clone();
            elements.sort();
            (set.name.clone(), elements)
        })
        .collect();
    let expected = Expected {
        fingerprint,
        input_rules: chains.input.len(),
        output_rules: chains.output.len(),
        forward_rules: 0,
        sets,
        exception_sets,
    };
    (t, expected)
}

/// A batch that replaces the named sets' contents in one transaction, without touching
/// the rules (used when the server's or gateway's names resolve to new addresses).
pub fn refresh_sets_script(sets: &KeepSets) -> String {
    let mut t = String::new();
    for (name, _, elements) in sets.sets() {
        let _ = writeln!(t, "flush set inet {TABLE} {name}");
        if !elements.is_empty() {
            let _ = writeln!(
                t,
                "add element inet {TABLE} {name} {{ {} }}",
                join(elements)
            );
        }
    }
    t
}

/// Deletes this table only, and is idempotent: `add` makes `delete` valid when the
/// table does not exist.
pub fn release_script() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
