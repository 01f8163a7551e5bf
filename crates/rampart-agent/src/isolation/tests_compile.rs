//! Compiler and table tests: golden nftables text.

use super::compile::{compile, CompiledExceptions, NftRule};
use super::readback::{compare, parse_listing, KernelState};
use super::rules::parse_rules;
use super::table::{refresh_sets_script, release_script, ruleset, IsolationSpec, KeepSets};

fn compiled(text: &str) -> CompiledExceptions {
    compile(&parse_rules("ex.pf", text).expect("valid"))
}

fn texts(rules: &[NftRule]) -> Vec<String> {
    rules.iter().map(NftRule::render).collect()
}

#[test]
fn jump_host_exception_opens_one_port_and_its_replies() {
    let c = compiled("pass out proto tcp to 203.0.113.2 port 22");
    assert_eq!(
        texts(&c.output),
        vec!["ip daddr 203.0.113.2 tcp dport 22 accept comment \"line 1\""]
    );
    assert_eq!(
        texts(&c.input_replies),
        vec!["ip saddr 203.0.113.2 tcp sport 22 ct state established ct direction reply accept comment \"line 1 reply\""]
    );
    assert!(c.input.is_empty() && c.output_replies.is_empty());
}

#[test]
fn pf_last_match_wins_unless_quick() {
    let c = compiled(
        "pass out proto tcp to 10.0.0.0/8 port 22\n\
         block out to 10.0.0.5\n\
         pass out quick to 10.9.9.9\n\
         block out quick to 10.9.9.0/24\n",
    );
    // quick rules in file order, then the others last-first.
    assert_eq!(
        texts(&c.output),
        vec![
            "ip daddr 10.9.9.9 accept comment \"line 3\"",
            "ip daddr 10.9.9.0/24 drop comment \"line 4\"",
            "ip daddr 10.0.0.5 drop comment \"line 2\"",
            "ip daddr 10.0.0.0/8 tcp dport 22 accept comment \"line 1\"",
        ]
    );
}

#[test]
fn no_direction_means_both_chains_and_no_state_means_no_reply_rule() {
    let c = compiled("pass from { 192.0.2.7 } no state");
    assert_eq!(
        texts(&c.output),
        vec!["ip saddr 192.0.2.7 accept comment \"line 1\""]
    );
    assert_eq!(
        texts(&c.input),
        vec!["ip saddr 192.0.2.7 accept comment \"line 1\""]
    );
    assert!(c.input_replies.is_empty() && c.output_replies.is_empty());
}

#[test]
fn pass_in_gets_its_reply_rule_in_output() {
    let c = compiled("pass in proto tcp from 198.51.100.0/24 to port 22");
    assert_eq!(
        texts(&c.input),
        vec!["ip saddr 198.51.100.0/24 tcp dport 22 accept comment \"line 1\""]
    );
    assert_eq!(
        texts(&c.output_replies),
        vec!["ip daddr 198.51.100.0/24 tcp sport 22 ct state established ct direction reply accept comment \"line 1 reply\""]
    );
}

#[test]
fn mixed_families_split_into_one_rule_each() {
    let c = compiled(
        "pass out log proto { tcp udp } to { 192.0.2.1, 2001:db8::1 } port { 443, 8000:8100 }",
    );
    assert_eq!(
        texts(&c.output),
        vec![
            "ip daddr 192.0.2.1 meta l4proto { tcp, udp } th dport { 443, 8000-8100 } log prefix \"rampart-isolate: \" accept comment \"line 1\"",
            "ip6 daddr 2001:db8::1 meta l4proto { tcp, udp } th dport { 443, 8000-8100 } log prefix \"rampart-isolate: \" accept comment \"line 1\"",
        ]
    );
    assert_eq!(c.input_replies.len(), 2);
}

#[test]
fn family_without_addresses_uses_nfproto_and_icmp_implies_it() {
    let c = compiled(
        "block out inet6 proto tcp\npass out proto { icmp icmp6 }\npass out inet proto icmp",
    );
    assert_eq!(
        texts(&c.output),
        vec![
            "meta l4proto icmp accept comment \"line 3\"",
            "meta l4proto icmp accept comment \"line 2\"",
            "meta l4proto ipv6-icmp accept comment \"line 2\"",
            "meta nfproto ipv6 meta l4proto tcp drop comment \"line 1\"",
        ]
    );
}

#[test]
fn dhcp_seed_rule_matches_source_and_destination_ports() {
    let c = compiled("pass in inet proto udp from port 67 to port 68");
    assert_eq!(
        texts(&c.input),
        vec!["meta nfproto ipv4 udp sport 67 udp dport 68 accept comment \"line 1\""]
    );
    assert_eq!(
        texts(&c.output_replies),
        vec!["meta nfproto ipv4 udp sport 68 udp dport 67 ct state established ct direction reply accept comment \"line 1 reply\""]
    );
}

