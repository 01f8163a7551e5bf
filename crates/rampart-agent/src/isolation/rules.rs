//! The exception-file parser: a pf-style subset (OpenBSD pf.conf's filter rules, as
//! seed 004 teaches them), hand-written so every error can name its line and column.
//!
//! ```text
//! file    = { statement NEWLINE }
//! stmt    = macro | rule
//! macro   = NAME "=" STRING                       (value: addresses, ports or a { list })
//! rule    = ("pass" | "block") ["in" | "out"] {"log" | "quick"} ["inet" | "inet6"]
//!           ["proto" (PROTO | "{" PROTO {[","] PROTO} "}")]
//!           ("all" | ["from" host [port]] ["to" host [port]])
//!           ["no" "state" | "keep" "state"]
//! host    = "any" | ADDR | "{" ADDR {[","] ADDR} "}"     (ADDR: IPv4, IPv6, CIDR, $macro)
//! port    = "port" (PORT | PORT ":" PORT | "{" ... "}")  (PORT: number or ssh/http/...)
//! ```
//!
//! Newlines may appear inside `{ }` and after a `\`; `#` starts a comment.

use super::ast::{Action, Cidr, Direction, Endpoint, ExceptionRule, Family, PortSpec, Proto};
use super::error::{RuleError, RuleErrorKind, RuleErrors};
use super::lexer::{lex, Spanned, Tok};
use std::collections::HashMap;
use std::net::IpAddr;

/// A macro may expand to at most this many tokens: macros built from macros double
/// in size per line, and a hostile file must not exhaust memory.
const MACRO_TOKEN_LIMIT: usize = 10_000;

const KEYWORDS: &[&str] = &[
    "pass", "block", "in", "out", "log", "quick", "inet", "inet6", "proto", "from", "to", "port",
    "any", "all", "no", "keep", "state",
];
const PROTOS: &[&str] = &["tcp", "udp", "icmp", "icmp6"];

/// pf keywords we recognise but do not support, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "on",
        "isolation applies to every interface; drop `on <interface>`",
    ),
    ("user", "isolation matches addresses and ports, not users"),
    ("group", "isolation matches addresses and ports, not groups"),
    (
        "flags",
        "TCP flags are handled by the isolation table itself",
    ),
    (
        "icmp-type",
        "a rule passes all ICMP of its family; drop `icmp-type`",
    ),
    ("icmp6-type", "a rule passes all ICMPv6; drop `icmp6-type`"),
    ("label", "the nftables rule comment names the line instead"),
    ("tag", "tags are not supported"),
    ("modulate", "use `keep state` or `no state`"),
    ("synproxy", "use `keep state` or `no state`"),
    ("match", "use `pass` or `block`"),
    (
        "self",
        "write the address, or omit `from` for any local address",
    ),
    ("route-to", "routing is not part of isolation"),
    ("rdr-to", "redirection is not part of isolation"),
    ("nat-to", "NAT is not part of isolation"),
];

/// Well-known service names pf accepts for ports (a small subset of /etc/services,
/// fixed here so a rule means the same on every machine).
const SERVICES: &[(&str, u16)] = &[
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("domain", 53),
    ("bootps", 67),
    ("bootpc", 68),
    ("http", 80),
    ("ntp", 123),
    ("https", 443),
    ("syslog", 514),
    ("dhcpv6-client", 546),
    ("dhcpv6-server", 547),
    ("rdp", 3389),
];

/// Parse an exception file. `file` is only used in error messages.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<ExceptionRule>, RuleErrors> {
    let (tokens, lex_errors) = lex(text, 1, 1);
    let mut parser = Parser {
        file,
        macros: HashMap::new(),
        errors: lex_errors
            .into_iter()
            .map(|e| RuleError {
                file: file.to_string(),
                line: e.line,
                col: e.col,
                kind: e.kind,
            })
            .collect(),
    };
    let mut rules = Vec::new();
    for statement in statements(&tokens) {
        if statement.iter().any(|t| t.tok == Tok::Bad) {
            continue; // the lexer already reported this line
        }
        // Newlines inside `{ }` only separate items.
        let statement: Vec<Spanned> = statement
            .iter()
            .filter(|t| t.tok != Tok::Newline)
            .cloned()
            .collect();
        match parser.statement(&statement) {
            Ok(Some(rule)) => rules.push(rule),
            Ok(None) => {}
            Err(e) => parser.errors.push(e),
        }
    }
    if parser.errors.is_empty() {
        Ok(rules)
    } else {
        parser.errors.sort_by_key(|e| (e.line, e.col));
        Err(RuleErrors(parser.errors))
    }
}

