//! Which YARA rules can be decided block by block while a body streams, and
//! which need the whole body.
//!
//! A rule streams when its verdict depends only on *which* of its strings
//! occur somewhere in the body:
//! - every string is a text string (with `ascii`, `wide`, `nocase`, `xor`,
//!   `private`) or a hex string without an unbounded jump (`[4-]`): each
//!   occurrence is then at most `longest` bytes long and lies whole inside
//!   one of the overlapping blocks the stream scans;
//! - its condition combines only string presence (`$a`, `any of them`,
//!   `2 of ($a*)`, `none of`, `50% of`), `and`/`or`/`not`, `true`/`false`,
//!   and other streaming rules (by name or `any of (rule*)`).
//!
//! Anything else needs the whole body: `filesize`, match counts, offsets and
//! lengths (`#a`, `@a`, `!a`, `at`, `in`), integer reads (`uint32(0)`),
//! modules (`pe.…`), regular expressions (their matches have no bounded
//! length), `fullword` (it looks at the bytes around a match) and `base64`.
//!
//! The analysis reads the same files the compiler read (following
//! `include` the same way) with boreal's own parser.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use boreal_parser::expression::{Expression, ExpressionKind, ForIterator, ForSelection};
use boreal_parser::file::YaraFileComponent;
use boreal_parser::hex_string::{Mask, Token};
use boreal_parser::rule::{Rule, VariableDeclaration, VariableDeclarationValue};

/// Longest string occurrence a streaming rule may have: the overlap kept
/// between blocks, and the most match data kept per string.
pub(crate) const MAX_STREAMED_STRING: usize = 4096;

/// Deepest `include` chain followed (the compiler accepted the files, so
/// this only guards the analysis itself).
const MAX_INCLUDE_DEPTH: usize = 32;

/// The outcome of the analysis of one rule set.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Rules decided from presence while the body streams, in file order.
    pub(crate) streamed: Vec<String>,
    /// Rules that need the whole body, with the first reason found.
    pub(crate) whole_file: Vec<(String, String)>,
    /// One rule per string of every streaming rule (`rule s<i> { strings:
    /// $s = … condition: $s }`): scanned over each block, it tells which
    /// strings occur, and with what bytes.
    pub(crate) presence_source: String,
    /// Number of rules in `presence_source`.
    pub(crate) presence_rules: usize,
    /// Longest possible occurrence of any streamed string.
    pub(crate) longest: usize,
    /// The rules that need the whole body, with every rule they depend on,
    /// every global rule and the files' imports, as YARA source for a
    /// scanner of their own (empty when every rule streams). `None` when it
    /// could not be cut from the files: the whole set is then scanned whole.
    pub(crate) whole_file_source: Option<String>,
}

/// A rule with its source text (from the end of what came before it to
/// its closing brace).
struct SourcedRule {
    rule: Rule,
    source: Option<String>,
}

/// Everything read from the rule files.
#[derive(Default)]
struct RuleFiles {
    rules: Vec<SourcedRule>,
    imports: Vec<String>,
}

/// Analyses the rule files (already compiled successfully by boreal).
pub(crate) fn analyse(files: &[PathBuf]) -> Plan {
    let mut rules = RuleFiles::default();
    for path in files {
        if let Err(reason) = collect_rules(path, 0, &mut rules) {
            // Cannot happen for files boreal compiled; if it does, nothing
            // streams and the whole-body scan decides, as before.
            return Plan {
                whole_file: vec![("*".to_owned(), reason)],
                ..Plan::default()
            };
        }
    }
    classify(&rules)
}

/// Analyses rules given as source text (tests).
#[cfg(test)]
pub(crate) fn analyse_source(source: &str) -> Plan {
    let mut rules = RuleFiles::default();
    match add_source(source, None, 0, &mut rules) {
        Ok(()) => classify(&rules),
        Err(e) => Plan {
            whole_file: vec![("*".to_owned(), e)],
            ..Plan::default()
        },
    }
}

fn collect_rules(path: &Path, depth: usize, out: &mut RuleFiles) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!("{}: includes nested too deep", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    add_source(&text, Some(path), depth, out)
}

