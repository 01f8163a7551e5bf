//! Recursive-descent parser: `or` binds loosest, then `and`, then `not`.

use super::lexer::{tokenize, Tok, Token};
use super::QueryError;
use crate::event::{EventType, Severity, TlsDecision, Verdict};
use crate::field::{Field, FieldKind};

/// Parentheses and `not` nest at most this deep, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;
/// Longest query accepted (characters).
pub const MAX_QUERY_LEN: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    /// Substring, or a glob when the value holds `*` or `?`.
    Like,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Integer(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare { field: Field, op: Op, value: Value },
    In { field: Field, values: Vec<Value> },
}

/// A parsed query; `None` matches every event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Query {
    pub expr: Option<Expr>,
}

impl Query {
    /// Whether `event` (an OCSF event, or a stored record) matches, evaluated in memory.
    pub fn matches<E: FieldValues + ?Sized>(&self, event: &E) -> bool {
        self.expr.as_ref().is_none_or(|e| e.matches(event))
    }
}

/// What a query reads of an event: each field's value as text or as a number.
pub trait FieldValues {
    fn text(&self, field: Field) -> Option<std::borrow::Cow<'_, str>>;
    fn integer(&self, field: Field) -> Option<i64>;
}

impl<T: FieldValues + ?Sized> FieldValues for &T {
    fn text(&self, field: Field) -> Option<std::borrow::Cow<'_, str>> {
        (**self).text(field)
    }
    fn integer(&self, field: Field) -> Option<i64> {
        (**self).integer(field)
    }
}

impl FieldValues for crate::Event {
    fn text(&self, field: Field) -> Option<std::borrow::Cow<'_, str>> {
        field.text(self).map(std::borrow::Cow::Owned)
    }
    fn integer(&self, field: Field) -> Option<i64> {
        field.integer(self)
    }
}

/// Parse a query. An empty or all-blank query matches everything.
pub fn parse(input: &str) -> Result<Query, QueryError> {
    if input.chars().count() > MAX_QUERY_LEN {
        return Err(QueryError::new(
            MAX_QUERY_LEN + 1,
            format!("query longer than {MAX_QUERY_LEN} characters"),
        ));
    }
    let tokens = tokenize(input)?;
    let end_column = input.chars().count() + 1;
    let mut p = Parser {
        tokens,
        pos: 0,
        end_column,
        depth: 0,
    };
    if p.tokens.is_empty() {
        return Ok(Query { expr: None });
    }
    let expr = p.or()?;
    if let Some(t) = p.peek() {
        let what = describe(&t.tok);
        return Err(QueryError::new(
            t.column,
            format!("unexpected {what}; expected `and`, `or` or the end of the query"),
        ));
    }
    Ok(Query { expr: Some(expr) })
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end_column: usize,
    depth: usize,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Quoted(q) => format!("quoted value \"{q}\""),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Symbol(s) => format!("`{s}`"),
    }
}

