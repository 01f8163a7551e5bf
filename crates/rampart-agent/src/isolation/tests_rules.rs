//! Parser tests: every construct of the language, every error with its line:col.

use super::ast::*;
use super::error::RuleErrorKind;
use super::rules::parse_rules;
use std::net::IpAddr;

fn ok(text: &str) -> Vec<ExceptionRule> {
    match parse_rules("ex.pf", text) {
        Ok(rules) => rules,
        Err(e) => panic!("{text:?} should parse: {e}"),
    }
}

fn one(text: &str) -> ExceptionRule {
    let mut rules = ok(text);
    assert_eq!(rules.len(), 1, "{text:?}");
    rules.remove(0)
}

/// The first error, displayed (`ex.pf:LINE:COL: message`).
fn err(text: &str) -> String {
    match parse_rules("ex.pf", text) {
        Ok(rules) => panic!("{text:?} should fail, parsed {rules:?}"),
        Err(e) => e.0[0].to_string(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn host(s: &str) -> Cidr {
    Cidr::host(ip(s))
}

#[test]
fn seed_004_examples_parse_as_pf_reads_them() {
    let dhcp = one("pass in inet proto udp from port 67 to port 68");
    assert_eq!(dhcp.action, Action::Pass);
    assert_eq!(dhcp.direction, Some(Direction::In));
    assert_eq!(dhcp.family, Some(Family::Inet));
    assert_eq!(dhcp.protos, vec![Proto::Udp]);
    assert!(dhcp.from.addrs.is_empty());
    assert_eq!(dhcp.from.ports, vec![PortSpec::One(67)]);
    assert_eq!(dhcp.to.ports, vec![PortSpec::One(68)]);

    let logged = one("pass log proto udp to port { 123 4172 4195 5938 }");
    assert!(logged.log);
    assert_eq!(logged.direction, None, "no direction: both, as in pf");
    assert_eq!(
        logged.to.ports,
        [123, 4172, 4195, 5938].map(PortSpec::One).to_vec()
    );

    let jump = one("pass proto tcp to 203.0.113.2 port 22");
    assert_eq!(jump.to.addrs, vec![host("203.0.113.2")]);
    assert_eq!(jump.to.ports, vec![PortSpec::One(22)]);

    let block = one("block in all");
    assert_eq!(block.action, Action::Block);
    assert!(block.from.is_any() && block.to.is_any());
}

#[test]
fn macros_expand_to_addresses_and_lists_including_other_macros() {
    let rules = ok(r#"
jump = "203.0.113.2"
mgmt = "{ 198.51.100.0/24, 2001:db8:1::/48 }"
all_mgmt = "{ $jump 192.0.2.9 }"
pass out proto tcp to $jump port ssh
pass in from $mgmt to any no state
pass out to $all_mgmt
"#);
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].to.addrs, vec![host("203.0.113.2")]);
    assert_eq!(rules[0].to.ports, vec![PortSpec::One(22)]);
    assert_eq!(rules[0].line, 5);
    assert_eq!(
        rules[1].from.addrs,
        vec![
            Cidr {
                addr: ip("198.51.100.0"),
                prefix: 24
            },
            Cidr {
                addr: ip("2001:db8:1::"),
                prefix: 48
            }
        ]
    );
    assert!(rules[1].no_state);
    assert_eq!(
        rules[2].to.addrs,
        vec![host("203.0.113.2"), host("192.0.2.9")]
    );
}

#[test]
fn every_option_in_pf_order() {
    let r = one("block out log quick inet6 proto { tcp, udp } from 2001:db8::5 port 1000:2000 to { 2001:db8::/32 } port { 53, https } keep state");
    assert_eq!(r.action, Action::Block);
    assert_eq!(r.direction, Some(Direction::Out));
    assert!(r.log && r.quick && !r.no_state);
    assert_eq!(r.family, Some(Family::Inet6));
    assert_eq!(r.protos, vec![Proto::Tcp, Proto::Udp]);
    assert_eq!(r.from.addrs, vec![host("2001:db8::5")]);
    assert_eq!(r.from.ports, vec![PortSpec::Range(1000, 2000)]);
    assert_eq!(
        r.to.addrs,
        vec![Cidr {
            addr: ip("2001:db8::"),
            prefix: 32
        }]
    );
    assert_eq!(r.to.ports, vec![PortSpec::One(53), PortSpec::One(443)]);
    // quick before log is accepted too.
    let r = one("pass out quick log proto icmp");
    assert!(r.quick && r.log);
    assert_eq!(r.protos, vec![Proto::Icmp]);
    assert_eq!(one("pass out proto icmp6").protos, vec![Proto::Icmp6]);
}

#[test]
fn cidr_host_bits_are_cleared_like_pf() {
    let r = one("pass out to 10.1.2.3/8");
    assert_eq!(
        r.to.addrs,
        vec![Cidr {
            addr: ip("10.0.0.0"),
            prefix: 8
        }]
    );
    assert_eq!(r.to.addrs[0].to_string(), "10.0.0.0/8");
    assert_eq!(
        one("pass out to 0.0.0.0/0").to.addrs[0].to_string(),
        "0.0.0.0/0"
    );
    assert_eq!(one("pass out to ::/0").to.addrs[0].to_string(), "::/0");
}

#[test]
fn comments_blank_lines_continuations_and_multiline_lists() {
    let rules = ok("# isolation exceptions\n\n\
                    pass out proto tcp \\\n   to 203.0.113.2 port 22 # the jump host\n\
                    pass out to {\n  192.0.2.1,\n  192.0.2.2\n}\n\
                    block out log to 192.0.2.2\n");
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].line, 3);
    assert_eq!(rules[0].to.ports, vec![PortSpec::One(22)]);
    assert_eq!(rules[1].to.addrs.len(), 2);
    assert_eq!(rules[2].line, 9);
}