/// Split the token stream into statements: a newline ends one unless it is inside
/// `{ }`. An unclosed `{` must not swallow the rest of the file, so a line that starts
/// with `pass`/`block` or `NAME =` always starts a new statement.
fn statements(tokens: &[Spanned]) -> Vec<&[Spanned]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t.tok {
            Tok::LBrace => depth += 1,
            Tok::RBrace => depth = depth.saturating_sub(1),
            Tok::Newline if depth == 0 || starts_statement(&tokens[i + 1..]) => {
                out.push(&tokens[start..i]);
                start = i + 1;
                depth = 0;
            }
            _ => {}
        }
    }
    out.push(&tokens[start..]);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn starts_statement(rest: &[Spanned]) -> bool {
    let mut rest = rest.iter().filter(|t| t.tok != Tok::Newline);
    match (rest.next().map(|t| &t.tok), rest.next().map(|t| &t.tok)) {
        (Some(Tok::Word(w)), _) if w == "pass" || w == "block" => true,
        (Some(Tok::Word(_)), Some(Tok::Equals)) => true,
        _ => false,
    }
}

struct Parser<'f> {
    file: &'f str,
    /// Name → (expanded tokens, line of definition).
    macros: HashMap<String, (Vec<Spanned>, usize)>,
    errors: Vec<RuleError>,
}

impl Parser<'_> {
    fn err(&self, line: usize, col: usize, kind: RuleErrorKind) -> RuleError {
        RuleError {
            file: self.file.to_string(),
            line,
            col,
            kind,
        }
    }

    fn statement(&mut self, toks: &[Spanned]) -> Result<Option<ExceptionRule>, RuleError> {
        let Some(first) = toks.first() else {
            return Ok(None);
        };
        match (&first.tok, toks.get(1).map(|t| &t.tok)) {
            (Tok::Word(name), Some(Tok::Equals)) => {
                self.define_macro(name, first, &toks[2..])?;
                Ok(None)
            }
            (Tok::Word(w), _) if w == "pass" || w == "block" => {
                let expanded = self.expand(toks)?;
                RuleParser {
                    p: self,
                    toks: &expanded,
                    pos: 0,
                }
                .rule()
                .map(Some)
            }
            (Tok::Word(w), _) => {
                if let Some((_, hint)) = UNSUPPORTED.iter().find(|(k, _)| k == w) {
                    return Err(self.err(
                        first.line,
                        first.col,
                        RuleErrorKind::Unsupported {
                            what: format!("`{w}`"),
                            hint: hint.to_string(),
                        },
                    ));
                }
                Err(self.err(
                    first.line,
                    first.col,
                    RuleErrorKind::UnknownKeyword {
                        found: w.clone(),
                        suggestion: suggest(w, &["pass", "block"]),
                    },
                ))
            }
            (other, _) => Err(self.err(
                first.line,
                first.col,
                RuleErrorKind::Expected {
                    expected: "a rule (`pass` or `block`) or a macro (`name = \"...\"`)".into(),
                    found: other.describe(),
                },
            )),
        }
    }

    fn define_macro(
        &mut self,
        name: &str,
        at: &Spanned,
        rest: &[Spanned],
    ) -> Result<(), RuleError> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(self.err(
                at.line,
                at.col,
                RuleErrorKind::Expected {
                    expected: "a macro name (letters, digits, `_`)".into(),
                    found: format!("\"{name}\""),
                },
            ));
        }
        if KEYWORDS.contains(&name) || PROTOS.contains(&name) {
            return Err(self.err(
                at.line,
                at.col,
                RuleErrorKind::Expected {
                    expected: "a macro name that is not a keyword".into(),
                    found: format!("\"{name}\""),
                },
            ));
        }
        if let Some((_, first_line)) = self.macros.get(name) {
            return Err(self.err(
                at.line,
                at.col,
                RuleErrorKind::MacroRedefined {
                    name: name.to_string(),
                    first_line: *first_line,
                },
            ));
        }
        let value = match rest {
            [Spanned {
                tok: Tok::Str(v),
                line,
                col,
            }] => (v, *line, *col),
            [] => {
                return Err(self.err(
                    at.line,
                    at.col,
                    RuleErrorKind::Expected {
                        expected: "a quoted value after `=`".into(),
                        found: "end of line".into(),
                    },
                ))
            }
            [t, ..] => {
                let kind = match rest.get(1) {
                    Some(extra) if matches!(t.tok, Tok::Str(_)) => {
                        return Err(self.err(
                            extra.line,
                            extra.col,
                            RuleErrorKind::Expected {
                                expected: "end of line after the macro's value".into(),
                                found: extra.tok.describe(),
                            },
                        ))
                    }
                    _ => RuleErrorKind::Expected {
                        expected: "a quoted value (name = \"203.0.113.2\")".into(),
                        found: t.tok.describe(),
                    },
                };
                return Err(self.err(t.line, t.col, kind));
            }
        };
        let (text, line, col) = value;
        // The value is lexed on its own, one column past the opening quote, so errors
        // inside it point into the definition.
        let (tokens, errors) = lex(text, line, col + 1);
        if let Some(e) = errors.into_iter().next() {
            return Err(self.err(e.line, e.col, e.kind));
        }
        let tokens = self.expand(&tokens)?;
        if let Some(t) = tokens.iter().find(|t| t.tok == Tok::Newline) {
            return Err(self.err(t.line, t.col, RuleErrorKind::UnterminatedString));
        }
        self.macros.insert(name.to_string(), (tokens, at.line));
        Ok(())
    }

    /// Replace each `$name` by its (already expanded) value.
    fn expand(&self, toks: &[Spanned]) -> Result<Vec<Spanned>, RuleError> {
        let mut out = Vec::with_capacity(toks.len());
        for t in toks {
            match &t.tok {
                Tok::Macro(name) => match self.macros.get(name) {
                    Some((value, _)) => out.extend(value.iter().cloned()),
                    None => {
                        let names: Vec<&str> = self.macros.keys().map(String::as_str).collect();
                        return Err(self.err(
                            t.line,
                            t.col,
                            RuleErrorKind::UndefinedMacro {
                                name: name.clone(),
                                suggestion: suggest(name, &names),
                            },
                        ));
                    }
                },
                _ => out.push(t.clone()),
            }
            if out.len() > MACRO_TOKEN_LIMIT {
                return Err(self.err(
                    t.line,
                    t.col,
                    RuleErrorKind::MacroTooLarge {
                        limit: MACRO_TOKEN_LIMIT,
                    },
                ));
            }
        }
        Ok(out)
    }
}