fn is_keyword(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end_column, |t| t.column)
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| is_keyword(&t.tok, kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::new(
                self.column(),
                format!("query nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        while self.eat_keyword("and") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat_keyword("not") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let column = self.column();
        match self.next() {
            Some(Token {
                tok: Tok::LParen, ..
            }) => {
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                match self.next() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => Ok(inner),
                    Some(t) => Err(QueryError::new(
                        t.column,
                        format!(
                            "expected `)` to close the `(` at column {column}, found {}",
                            describe(&t.tok)
                        ),
                    )),
                    None => Err(QueryError::new(
                        self.end_column,
                        format!("missing `)` to close the `(` at column {column}"),
                    )),
                }
            }
            Some(Token {
                tok: Tok::Word(name),
                column,
            }) => self.term(&name, column),
            Some(t) => Err(QueryError::new(
                t.column,
                format!("expected a field name, found {}", describe(&t.tok)),
            )),
            None => Err(QueryError::new(
                column,
                "expected a field name, found the end of the query",
            )),
        }
    }

    fn term(&mut self, name: &str, name_column: usize) -> Result<Expr, QueryError> {
        if name.eq_ignore_ascii_case("time") {
            return Err(QueryError::new(
                name_column,
                "time is not a query field: give the range separately (--since/--from/--to, or from/to/since in the API)",
            ));
        }
        let field = Field::parse(name).ok_or_else(|| {
            let hint = Field::suggest(name)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            QueryError::new(name_column, format!("unknown field `{name}`{hint}"))
        })?;
        let op_column = self.column();
        let op = match self.next() {
            Some(Token {
                tok: Tok::Symbol(s),
                ..
            }) => match s {
                "=" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                ">" => Op::Gt,
                "<=" => Op::Le,
                _ => Op::Ge,
            },
            Some(Token {
                tok: Tok::Word(w), ..
            }) => match w.to_ascii_lowercase().as_str() {
                "eq" => Op::Eq,
                "ne" => Op::Ne,
                "like" => Op::Like,
                "in" => return self.in_list(field),
                "not" if self.eat_keyword("in") => {
                    let list = self.in_list(field)?;
                    return Ok(Expr::Not(Box::new(list)));
                }
                _ => return Err(expected_operator(op_column, &format!("`{w}`"))),
            },
            Some(t) => return Err(expected_operator(t.column, &describe(&t.tok))),
            None => return Err(expected_operator(op_column, "the end of the query")),
        };
        if op == Op::Like && field.kind() == FieldKind::Integer {
            return Err(QueryError::new(
                op_column,
                format!("`like` needs a text field; `{}` is a number", field.name()),
            ));
        }
        let value = self.value(field)?;
        Ok(Expr::Compare { field, op, value })
    }

    fn in_list(&mut self, field: Field) -> Result<Expr, QueryError> {
        let open = self.column();
        match self.next() {
            Some(Token {
                tok: Tok::LParen, ..
            }) => {}
            _ => return Err(QueryError::new(open, "expected `(` after `in`")),
        }
        let mut values = Vec::new();
        loop {
            values.push(self.value(field)?);
            let column = self.column();
            match self.next() {
                Some(Token {
                    tok: Tok::Comma, ..
                }) => continue,
                Some(Token {
                    tok: Tok::RParen, ..
                }) => break,
                Some(t) => {
                    return Err(QueryError::new(
                        t.column,
                        format!(
                            "expected `,` or `)` in the list, found {}",
                            describe(&t.tok)
                        ),
                    ))
                }
                None => {
                    return Err(QueryError::new(
                        column,
                        format!("missing `)` to close the list opened at column {open}"),
                    ))
                }
            }
        }
        Ok(Expr::In { field, values })
    }

    fn value(&mut self, field: Field) -> Result<Value, QueryError> {
        let column = self.column();
        let text = match self.next() {
            Some(Token {
                tok: Tok::Word(w), ..
            }) => w,
            Some(Token {
                tok: Tok::Quoted(q),
                ..
            }) => q,
            Some(t) => {
                return Err(QueryError::new(
                    t.column,
                    format!(
                        "expected a value for `{}`, found {}",
                        field.name(),
                        describe(&t.tok)
                    ),
                ))
            }
            None => {
                return Err(QueryError::new(
                    column,
                    format!(
                        "expected a value for `{}`, found the end of the query",
                        field.name()
                    ),
                ))
            }
        };
        check_value(field, &text, column)
    }
}

fn expected_operator(column: usize, found: &str) -> QueryError {
    QueryError::new(
        column,
        format!("expected an operator (=, !=, eq, ne, like, in, <, >, <=, >=), found {found}"),
    )
}

/// Values of enumerated and numeric fields are checked here, so a typo is an
/// error at its column rather than a silent empty result.
fn check_value(field: Field, text: &str, column: usize) -> Result<Value, QueryError> {
    let allowed: Option<Vec<&str>> = match field {
        Field::Action => Some(Verdict::ALL.iter().map(|v| v.as_str()).collect()),
        Field::Type => Some(EventType::ALL.iter().map(|v| v.as_str()).collect()),
        Field::Tls => Some(TlsDecision::ALL.iter().map(|v| v.as_str()).collect()),
        Field::Bypass => Some(vec!["client", "gateway"]),
        Field::Severity => Some(vec!["informational", "low", "medium", "high", "critical"]),
        _ => None,
    };
    if let Some(allowed) = allowed {
        let lower = text.to_ascii_lowercase();
        let is_pattern = lower.contains('*') || lower.contains('?');
        if !is_pattern && !allowed.contains(&lower.as_str()) {
            return Err(QueryError::new(
                column,
                format!(
                    "unknown {} `{text}` (expected one of: {})",
                    field.name(),
                    allowed.join(", ")
                ),
            ));
        }
        if field == Field::Severity {
            debug_assert!(Severity::parse(&lower).is_some() || is_pattern);
        }
        return Ok(Value::Text(lower));
    }
    if field.kind() == FieldKind::Integer {
        return text.parse::<i64>().map(Value::Integer).map_err(|_| {
            QueryError::new(
                column,
                format!("`{}` takes a whole number, not `{text}`", field.name()),
            )
        });
    }
    Ok(Value::Text(text.to_string()))
}