fn spec(exceptions: &str) -> IsolationSpec {
    IsolationSpec {
        server_addrs: vec!["10.77.1.2".parse().unwrap(), "fd77:1::2".parse().unwrap()],
        gateway_addrs: vec!["10.77.1.2".parse().unwrap()],
        resolvers: vec!["10.77.1.53".parse().unwrap()],
        exceptions: parse_rules("ex.pf", exceptions).unwrap(),
    }
}

#[test]
fn the_whole_table_is_one_atomic_batch() {
    let (text, expected) = ruleset(&spec("pass out proto tcp to 203.0.113.2 port 22"));
    let golden = format!(
        r#"table inet rampart_isolate {{}}
delete table inet rampart_isolate
table inet rampart_isolate {{
	comment "Rampart isolation: default drop, see docs/isolation.md"
	set keep4 {{ type ipv4_addr; elements = {{ 10.77.1.2 }}; }}
	set keep6 {{ type ipv6_addr; elements = {{ fd77:1::2 }}; }}
	set dns4 {{ type ipv4_addr; elements = {{ 10.77.1.53 }}; }}
	set dns6 {{ type ipv6_addr; }}
	chain input {{
		type filter hook input priority -160; policy drop;
		iif "lo" accept comment "rampart-isolate fp={fp}"
		ip saddr @keep4 accept
		ip6 saddr @keep6 accept
		udp sport 67 udp dport 68 accept comment "DHCPv4"
		meta nfproto ipv6 udp sport 547 udp dport 546 accept comment "DHCPv6"
		icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, mld-listener-query }} accept
		ip saddr @dns4 meta l4proto {{ tcp, udp }} th sport 53 ct state established ct direction reply accept comment "DNS"
		ip6 saddr @dns6 meta l4proto {{ tcp, udp }} th sport 53 ct state established ct direction reply accept comment "DNS"
		ct state related meta l4proto {{ icmp, ipv6-icmp }} accept
		ip saddr 203.0.113.2 tcp sport 22 ct state established ct direction reply accept comment "line 1 reply"
		ct state new tcp flags & (fin | syn | rst | ack) != syn drop
	}}
	chain output {{
		type filter hook output priority -160; policy drop;
		oif "lo" accept
		ip daddr @keep4 accept
		ip6 daddr @keep6 accept
		udp sport 68 udp dport 67 accept comment "DHCPv4"
		meta nfproto ipv6 udp sport 546 udp dport 547 accept comment "DHCPv6"
		icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report }} accept
		ip daddr @dns4 meta l4proto {{ tcp, udp }} th dport 53 accept comment "DNS"
		ip6 daddr @dns6 meta l4proto {{ tcp, udp }} th dport 53 accept comment "DNS"
		ct state related meta l4proto {{ icmp, ipv6-icmp }} accept
		ct state new tcp flags & (fin | syn | rst | ack) != syn drop
		ip daddr 203.0.113.2 tcp dport 22 accept comment "line 1"
	}}
	chain forward {{
		type filter hook forward priority -160; policy drop;
	}}
}}
"#,
        fp = expected.fingerprint
    );
    assert_eq!(text, golden);
    assert_eq!(expected.input_rules, 11);
    assert_eq!(expected.output_rules, 11);
    assert_eq!(expected.fingerprint.len(), 16);
    for line in text.lines().filter(|l| l.contains("table")) {
        assert!(line.contains("inet rampart_isolate"), "{line}");
    }
    assert!(!text.contains("flush ruleset"));
    assert!(
        !text.contains("ct state established accept"),
        "no blanket established"
    );
}

#[test]
fn the_fingerprint_follows_the_rules_not_the_kept_addresses() {
    let a = ruleset(&spec("pass out proto tcp to 203.0.113.2 port 22")).1;
    let mut moved = spec("pass out proto tcp to 203.0.113.2 port 22");
    moved.server_addrs = vec!["10.99.0.1".parse().unwrap()];
    assert_eq!(a.fingerprint, ruleset(&moved).1.fingerprint);
    let b = ruleset(&spec("pass out proto tcp to 203.0.113.2 port 23")).1;
    assert_ne!(a.fingerprint, b.fingerprint);
}

#[test]
fn release_and_refresh_name_only_the_isolation_table() {
    assert_eq!(
        release_script(),
        "table inet rampart_isolate {}\ndelete table inet rampart_isolate\n"
    );
    let script = refresh_sets_script(&KeepSets::from_spec(&spec("")));
    assert_eq!(
        script,
        "flush set inet rampart_isolate keep4\n\
         add element inet rampart_isolate keep4 { 10.77.1.2 }\n\
         flush set inet rampart_isolate keep6\n\
         add element inet rampart_isolate keep6 { fd77:1::2 }\n\
         flush set inet rampart_isolate dns4\n\
         add element inet rampart_isolate dns4 { 10.77.1.53 }\n\
         flush set inet rampart_isolate dns6\n"
    );
}