#[test]
fn an_empty_file_has_no_exceptions() {
    assert!(ok("").is_empty());
    assert!(ok("# nothing\n\n   \n").is_empty());
}

#[test]
fn unknown_keyword_suggests_the_nearest() {
    assert_eq!(
        err("pas out all"),
        "ex.pf:1:1: unknown keyword \"pas\" (did you mean \"pass\"?)"
    );
    assert_eq!(
        err("pass out proot tcp"),
        "ex.pf:1:10: unknown keyword \"proot\" (did you mean \"proto\"?)"
    );
    assert_eq!(
        err("pass out proto tpc"),
        "ex.pf:1:16: unknown keyword \"tpc\" (did you mean \"tcp\"?)"
    );
    assert_eq!(
        err("\n  pass out frm 10.0.0.1"),
        "ex.pf:2:12: unknown keyword \"frm\" (did you mean \"from\"?)"
    );
}

#[test]
fn a_port_needs_proto_tcp_or_udp() {
    assert_eq!(
        err("pass out to 203.0.113.2 port 22"),
        "ex.pf:1:25: a port needs a protocol with ports (add `proto tcp` or `proto udp` before `from`/`to`)"
    );
    assert_eq!(
        err("pass out proto { tcp icmp } to port 22"),
        "ex.pf:1:32: proto icmp has no ports (ports need `proto tcp` or `proto udp`)"
    );
    assert_eq!(
        err("pass out proto tcp port 22"),
        "ex.pf:1:20: expected `from` or `to` before `port` (pf writes `to port 22`), found \"port\""
    );
}

#[test]
fn undefined_macro_names_the_use_and_suggests() {
    assert_eq!(
        err("jump = \"203.0.113.2\"\npass out to $jmp"),
        "ex.pf:2:13: undefined macro $jmp (did you mean $jump?)"
    );
    assert_eq!(
        err("pass out to $nowhere"),
        "ex.pf:1:13: undefined macro $nowhere (define it before use: name = \"203.0.113.2\")"
    );
    assert_eq!(
        err("a = \"10.0.0.1\"\na = \"10.0.0.2\""),
        "ex.pf:2:1: macro $a is already defined on line 1 (pick another name)"
    );
}