impl Expr {
    /// In-memory evaluation: a missing value equals nothing and differs from everything.
    pub fn matches<E: FieldValues + ?Sized>(&self, e: &E) -> bool {
        match self {
            Expr::And(a, b) => a.matches(e) && b.matches(e),
            Expr::Or(a, b) => a.matches(e) || b.matches(e),
            Expr::Not(a) => !a.matches(e),
            Expr::In { field, values } => values.iter().any(|v| compare(*field, Op::Eq, v, e)),
            Expr::Compare { field, op, value } => compare(*field, *op, value, e),
        }
    }
}

fn compare<E: FieldValues + ?Sized>(field: Field, op: Op, value: &Value, e: &E) -> bool {
    match value {
        Value::Integer(n) => {
            let Some(actual) = e.integer(field) else {
                return op == Op::Ne;
            };
            match op {
                Op::Eq => actual == *n,
                Op::Ne => actual != *n,
                Op::Lt => actual < *n,
                Op::Gt => actual > *n,
                Op::Le => actual <= *n,
                Op::Ge => actual >= *n,
                Op::Like => false,
            }
        }
        Value::Text(t) => {
            let actual = e.text(field);
            if field.kind() == FieldKind::Set {
                let has = actual.as_deref().is_some_and(|s| {
                    let wanted = super::fold(t);
                    s.split(',').any(|m| super::fold(m) == wanted)
                });
                return match op {
                    Op::Ne => !has,
                    Op::Like => actual.is_some_and(|s| like(&s, t)),
                    _ => has,
                };
            }
            let Some(actual) = actual else {
                return op == Op::Ne;
            };
            let a = super::fold(&actual);
            let b = super::fold(t);
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Lt => a < b,
                Op::Gt => a > b,
                Op::Le => a <= b,
                Op::Ge => a >= b,
                Op::Like => like(&actual, t),
            }
        }
    }
}

/// `like` semantics: a glob (`*`, `?`) matched whole, else a substring; case-insensitive.
pub(crate) fn like(haystack: &str, pattern: &str) -> bool {
    let h: Vec<char> = super::fold(haystack).chars().collect();
    let p: Vec<char> = super::fold(pattern).chars().collect();
    if !p.iter().any(|c| *c == '*' || *c == '?') {
        let needle: String = p.iter().collect();
        let hay: String = h.iter().collect();
        return hay.contains(&needle);
    }
    glob(&h, &p)
}