/// A listing shaped like nftables 1.0.6's `nft -j list table`, built from `expected`.
fn listing(fp: &str, input_rules: usize, output_rules: usize, keep4: &[&str]) -> String {
    let mut items = vec![
        r#"{"metainfo":{"version":"1.0.6","release_name":"Lester Gooch #5","json_schema_version":1}}"#.to_string(),
        r#"{"table":{"family":"inet","name":"rampart_isolate","handle":2}}"#.to_string(),
    ];
    let elems: Vec<String> = keep4.iter().map(|e| format!("\"{e}\"")).collect();
    items.push(format!(
        r#"{{"set":{{"family":"inet","name":"keep4","table":"rampart_isolate","type":"ipv4_addr","handle":3,"elem":[{}]}}}}"#,
        elems.join(",")
    ));
    items.push(r#"{"set":{"family":"inet","name":"keep6","table":"rampart_isolate","type":"ipv6_addr","handle":4,"elem":["fd77:1::2"]}}"#.into());
    items.push(r#"{"set":{"family":"inet","name":"dns4","table":"rampart_isolate","type":"ipv4_addr","handle":5,"elem":[{"prefix":{"addr":"10.77.1.53","len":32}}]}}"#.into());
    items.push(r#"{"set":{"family":"inet","name":"dns6","table":"rampart_isolate","type":"ipv6_addr","handle":6}}"#.into());
    for (chain, n) in [
        ("input", input_rules),
        ("output", output_rules),
        ("forward", 0),
    ] {
        items.push(format!(
            r#"{{"chain":{{"family":"inet","table":"rampart_isolate","name":"{chain}","handle":1,"type":"filter","hook":"{chain}","prio":-160,"policy":"drop"}}}}"#
        ));
        for i in 0..n {
            let comment = if chain == "input" && i == 0 {
                format!(r#","comment":"rampart-isolate fp={fp}""#)
            } else {
                String::new()
            };
            items.push(format!(
                r#"{{"rule":{{"family":"inet","table":"rampart_isolate","chain":"{chain}","handle":{i}{comment},"expr":[{{"accept":null}}]}}}}"#
            ));
        }
    }
    format!(r#"{{"nftables":[{}]}}"#, items.join(","))
}

#[test]
fn read_back_matches_what_was_applied_and_names_each_difference() {
    let (_, expected) = ruleset(&spec("pass out proto tcp to 203.0.113.2 port 22"));
    let fp = expected.fingerprint.clone();
    let good = parse_listing(&listing(&fp, 11, 11, &["10.77.1.2"])).unwrap();
    assert_eq!(compare(Some(&good), &expected), KernelState::Isolated);
    assert_eq!(compare(None, &expected), KernelState::Absent);

    let changed = parse_listing(&listing("0000", 10, 11, &["10.77.1.2", "203.0.113.66"])).unwrap();
    let KernelState::Drift { reasons } = compare(Some(&changed), &expected) else {
        panic!("drift expected");
    };
    assert_eq!(
        reasons,
        vec![
            format!("rules fingerprint is 0000, expected {fp}"),
            "chain input has 10 rules, expected 11".to_string(),
            "set keep4 holds [10.77.1.2, 203.0.113.66], expected [10.77.1.2]".to_string(),
        ]
    );
    assert!(parse_listing("not json").is_err());
}

#[test]
fn thousand_rules_compile_to_a_batch_quickly() {
    let text: String = (0..1000)
        .map(|i| {
            format!(
                "pass out proto tcp to 10.{}.{}.1 port {}\n",
                i / 250,
                i % 250,
                1000 + i
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let (batch, expected) = ruleset(&spec(&text));
    eprintln!("1,000 rules compiled in {:?}", started.elapsed());
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    // One rule over a set of 1,000 elements in each chain (decisions and replies).
    assert_eq!(expected.output_rules, 10 + 1);
    assert_eq!(expected.input_rules, 10 + 1);
    assert_eq!(expected.exception_sets.len(), 2);
    assert!(expected.exception_sets.iter().all(|(_, e)| e.len() == 1000));
    assert!(batch
        .contains("ip daddr . tcp dport @exc_out_2 accept comment \"1000 rules, lines 1-1000\""));
    assert!(batch.contains(
        "ip saddr . tcp sport @exc_in_1 ct state established ct direction reply accept comment \"1000 rules, lines 1-1000 reply\""
    ));
    assert!(
        batch.contains("10.3.249.1 . 1999"),
        "elements are address . port"
    );
}