#[test]
fn bad_addresses_say_why() {
    assert_eq!(
        err("pass out to 10.0.0.0/33"),
        "ex.pf:1:13: bad address \"10.0.0.0/33\": prefix length 33 is longer than 32"
    );
    assert_eq!(
        err("pass out to 2001:db8::/129"),
        "ex.pf:1:13: bad address \"2001:db8::/129\": prefix length 129 is longer than 128"
    );
    assert_eq!(
        err("pass out to 10.0.0.300"),
        "ex.pf:1:13: bad address \"10.0.0.300\": not an IPv4 or IPv6 address"
    );
    assert_eq!(
        err("pass out to 10.0.0.0/x"),
        "ex.pf:1:13: bad address \"10.0.0.0/x\": prefix length \"x\" is not a number"
    );
    assert_eq!(
        err("pass out to jump.example.com"),
        "ex.pf:1:13: bad address \"jump.example.com\": host names are not resolved in exceptions (write an IP address or CIDR)"
    );
    // An error inside a macro's value points into its definition.
    assert_eq!(
        err("jump = \"203.0.113.2/40\"\npass out to $jump"),
        "ex.pf:1:9: bad address \"203.0.113.2/40\": prefix length 40 is longer than 32"
    );
}

#[test]
fn bad_ports_say_why() {
    assert_eq!(
        err("pass out proto tcp to port 70000"),
        "ex.pf:1:28: bad port \"70000\": out of range (1-65535)"
    );
    assert_eq!(
        err("pass out proto tcp to port 0"),
        "ex.pf:1:28: bad port \"0\": out of range (1-65535)"
    );
    assert_eq!(
        err("pass out proto tcp to port 2000:1000"),
        "ex.pf:1:28: bad port \"2000:1000\": range 2000:1000 is reversed (write 1000:2000)"
    );
    assert_eq!(
        err("pass out proto tcp to port shh"),
        "ex.pf:1:28: bad port \"shh\": not a number or known service (did you mean \"ssh\"?)"
    );
    assert_eq!(
        err("pass out proto tcp to port > 1024"),
        "ex.pf:1:28: port operators is not supported in isolation exceptions (write a port, a { list } or a range A:B)"
    );
}

#[test]
fn families_must_agree() {
    assert_eq!(
        err("pass out inet6 to 203.0.113.2"),
        "ex.pf:1:19: address 203.0.113.2 is IPv4 but the rule says inet6 (remove `inet6` or use an IPv6 address)"
    );
    assert_eq!(
        err("pass out inet proto icmp6"),
        "ex.pf:1:15: proto icmp6 is IPv6 but the rule says inet (remove `inet` or use icmp)"
    );
    assert_eq!(
        err("pass out from 10.0.0.1 to 2001:db8::1"),
        "ex.pf:1:1: this rule can never match: its addresses and protocols share no address family (split it into an inet and an inet6 rule)"
    );
    assert_eq!(
        err("pass out proto icmp to 2001:db8::1"),
        "ex.pf:1:1: this rule can never match: its addresses and protocols share no address family (split it into an inet and an inet6 rule)"
    );
    // A mixed list with `inet` keeps its IPv4 part, as pf does.
    let r = one("pass out inet to { 10.0.0.1, 2001:db8::1 }");
    assert_eq!(r.families(), Some(vec![Family::Inet]));
}