fn add_source(
    text: &str,
    path: Option<&Path>,
    depth: usize,
    out: &mut RuleFiles,
) -> Result<(), String> {
    let name = || path.map_or_else(|| "rules".to_owned(), |p| p.display().to_string());
    let file = boreal_parser::parse(text).map_err(|_| format!("{}: does not parse", name()))?;
    // Where the text of the next rule starts: only blanks, comments and the
    // rule's own `private`/`global` lie between one component and the next.
    let mut from = 0;
    for component in file.components {
        match component {
            YaraFileComponent::Rule(rule) => {
                let end = rule_end(text, rule.condition.span.end);
                let source = end.and_then(|end| text.get(from..end)).map(str::to_owned);
                from = end.unwrap_or(text.len());
                out.rules.push(SourcedRule {
                    rule: *rule,
                    source,
                });
            }
            // Resolved as boreal's compiler does: relative to the including file.
            YaraFileComponent::Include(include) => {
                from = include.span.end;
                let Some(path) = path else {
                    return Err("an include outside a file".to_owned());
                };
                let target = path.parent().unwrap_or(path).join(&include.path);
                let target = target
                    .canonicalize()
                    .map_err(|e| format!("{}: {e}", target.display()))?;
                collect_rules(&target, depth + 1, out)?;
            }
            YaraFileComponent::Import(import) => {
                from = import.span.end;
                if !out.imports.contains(&import.name) {
                    out.imports.push(import.name);
                }
            }
        }
    }
    Ok(())
}

/// The offset just past the `}` that closes a rule whose condition ends at
/// `condition_end` (only blanks and comments may come between).
fn rule_end(text: &str, condition_end: usize) -> Option<usize> {
    let mut at = condition_end;
    loop {
        let rest = text.get(at..)?;
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if trimmed.starts_with('}') {
            return Some(at + 1);
        } else if let Some(comment) = trimmed.strip_prefix("//") {
            at += 2 + comment.find('\n').unwrap_or(comment.len());
        } else if let Some(comment) = trimmed.strip_prefix("/*") {
            at += 2 + comment.find("*/")? + 2;
        } else {
            return None;
        }
    }
}

fn classify(files: &RuleFiles) -> Plan {
    let rules: Vec<&Rule> = files.rules.iter().map(|r| &r.rule).collect();
    let mut plan = Plan::default();
    // Rule name → whether it streams; rules may only name earlier rules.
    let mut streams: HashMap<&str, bool> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for rule in rules.iter().copied() {
        let verdict = rule_streams(rule, &streams, &order);
        streams.insert(&rule.name, verdict.is_ok());
        order.push(&rule.name);
        match verdict {
            Ok(longest) => {
                plan.longest = plan.longest.max(longest);
                plan.streamed.push(rule.name.clone());
                for var in &rule.variables {
                    let index = plan.presence_rules;
                    plan.presence_rules += 1;
                    // `rule_streams` accepted every string: it prints.
                    let _ = writeln!(
                        plan.presence_source,
                        "rule s{index} {{ strings: $s = {} condition: $s }}",
                        declaration(var)
                    );
                }
            }
            Err(reason) => plan.whole_file.push((rule.name.clone(), reason)),
        }
    }
    // A global rule gates every rule: one that needs the whole body makes
    // the whole set need it.
    let needs_whole = |plan: &Plan, name: &str| plan.whole_file.iter().any(|(n, _)| n == name);
    if let Some(global) = rules
        .iter()
        .find(|r| r.is_global && needs_whole(&plan, &r.name))
    {
        let reason = format!("global rule {} needs the whole body", global.name);
        for name in std::mem::take(&mut plan.streamed) {
            plan.whole_file.push((name, reason.clone()));
        }
        plan.presence_source.clear();
        plan.presence_rules = 0;
        plan.longest = 0;
    }
    plan.whole_file_source = whole_file_source(files, &plan);
    plan
}

/// The source of the rules that need the whole body, the rules they depend
/// on (transitively) and every global rule, in file order, after the imports.
fn whole_file_source(files: &RuleFiles, plan: &Plan) -> Option<String> {
    if plan.whole_file.is_empty() {
        return Some(String::new());
    }
    let mut wanted: Vec<bool> = files
        .rules
        .iter()
        .map(|r| r.rule.is_global || plan.whole_file.iter().any(|(n, _)| *n == r.rule.name))
        .collect();
    // A rule only names earlier rules: one backwards pass takes every
    // dependency, however deep.
    for i in (0..files.rules.len()).rev() {
        if !wanted[i] {
            continue;
        }
        let mut names = Vec::new();
        referenced_rules(&files.rules[i].rule.condition, &mut names);
        for (j, earlier) in files.rules[..i].iter().enumerate() {
            let named = names.iter().any(|(name, wildcard)| {
                if *wildcard {
                    earlier.rule.name.starts_with(name.as_str())
                } else {
                    earlier.rule.name == *name
                }
            });
            if named {
                wanted[j] = true;
            }
        }
    }
    let mut source = String::new();
    for import in &files.imports {
        let _ = writeln!(source, "import \"{import}\"");
    }
    for (rule, wanted) in files.rules.iter().zip(wanted) {
        if wanted {
            source.push_str(rule.source.as_deref()?);
            source.push('\n');
        }
    }
    Some(source)
}