fn glob(h: &[char], p: &[char]) -> bool {
    // Iterative wildcard match with single-star backtracking: linear in practice.
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < h.len() {
        if j < p.len() && (p[j] == '?' || p[j] == h[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '*' {
            star = Some(j);
            mark = i;
            j += 1;
        } else if let Some(s) = star {
            j = s + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while j < p.len() && p[j] == '*' {
        j += 1;
    }
    j == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> QueryError {
        parse(q).expect_err(q)
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let q = parse("user = a or user = b and not action = block").unwrap();
        let Some(Expr::Or(_, right)) = q.expr else {
            panic!("top level must be or")
        };
        let Expr::And(_, not) = *right else {
            panic!("and binds tighter than or")
        };
        assert!(matches!(*not, Expr::Not(_)));
    }

    #[test]
    fn every_operator_spelling_parses() {
        for q in [
            "user = a",
            "user == a",
            "user eq a",
            "user != a",
            "user ne a",
            "host like news",
            "status < 400",
            "status > 1",
            "status <= 2",
            "status >= 3",
            "category in (news, gambling)",
            "category not in (a)",
            "USER EQ a AND (host LIKE '*.x' OR NOT status = 200)",
        ] {
            parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    }

    #[test]
    fn empty_query_matches_everything() {
        assert_eq!(parse("   ").unwrap().expr, None);
    }

    #[test]
    fn unknown_field_points_at_it_and_suggests() {
        let e = err("user = a and catgory = news");
        assert_eq!(e.column, 14);
        assert!(e.message.contains("did you mean `category`"), "{e}");
    }

    #[test]
    fn time_in_the_query_points_to_the_range_options() {
        let e = err("user = a and time > 5");
        assert_eq!(e.column, 14);
        assert!(e.message.contains("--since"), "{e}");
    }

    #[test]
    fn missing_value_points_at_the_end() {
        let e = err("user =");
        assert_eq!(e.column, 7);
    }

    #[test]
    fn missing_operator_is_reported_at_the_word_after_the_field() {
        let e = err("user alice");
        assert_eq!(e.column, 6);
        assert!(e.message.contains("expected an operator"));
    }

    #[test]
    fn unknown_action_lists_the_allowed_values() {
        let e = err("action = blok");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("allow, block, alert, challenge"), "{e}");
    }

    #[test]
    fn non_numeric_status_is_rejected_at_the_value() {
        let e = err("status > abc");
        assert_eq!(e.column, 10);
    }

    #[test]
    fn like_on_a_number_is_rejected() {
        assert_eq!(err("status like 40").column, 8);
    }

    #[test]
    fn unbalanced_parentheses_are_reported() {
        assert_eq!(err("(user = a").column, 10);
        assert_eq!(err("user = a)").column, 9);
        assert_eq!(err("category in (a, b").column, 18);
        assert_eq!(err("category in a").column, 13);
    }

    #[test]
    fn dangling_boolean_operator_is_reported() {
        assert_eq!(err("user = a and").column, 13);
        assert_eq!(err("and user = a").column, 1);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let q = format!("{}user = a{}", "(".repeat(3_000), ")".repeat(3_000));
        assert!(err(&q).message.contains("nests deeper"));
        let q = format!("{}user = a", "not ".repeat(1_000));
        assert!(err(&q).message.contains("nests deeper"));
    }

    #[test]
    fn render_puts_a_caret_under_the_column() {
        let q = "user = a and bogus = 1";
        let text = err(q).render(q);
        assert!(text.ends_with("\n               ^"), "{text:?}");
    }

    #[test]
    fn like_is_substring_or_glob_and_case_insensitive() {
        assert!(like("www.News.example", "news"));
        assert!(like("api.dropbox.com", "*.DROPBOX.com"));
        assert!(!like("dropbox.com.evil", "*.dropbox.com"));
        assert!(like("abc", "a?c"));
        assert!(like("", "*"));
    }

    #[test]
    fn random_token_soup_never_panics_and_errors_point_inside_the_input() {
        // A stable-toolchain smoke test of what fuzz/fuzz_targets/query.rs checks at depth.
        let atoms = [
            "user", "action", "status", "group", "=", "!=", "==", "<", ">=", "like", "in", "not",
            "and", "or", "(", ")", ",", "\"", "'", "block", "42", "*.x", "é", " ", "!", "eq",
        ];
        let mut summary = crate::flow::FlowSummary::new(crate::event::new_flow_id(), 1);
        summary.user = Some("Alice".into());
        summary.groups = vec!["eng".into(), "Ops".into()];
        summary.status = Some(403);
        summary.verdict = crate::event::Verdict::Block;
        let flow = crate::flow::FlowEvent::new(crate::flow::FlowKind::Http, summary);
        let event = flow.event();
        let record = crate::record::Record::Flow(flow);
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut q = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            for k in 0..len {
                let pick = (seed.rotate_left(k as u32 * 5) % atoms.len() as u64) as usize;
                q.push_str(atoms[pick]);
                if pick.is_multiple_of(3) {
                    q.push(' ');
                }
            }
            match parse(&q) {
                // Any parsed query evaluates on an event, and on the stored
                // flow record it came from (the store's path) to the same answer.
                Ok(parsed) => {
                    assert_eq!(parsed.matches(&event), parsed.matches(&record), "{q}");
                }
                Err(e) => assert!(
                    e.column >= 1 && e.column <= q.chars().count() + 1,
                    "{q:?}: {e}"
                ),
            }
        }
    }
}