/// Positions remembered while parsing one rule, for the checks that need the whole rule.
#[derive(Default)]
struct Marks {
    proto: Option<(usize, usize)>,
    ports: Vec<(usize, usize)>,
    from_addr: Option<(usize, usize)>,
    to_addr: Option<(usize, usize)>,
}

struct RuleParser<'p, 'f, 't> {
    p: &'p Parser<'f>,
    toks: &'t [Spanned],
    pos: usize,
}

impl RuleParser<'_, '_, '_> {
    fn peek(&self) -> Option<&Spanned> {
        self.toks.get(self.pos)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Spanned {
                tok: Tok::Word(w), ..
            }) => Some(w.as_str()),
            _ => None,
        }
    }

    /// Where the next token is, or just past the last one at the end of the rule.
    fn here(&self) -> (usize, usize) {
        match self.peek().or(self.toks.last()) {
            Some(t) if self.pos < self.toks.len() => (t.line, t.col),
            Some(t) => (t.line, t.col + tok_width(&t.tok)),
            None => (1, 1),
        }
    }

    fn expected(&self, expected: &str) -> RuleError {
        let (line, col) = self.here();
        let found = self
            .peek()
            .map(|t| t.tok.describe())
            .unwrap_or_else(|| "end of line".into());
        self.p.err(
            line,
            col,
            RuleErrorKind::Expected {
                expected: expected.into(),
                found,
            },
        )
    }

    /// An unexpected word: an unsupported pf keyword, a misspelt keyword, or just out
    /// of place.
    fn unexpected_word(&self, expected: &str, allowed: &[&str]) -> RuleError {
        let (line, col) = self.here();
        let Some(word) = self.peek_word() else {
            return self.expected(expected);
        };
        if let Some((_, hint)) = UNSUPPORTED.iter().find(|(k, _)| *k == word) {
            return self.p.err(
                line,
                col,
                RuleErrorKind::Unsupported {
                    what: format!("`{word}`"),
                    hint: hint.to_string(),
                },
            );
        }
        // Only a word that looks like a keyword can be a misspelt one; a stray number
        // or address is just out of place.
        let keyword_like = word.starts_with(|c: char| c.is_ascii_alphabetic());
        if !keyword_like || KEYWORDS.contains(&word) || PROTOS.contains(&word) {
            return self.expected(expected);
        }
        self.p.err(
            line,
            col,
            RuleErrorKind::UnknownKeyword {
                found: word.to_string(),
                suggestion: suggest(word, allowed),
            },
        )
    }

    fn eat(&mut self, word: &str) -> Option<(usize, usize)> {
        match self.peek() {
            Some(t) if matches!(&t.tok, Tok::Word(w) if w == word) => {
                let at = (t.line, t.col);
                self.pos += 1;
                Some(at)
            }
            _ => None,
        }
    }

    fn rule(mut self) -> Result<ExceptionRule, RuleError> {
        let (line, col) = self.here();
        let action = match self.peek_word() {
            Some("pass") => Action::Pass,
            _ => Action::Block,
        };
        self.pos += 1;
        let mut marks = Marks::default();
        let direction = if self.eat("in").is_some() {
            Some(Direction::In)
        } else if self.eat("out").is_some() {
            Some(Direction::Out)
        } else {
            None
        };
        let (mut log, mut quick) = (false, false);
        loop {
            if self.eat("log").is_some() {
                if log {
                    return Err(self.dup_at_previous("`log`"));
                }
                log = true;
            } else if self.eat("quick").is_some() {
                if quick {
                    return Err(self.dup_at_previous("`quick`"));
                }
                quick = true;
            } else {
                break;
            }
        }
        let family = if self.eat("inet").is_some() {
            Some(Family::Inet)
        } else if self.eat("inet6").is_some() {
            Some(Family::Inet6)
        } else {
            None
        };
        let mut protos = Vec::new();
        if let Some(at) = self.eat("proto") {
            marks.proto = Some(at);
            protos = self.list("a protocol (tcp, udp, icmp, icmp6)", Self::proto)?;
        }
        let (mut from, mut to) = (Endpoint::default(), Endpoint::default());
        if self.eat("all").is_none() {
            if self.eat("from").is_some() {
                from = self.endpoint(&mut marks, true)?;
            }
            if self.eat("to").is_some() {
                to = self.endpoint(&mut marks, false)?;
            }
        }
        let mut no_state = false;
        if self.eat("no").is_some() {
            if self.eat("state").is_none() {
                return Err(self.expected("`state` after `no`"));
            }
            no_state = true;
        } else if self.eat("keep").is_some() && self.eat("state").is_none() {
            return Err(self.expected("`state` after `keep`"));
        }
        if self.peek().is_some() {
            return Err(self.trailing(direction.is_some(), family.is_some(), !protos.is_empty()));
        }
        let rule = ExceptionRule {
            action,
            direction,
            log,
            quick,
            family,
            protos,
            from,
            to,
            no_state,
            line,
        };
        self.check(&rule, &marks, (line, col))?;
        Ok(rule)
    }

    fn dup_at_previous(&self, what: &'static str) -> RuleError {
        let (line, col) = match self.toks.get(self.pos.saturating_sub(1)) {
            Some(t) => (t.line, t.col),
            None => self.here(),
        };
        self.p.err(line, col, RuleErrorKind::Duplicate { what })
    }

    /// Something is left after the rule: say what could have come there.
    fn trailing(&self, has_dir: bool, has_family: bool, has_proto: bool) -> RuleError {
        let mut allowed: Vec<&str> = Vec::new();
        if !has_dir {
            allowed.extend(["in", "out"]);
        }
        allowed.extend(["log", "quick"]);
        if !has_family {
            allowed.extend(["inet", "inet6"]);
        }
        if !has_proto {
            allowed.push("proto");
        }
        allowed.extend(["from", "to", "all", "port", "no", "keep", "state"]);
        match self.peek_word() {
            Some("port") => {
                let (line, col) = self.here();
                self.p.err(
                    line,
                    col,
                    RuleErrorKind::Expected {
                        expected: "`from` or `to` before `port` (pf writes `to port 22`)".into(),
                        found: "\"port\"".into(),
                    },
                )
            }
            Some(_) => self.unexpected_word(
                "the next part of the rule in pf order: in|out, log, quick, inet|inet6, proto, from, to, no state",
                &allowed,
            ),
            None => match self.peek().map(|t| &t.tok) {
                Some(Tok::Bang) => self.unsupported_negation(),
                _ => self.expected("end of line"),
            },
        }
    }

    fn unsupported_negation(&self) -> RuleError {
        let (line, col) = self.here();
        self.p.err(
            line,
            col,
            RuleErrorKind::Unsupported {
                what: "negation `!`".into(),
                hint: "list what to pass; everything else stays blocked".into(),
            },
        )
    }

    /// `any`, one item, or a `{ list }` of items (commas optional, as in pf).
    fn list<T>(
        &mut self,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, RuleError>,
    ) -> Result<Vec<T>, RuleError> {
        if !matches!(self.peek().map(|t| &t.tok), Some(Tok::LBrace)) {
            return Ok(vec![item(self)?]);
        }
        let (line, col) = self.here();
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek().map(|t| &t.tok) {
                Some(Tok::RBrace) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Comma) if !out.is_empty() => self.pos += 1,
                None => return Err(self.expected(&format!("{what} or \"}}\""))),
                _ => out.push(item(self)?),
            }
        }
        if out.is_empty() {
            return Err(self.p.err(line, col, RuleErrorKind::EmptyList));
        }
        Ok(out)
    }

    fn proto(&mut self) -> Result<Proto, RuleError> {
        let proto = match self.peek_word() {
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some("icmp") => Proto::Icmp,
            Some("icmp6" | "ipv6-icmp") => Proto::Icmp6,
            Some(_) => {
                return Err(self.unexpected_word("a protocol (tcp, udp, icmp, icmp6)", PROTOS))
            }
            None => return Err(self.expected("a protocol (tcp, udp, icmp, icmp6)")),
        };
        self.pos += 1;
        Ok(proto)
    }

    fn endpoint(&mut self, marks: &mut Marks, is_from: bool) -> Result<Endpoint, RuleError> {
        let mut side = Endpoint::default();
        if matches!(self.peek().map(|t| &t.tok), Some(Tok::Bang)) {
            return Err(self.unsupported_negation());
        }
        // pf allows the host to be left out before `port` (`from port 67`).
        if self.eat("any").is_none() && self.peek_word() != Some("port") {
            let at = self.here();
            side.addrs = self.list("an address", Self::address)?;
            if is_from {
                marks.from_addr = Some(at);
            } else {
                marks.to_addr = Some(at);
            }
        }
        if let Some(at) = self.eat("port") {
            marks.ports.push(at);
            side.ports = self.list("a port", Self::port)?;
        }
        Ok(side)
    }

    fn address(&mut self) -> Result<Cidr, RuleError> {
        let (line, col) = self.here();
        let text = match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::Bang) => return Err(self.unsupported_negation()),
            _ => return Err(self.expected("an address (IPv4, IPv6, CIDR, $macro or any)")),
        };
        self.pos += 1;
        parse_cidr(&text).map_err(|reason| {
            self.p.err(
                line,
                col,
                RuleErrorKind::BadAddress {
                    text: text.clone(),
                    reason,
                },
            )
        })
    }

    fn port(&mut self) -> Result<PortSpec, RuleError> {
        let (line, col) = self.here();
        let text = match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::Op(_) | Tok::Bang | Tok::Equals) => {
                return Err(self.p.err(
                    line,
                    col,
                    RuleErrorKind::Unsupported {
                        what: "port operators".into(),
                        hint: "write a port, a { list } or a range A:B".into(),
                    },
                ))
            }
            _ => return Err(self.expected("a port (22, ssh, 1000:2000 or a { list })")),
        };
        self.pos += 1;
        parse_port_spec(&text).map_err(|reason| {
            self.p
                .err(line, col, RuleErrorKind::BadPort { text, reason })
        })
    }

    /// Checks that need the whole rule.
    fn check(
        &self,
        rule: &ExceptionRule,
        marks: &Marks,
        start: (usize, usize),
    ) -> Result<(), RuleError> {
        let err = |(line, col): (usize, usize), kind| self.p.err(line, col, kind);
        if let Some(&at) = marks.ports.first() {
            if rule.protos.is_empty() {
                return Err(err(at, RuleErrorKind::PortWithoutProto));
            }
            if let Some(p) = rule.protos.iter().find(|p| !p.has_ports()) {
                return Err(err(
                    at,
                    RuleErrorKind::PortWithPortlessProto {
                        proto: proto_word(*p).into(),
                    },
                ));
            }
        }
        if let Some(declared) = rule.family {
            let (declared_word, actual_word, fix) = match declared {
                Family::Inet => ("inet", "IPv6", "an IPv4 address"),
                Family::Inet6 => ("inet6", "IPv4", "an IPv6 address"),
            };
            for (side, at) in [(&rule.from, marks.from_addr), (&rule.to, marks.to_addr)] {
                if !side.addrs.is_empty() && side.addrs.iter().all(|c| c.family() != declared) {
                    return Err(err(
                        at.unwrap_or(start),
                        RuleErrorKind::FamilyMismatch {
                            what: format!("address {}", side.addrs[0]),
                            actual: actual_word,
                            declared: declared_word,
                            fix,
                        },
                    ));
                }
            }
            if !rule.protos.is_empty()
                && rule
                    .protos
                    .iter()
                    .all(|p| p.family().is_some_and(|f| f != declared))
            {
                let fix = match declared {
                    Family::Inet => "icmp",
                    Family::Inet6 => "icmp6",
                };
                return Err(err(
                    marks.proto.unwrap_or(start),
                    RuleErrorKind::FamilyMismatch {
                        what: format!("proto {}", proto_word(rule.protos[0])),
                        actual: actual_word,
                        declared: declared_word,
                        fix,
                    },
                ));
            }
        }
        if rule.families().is_some_and(|f| f.is_empty()) {
            return Err(err(
                start,
                RuleErrorKind::NeverMatches {
                    reason: "its addresses and protocols share no address family (split it into an inet and an inet6 rule)".into(),
                },
            ));
        }
        Ok(())
    }
}

