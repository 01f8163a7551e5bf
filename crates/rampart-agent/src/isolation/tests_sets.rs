//! Folding runs of exception rules into named sets: what may fold and what may not.

use super::compile::compile;
use super::rules::parse_rules;
use super::sets::{fold, ExceptionSet};

/// The output chain's decisions and the sets they use.
fn folded_output(text: &str) -> (Vec<String>, Vec<ExceptionSet>) {
    let compiled = compile(&parse_rules("ex.pf", text).expect("valid"));
    let mut sets = Vec::new();
    let rules = fold(&compiled.output, "out", &mut sets);
    (rules, sets)
}

#[test]
fn a_run_of_one_shape_becomes_one_rule_over_a_set() {
    let (rules, sets) = folded_output(
        "pass out proto tcp to 203.0.113.2 port 22\n\
         pass out proto tcp to { 198.51.100.0/24 2001:db8::/32 } port { 443 8443 }\n\
         pass out proto tcp to 192.0.2.9 port 1000:2000\n",
    );
    assert_eq!(
        rules,
        vec![
            "ip daddr . tcp dport @exc_out_1 accept comment \"lines 1, 2, 3\"",
            // The IPv6 half of line 2 is a shape of its own, alone: a plain rule.
            "ip6 daddr 2001:db8::/32 tcp dport { 443, 8443 } accept comment \"line 2\"",
        ]
    );
    let set = &sets[0];
    assert_eq!(set.kind, "ipv4_addr . inet_service");
    let mut elements = set.elements.clone();
    elements.sort();
    assert_eq!(
        elements,
        vec![
            "192.0.2.9 . 1000-2000",
            "198.51.100.0/24 . 443",
            "198.51.100.0/24 . 8443",
            "203.0.113.2 . 22",
        ]
    );
}

#[test]
fn rules_never_fold_across_a_rule_with_another_verdict() {
    // Last match wins: line 3 decides before line 2, which decides before line 1.
    let (rules, sets) = folded_output(
        "pass out proto tcp to 10.0.0.0/8 port 22\n\
         block out proto tcp to 10.0.0.5 port 22\n\
         pass out proto tcp to 10.0.0.6 port 22\n",
    );
    assert!(sets.is_empty());
    assert_eq!(
        rules,
        vec![
            "ip daddr 10.0.0.6 tcp dport 22 accept comment \"line 3\"",
            "ip daddr 10.0.0.5 tcp dport 22 drop comment \"line 2\"",
            "ip daddr 10.0.0.0/8 tcp dport 22 accept comment \"line 1\"",
        ]
    );
}

#[test]
fn logged_and_unlogged_rules_stay_apart() {
    let (rules, sets) = folded_output(
        "pass out proto tcp to 10.0.0.1 port 22\n\
         pass out proto tcp to 10.0.0.2 port 22\n\
         pass out log proto tcp to 10.0.0.3 port 22\n\
         pass out log proto tcp to 10.0.0.4 port 22\n",
    );
    assert_eq!(
        rules,
        vec![
            "ip daddr . tcp dport @exc_out_1 log prefix \"rampart-isolate: \" accept comment \"lines 3, 4\"",
            "ip daddr . tcp dport @exc_out_2 accept comment \"lines 1, 2\"",
        ]
    );
    assert_eq!(sets.len(), 2);
}

#[test]
fn overlapping_elements_are_dropped_when_covered_and_split_when_partial() {
    let (rules, sets) = folded_output(
        "pass out proto tcp to 10.0.0.0/8 port 20:30\n\
         pass out proto tcp to 10.1.0.0/16 port 22\n\
         pass out proto tcp to 10.2.0.0/16 port 25:40\n\
         pass out proto tcp to 192.0.2.1 port 80\n",
    );
    // Folded in last-match order (lines 4, 3, 2, 1): line 1's 10.0.0.0/8 . 20-30
    // partly overlaps line 3's 10.2.0.0/16 . 25-40 and starts a second set; line 2's
    // element lies inside line 1's.
    assert_eq!(
        rules,
        vec![
            "ip daddr . tcp dport @exc_out_1 accept comment \"lines 2, 3, 4\"",
            "ip daddr . tcp dport @exc_out_2 accept comment \"line 1\"",
        ]
    );
    assert_eq!(
        sets[0].elements,
        vec!["192.0.2.1 . 80", "10.2.0.0/16 . 25-40", "10.1.0.0/16 . 22"]
    );
    assert_eq!(sets[1].elements, vec!["10.0.0.0/8 . 20-30"]);
}

#[test]
fn shapes_without_addresses_fold_on_their_ports_and_bare_rules_stay_rules() {
    let (rules, sets) = folded_output(
        "pass out proto { tcp udp } to port 53\n\
         pass out proto { tcp udp } to port 123\n\
         pass out proto icmp\n\
         pass out inet6 proto icmp6\n",
    );
    assert_eq!(
        rules,
        vec![
            "meta l4proto { tcp, udp } th dport @exc_out_1 accept comment \"lines 1, 2\"",
            "meta l4proto icmp accept comment \"line 3\"",
            "meta l4proto ipv6-icmp accept comment \"line 4\"",
        ]
    );
    assert_eq!(sets[0].kind, "inet_service");
}

#[test]
fn reply_rules_of_many_passes_fold_into_one_set() {
    let text: String = (0..50)
        .map(|i| format!("pass in proto tcp from 192.0.2.{i} to port 22\n"))
        .collect();
    let compiled = compile(&parse_rules("ex.pf", &text).expect("valid"));
    let mut sets = Vec::new();
    let replies = fold(&compiled.output_replies, "out", &mut sets);
    assert_eq!(
        replies,
        vec!["tcp sport . ip daddr @exc_out_1 ct state established ct direction reply accept comment \"50 rules, lines 1-50 reply\""]
    );
    assert_eq!(sets[0].kind, "inet_service . ipv4_addr");
    assert_eq!(sets[0].elements[0], "22 . 192.0.2.49");
    assert_eq!(sets[0].elements.len(), 50);
}