/// Names (and `name*` wildcards) a condition may use to refer to rules:
/// every identifier and every rule set element.
fn referenced_rules(e: &Expression, out: &mut Vec<(String, bool)>) {
    visit(e, &mut |e| match &e.expr {
        ExpressionKind::Identifier(id) => out.push((id.name.clone(), false)),
        ExpressionKind::ForRules { set, .. } => {
            for element in &set.elements {
                out.push((element.name.clone(), element.is_wildcard));
            }
        }
        _ => {}
    });
}

/// Calls `f` on `e` and on every expression inside it.
fn visit(e: &Expression, f: &mut dyn FnMut(&Expression)) {
    f(e);
    let mut children: Vec<&Expression> = Vec::new();
    match &e.expr {
        ExpressionKind::ReadInteger { addr, .. } => children.push(addr),
        ExpressionKind::CountInRange { from, to, .. }
        | ExpressionKind::VariableIn { from, to, .. }
        | ExpressionKind::ForIn { from, to, .. } => children.extend([&**from, &**to]),
        ExpressionKind::Offset {
            occurence_number, ..
        }
        | ExpressionKind::Length {
            occurence_number, ..
        } => children.push(occurence_number),
        ExpressionKind::Neg(a)
        | ExpressionKind::BitwiseNot(a)
        | ExpressionKind::Not(a)
        | ExpressionKind::Defined(a)
        | ExpressionKind::Matches(a, _) => children.push(a),
        ExpressionKind::Add(a, b)
        | ExpressionKind::Sub(a, b)
        | ExpressionKind::Mul(a, b)
        | ExpressionKind::Div(a, b)
        | ExpressionKind::Mod(a, b)
        | ExpressionKind::BitwiseXor(a, b)
        | ExpressionKind::BitwiseAnd(a, b)
        | ExpressionKind::BitwiseOr(a, b)
        | ExpressionKind::ShiftLeft(a, b)
        | ExpressionKind::ShiftRight(a, b)
        | ExpressionKind::Eq(a, b)
        | ExpressionKind::NotEq(a, b)
        | ExpressionKind::IEquals(a, b)
        | ExpressionKind::Cmp {
            left: a, right: b, ..
        }
        | ExpressionKind::Contains {
            haystack: a,
            needle: b,
            ..
        }
        | ExpressionKind::StartsWith {
            expr: a, prefix: b, ..
        }
        | ExpressionKind::EndsWith {
            expr: a, suffix: b, ..
        } => children.extend([&**a, &**b]),
        ExpressionKind::And(all) | ExpressionKind::Or(all) => children.extend(all.iter()),
        ExpressionKind::VariableAt { offset, .. } | ExpressionKind::ForAt { offset, .. } => {
            children.push(offset)
        }
        ExpressionKind::For {
            selection, body, ..
        } => {
            if let ForSelection::Expr { expr, .. } = selection {
                children.push(expr);
            }
            children.extend(body.as_deref());
        }
        ExpressionKind::ForIdentifiers { body, iterator, .. } => {
            children.push(body);
            match iterator {
                ForIterator::Range { from, to } => children.extend([&**from, &**to]),
                ForIterator::List(list) => children.extend(list.iter()),
                ForIterator::Identifier(_) => {}
            }
        }
        _ => {}
    }
    for child in children {
        visit(child, f);
    }
}

/// `Ok(longest string occurrence)` when the rule streams, else why not.
fn rule_streams(
    rule: &Rule,
    streams: &HashMap<&str, bool>,
    order: &[&str],
) -> Result<usize, String> {
    let mut longest = 0;
    for var in &rule.variables {
        let len = string_len(var).map_err(|why| format!("string ${}: {why}", var.name))?;
        if len > MAX_STREAMED_STRING {
            return Err(format!(
                "string ${} may be {len} bytes long (streaming takes at most {MAX_STREAMED_STRING})",
                var.name
            ));
        }
        longest = longest.max(len);
    }
    presence_only(&rule.condition, streams, order)?;
    Ok(longest)
}