fn proto_word(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
        Proto::Icmp6 => "icmp6",
    }
}

fn tok_width(tok: &Tok) -> usize {
    match tok {
        Tok::Word(w) => w.chars().count(),
        Tok::Str(s) => s.chars().count() + 2,
        Tok::Macro(m) => m.chars().count() + 1,
        _ => 1,
    }
}

/// `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`. Host bits are cleared, as pf does.
pub(crate) fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        if addr_text.chars().any(|c| c.is_ascii_alphabetic()) && !addr_text.contains(':') {
            "host names are not resolved in exceptions (write an IP address or CIDR)".to_string()
        } else {
            "not an IPv4 or IPv6 address".to_string()
        }
    })?;
    let full = match addr {
        IpAddr::V4(_) => 32u8,
        IpAddr::V6(_) => 128u8,
    };
    let prefix = match prefix_text {
        None => full,
        Some(p) => {
            let n: u8 = p
                .parse()
                .map_err(|_| format!("prefix length \"{p}\" is not a number"))?;
            if n > full {
                return Err(format!("prefix length {n} is longer than {full}"));
            }
            n
        }
    };
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Ok(Cidr { addr, prefix })
}

fn parse_port(text: &str) -> Result<u16, String> {
    if let Some((_, port)) = SERVICES.iter().find(|(name, _)| *name == text) {
        return Ok(*port);
    }
    if !text.chars().all(|c| c.is_ascii_digit()) {
        let names: Vec<&str> = SERVICES.iter().map(|(n, _)| *n).collect();
        return Err(match suggest(text, &names) {
            Some(s) => format!("not a number or known service (did you mean \"{s}\"?)"),
            None => "not a number or known service name".into(),
        });
    }
    match text.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err("out of range (1-65535)".into()),
    }
}

fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    match text.split_once(':') {
        None => parse_port(text).map(PortSpec::One),
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if a > b {
                return Err(format!("range {a}:{b} is reversed (write {b}:{a})"));
            }
            Ok(if a == b {
                PortSpec::One(a)
            } else {
                PortSpec::Range(a, b)
            })
        }
    }
}

/// The closest candidate within two edits, for "did you mean".
fn suggest(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len().max(word.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    // Inputs are keywords and short words; a long word is never a typo of a keyword.
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