#[test]
fn structure_errors_point_at_the_token() {
    assert_eq!(
        err("pass out to { }"),
        "ex.pf:1:13: empty list (write at least one item between { and }, or `any`)"
    );
    assert_eq!(
        err("jump = \"203.0.113.2\npass out all"),
        "ex.pf:1:8: unterminated string (add the closing \")"
    );
    assert_eq!(
        err("pass out on eth0 all"),
        "ex.pf:1:10: `on` is not supported in isolation exceptions (isolation applies to every interface; drop `on <interface>`)"
    );
    assert_eq!(
        err("pass out to ! 10.0.0.1"),
        "ex.pf:1:13: negation `!` is not supported in isolation exceptions (list what to pass; everything else stays blocked)"
    );
    assert_eq!(
        err("pass out log log all"),
        "ex.pf:1:14: `log` given twice in one rule (keep one)"
    );
    assert_eq!(
        err("pass out all 10.0.0.1"),
        "ex.pf:1:14: expected the next part of the rule in pf order: in|out, log, quick, inet|inet6, proto, from, to, no state, found \"10.0.0.1\""
    );
    assert_eq!(
        err("pass out proto tcp to 10.0.0.1 port 22 23"),
        "ex.pf:1:40: expected the next part of the rule in pf order: in|out, log, quick, inet|inet6, proto, from, to, no state, found \"23\""
    );
    assert_eq!(
        err("pass out to 10.0.0.1 no"),
        "ex.pf:1:24: expected `state` after `no`, found end of line"
    );
    assert_eq!(
        err("pass out to @x"),
        "ex.pf:1:13: unexpected character '@'"
    );
    assert_eq!(
        err("{ pass }"),
        "ex.pf:1:1: expected a rule (`pass` or `block`) or a macro (`name = \"...\"`), found \"{\""
    );
    assert_eq!(
        err("x = 10.0.0.1"),
        "ex.pf:1:5: expected a quoted value (name = \"203.0.113.2\"), found \"10.0.0.1\""
    );
}

#[test]
fn an_unclosed_list_does_not_swallow_the_next_rule() {
    let errors = parse_rules("ex.pf", "pass out to { 10.0.0.1\npass out to 10.0.0.300\n")
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "ex.pf:1:23: expected an address or \"}\", found end of line"
    );
    assert_eq!(errors[1].line, 2);
}

#[test]
fn every_bad_line_is_reported_in_one_run() {
    let errors = parse_rules(
        "ex.pf",
        "pas out all\npass out to 10.0.0.1 port 22\npass out all\nblock in to 300.0.0.1 @\n",
    )
    .unwrap_err()
    .0;
    let places: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(places, vec![(1, 1), (2, 22), (4, 23)]);
    assert!(matches!(
        errors[0].kind,
        RuleErrorKind::UnknownKeyword { .. }
    ));
}

#[test]
fn a_macro_that_doubles_every_line_is_refused_not_expanded() {
    let mut text = String::from("m0 = \"{ 10.0.0.1 10.0.0.2 }\"\n");
    for i in 1..40 {
        text.push_str(&format!("m{i} = \"$m{} $m{}\"\n", i - 1, i - 1));
    }
    let e = err(&text);
    assert!(e.contains("expands to more than 10000 tokens"), "{e}");
}

#[test]
fn keywords_cannot_be_macro_names() {
    assert_eq!(
        err("port = \"22\""),
        "ex.pf:1:1: expected a macro name that is not a keyword, found \"port\""
    );
}

mod never_panics {
    use super::super::rules::parse_rules;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "pass",
            "block",
            "in",
            "out",
            "log",
            "quick",
            "inet",
            "inet6",
            "proto",
            "tcp",
            "udp",
            "icmp",
            "icmp6",
            "from",
            "to",
            "port",
            "any",
            "all",
            "no",
            "state",
            "keep",
            "{",
            "}",
            ",",
            "=",
            "!",
            "<",
            "\"",
            "$m",
            "m",
            "\\",
            "\n",
            "#",
            "10.0.0.1",
            "10.0.0.0/8",
            "2001:db8::1",
            "::/0",
            "22",
            "1:65535",
            "65536",
            "ssh",
            "on",
        ])
        .prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_rules("fuzz", &text);
        }

        #[test]
        fn token_soup_never_panics(tokens in prop::collection::vec(token(), 0..40)) {
            let text = tokens.join(" ");
            if let Ok(rules) = parse_rules("fuzz", &text) {
                // Whatever parses must compile.
                let _ = super::super::compile::compile(&rules);
            }
        }

        #[test]
        fn macro_definitions_with_token_soup_never_panic(tokens in prop::collection::vec(token(), 0..20)) {
            let text = format!("m = \"{}\"\npass out to $m\n", tokens.join(" ").replace('"', ""));
            let _ = parse_rules("fuzz", &text);
        }
    }
}