/// The longest occurrence of a string, or why it is not bounded or depends
/// on the bytes around it.
fn string_len(var: &VariableDeclaration) -> Result<usize, &'static str> {
    let m = &var.modifiers;
    if m.fullword {
        return Err("fullword looks at the bytes around a match");
    }
    if m.base64.is_some() {
        return Err("base64 modifier");
    }
    match &var.value {
        VariableDeclarationValue::Bytes(bytes) => Ok(bytes.len() * if m.wide { 2 } else { 1 }),
        VariableDeclarationValue::HexString(tokens) => {
            hex_len(tokens).ok_or("hex string with an unbounded jump")
        }
        VariableDeclarationValue::Regex(_) => Err("regular expression (unbounded match length)"),
    }
}

fn hex_len(tokens: &[Token]) -> Option<usize> {
    let mut len = 0usize;
    for token in tokens {
        len = len.checked_add(match token {
            Token::Byte(_)
            | Token::NotByte(_)
            | Token::MaskedByte(..)
            | Token::NotMaskedByte(..) => 1,
            Token::Jump(jump) => usize::try_from(jump.to?).ok()?,
            Token::Alternatives(alts) => {
                let mut most = 0;
                for alt in alts {
                    most = most.max(hex_len(alt)?);
                }
                most
            }
        })?;
    }
    Some(len)
}

/// Whether a condition depends only on which strings (and which earlier
/// streaming rules) matched.
fn presence_only(
    e: &Expression,
    streams: &HashMap<&str, bool>,
    order: &[&str],
) -> Result<(), String> {
    let needs = |what: &str| Err(format!("its condition uses {what}"));
    match &e.expr {
        ExpressionKind::Boolean(_) => Ok(()),
        ExpressionKind::And(all) | ExpressionKind::Or(all) => all
            .iter()
            .try_for_each(|e| presence_only(e, streams, order)),
        ExpressionKind::Not(inner) => presence_only(inner, streams, order),
        // `$` alone only exists in a `for` body, which is not accepted.
        ExpressionKind::Variable(name) if !name.is_empty() => Ok(()),
        ExpressionKind::For {
            selection,
            body: None,
            ..
        } => constant_selection(selection),
        ExpressionKind::ForRules { selection, set } => {
            constant_selection(selection)?;
            for element in &set.elements {
                let named: Vec<&str> = if element.is_wildcard {
                    order
                        .iter()
                        .copied()
                        .filter(|n| n.starts_with(&element.name))
                        .collect()
                } else {
                    vec![element.name.as_str()]
                };
                for name in named {
                    rule_reference(name, streams)?;
                }
            }
            Ok(())
        }
        ExpressionKind::Identifier(id)
            if id.operations.is_empty() && streams.contains_key(id.name.as_str()) =>
        {
            rule_reference(&id.name, streams)
        }
        ExpressionKind::Identifier(id) => needs(&format!("the module or symbol `{}`", id.name)),
        ExpressionKind::Filesize => needs("filesize"),
        ExpressionKind::Entrypoint => needs("entrypoint"),
        ExpressionKind::ReadInteger { .. } => needs("an integer read at an offset"),
        ExpressionKind::Count(_) | ExpressionKind::CountInRange { .. } => {
            needs("a match count (#)")
        }
        ExpressionKind::Offset { .. } => needs("a match offset (@)"),
        ExpressionKind::Length { .. } => needs("a match length (!)"),
        ExpressionKind::VariableAt { .. } | ExpressionKind::ForAt { .. } => {
            needs("a match position (at)")
        }
        ExpressionKind::VariableIn { .. } | ExpressionKind::ForIn { .. } => {
            needs("a match range (in)")
        }
        ExpressionKind::For { .. } | ExpressionKind::ForIdentifiers { .. } => needs("a for loop"),
        // Comparisons and arithmetic: name what they compare when it is one
        // of the above (`filesize > 10` → filesize).
        ExpressionKind::Cmp { left, right, .. }
        | ExpressionKind::Eq(left, right)
        | ExpressionKind::NotEq(left, right)
        | ExpressionKind::Add(left, right)
        | ExpressionKind::Sub(left, right)
        | ExpressionKind::Mul(left, right)
        | ExpressionKind::Div(left, right)
        | ExpressionKind::Mod(left, right) => {
            for operand in [left, right] {
                if let Err(why) = presence_only(operand, streams, order) {
                    if why != GENERIC {
                        return Err(why);
                    }
                }
            }
            Err(GENERIC.to_owned())
        }
        _ => Err(GENERIC.to_owned()),
    }
}

const GENERIC: &str = "its condition uses values other than string presence";

fn constant_selection(selection: &ForSelection) -> Result<(), String> {
    match selection {
        ForSelection::Any | ForSelection::All | ForSelection::None => Ok(()),
        ForSelection::Expr { expr, .. } if matches!(expr.expr, ExpressionKind::Integer(_)) => {
            Ok(())
        }
        ForSelection::Expr { .. } => Err("its condition uses a computed count in `of`".to_owned()),
    }
}

fn rule_reference(name: &str, streams: &HashMap<&str, bool>) -> Result<(), String> {
    match streams.get(name) {
        Some(true) => Ok(()),
        _ => Err(format!(
            "it depends on rule {name}, which needs the whole body"
        )),
    }
}

/// A string declaration's value and modifiers as YARA source, without
/// `private` (the presence scan must see every string's matches).
fn declaration(var: &VariableDeclaration) -> String {
    let mut out = String::new();
    match &var.value {
        VariableDeclarationValue::Bytes(bytes) => {
            out.push('"');
            for &b in bytes {
                if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            out.push('"');
            let m = &var.modifiers;
            if m.wide {
                out.push_str(" wide");
            }
            if m.ascii {
                out.push_str(" ascii");
            }
            if m.nocase {
                out.push_str(" nocase");
            }
            if let Some((from, to)) = m.xor {
                let _ = write!(out, " xor({from}-{to})");
            }
        }
        VariableDeclarationValue::HexString(tokens) => {
            out.push('{');
            hex_tokens(tokens, &mut out);
            out.push_str(" }");
        }
        // Not streamed (see `string_len`): never printed.
        VariableDeclarationValue::Regex(_) => {}
    }
    out
}

fn hex_tokens(tokens: &[Token], out: &mut String) {
    for token in tokens {
        let _ = match token {
            Token::Byte(b) => write!(out, " {b:02X}"),
            Token::NotByte(b) => write!(out, " ~{b:02X}"),
            Token::MaskedByte(v, mask) => masked(out, "", *v, mask),
            Token::NotMaskedByte(v, mask) => masked(out, "~", *v, mask),
            Token::Jump(jump) => match jump.to {
                Some(to) => write!(out, " [{}-{to}]", jump.from),
                None => write!(out, " [{}-]", jump.from),
            },
            Token::Alternatives(alts) => {
                out.push_str(" (");
                for (i, alt) in alts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" |");
                    }
                    hex_tokens(alt, out);
                }
                out.push_str(" )");
                Ok(())
            }
        };
    }
}

fn masked(out: &mut String, not: &str, v: u8, mask: &Mask) -> std::fmt::Result {
    match mask {
        Mask::Left => write!(out, " {not}?{v:X}"),
        Mask::Right => write!(out, " {not}{v:X}?"),
        Mask::All => write!(out, " {not}??"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_rules_stream_and_the_rest_needs_the_whole_body() {
        let plan = analyse_source(
            r#"
            rule text { strings: $a = "abc" wide ascii nocase $b = { 41 [2-4] ( 42 | 43 44 ) ?5 } condition: $a and not $b }
            rule counts { strings: $a = "abc" condition: #a > 2 }
            rule size { condition: filesize < 10 }
            rule uses_text { condition: text or any of (te*) }
            rule uses_size { condition: size }
            rule regex { strings: $r = /ab+c/ condition: $r }
            rule open_jump { strings: $h = { 41 [2-] 42 } condition: $h }
            rule word { strings: $w = "abc" fullword condition: $w }
            rule some { strings: $a = "x" $b = "y" $c = "z" condition: 2 of them }
            "#,
        );
        assert_eq!(plan.streamed, ["text", "uses_text", "some"]);
        let whole: Vec<&str> = plan.whole_file.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            whole,
            ["counts", "size", "uses_size", "regex", "open_jump", "word"]
        );
        assert!(
            plan.whole_file[0].1.contains("match count"),
            "{:?}",
            plan.whole_file
        );
        assert!(
            plan.whole_file[2].1.contains("rule size"),
            "{:?}",
            plan.whole_file
        );
        // "abc" wide = 6 bytes; the hex string: 1 + 4 + 2 + 1 = 8.
        assert_eq!(plan.longest, 8);
        assert_eq!(plan.presence_rules, 5);
        assert!(plan.presence_source.contains("\"abc\" wide ascii nocase"));
        assert!(
            plan.presence_source
                .contains("{ 41 [2-4] ( 42 | 43 44 ) ?5 }"),
            "{}",
            plan.presence_source
        );
    }
}
