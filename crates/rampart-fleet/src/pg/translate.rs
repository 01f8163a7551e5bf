//! The query language's AST ([`rampart_events::query::Expr`]) as an SQL
//! condition with bind parameters. Values only ever travel as parameters;
//! column names come from the fixed mapping in `columns.rs`.
//!
//! In memory a missing value equals nothing and differs from everything, and
//! `not` is plain negation. SQL's three-valued logic differs, so negations
//! are pushed down to the comparisons, each written so that NULL (a missing
//! value) yields the in-memory answer: with only AND and OR above them, a
//! NULL then acts exactly as false.

use rampart_events::field::{Field, FieldKind};
use rampart_events::query::{fold, Expr, Op, Query, Value};
use tokio_postgres::types::ToSql;

use super::columns::{column, pg_text, Column};

/// A bind parameter.
pub type Param = Box<dyn ToSql + Sync + Send>;

/// An SQL condition and its parameters (`$n` numbered from `first_param`).
pub struct Condition {
    pub sql: String,
    pub params: Vec<Param>,
    first_param: usize,
}

impl Condition {
    /// An empty condition (`TRUE`) whose placeholders start at `$first_param`.
    pub fn new(first_param: usize) -> Condition {
        Condition {
            sql: String::new(),
            params: Vec::new(),
            first_param,
        }
    }

    /// Add a parameter; returns its placeholder with an explicit type.
    pub fn bind(&mut self, value: Param, pg_type: &str) -> String {
        self.params.push(value);
        format!("${}::{pg_type}", self.first_param + self.params.len() - 1)
    }

    /// `AND` another clause.
    pub fn and(&mut self, clause: &str) {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
        self.sql.push_str(clause);
    }

    /// The condition, `TRUE` when nothing was added.
    pub fn text(&self) -> &str {
        if self.sql.is_empty() {
            "TRUE"
        } else {
            &self.sql
        }
    }

    /// The parameters as `query` takes them.
    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Add `query`'s condition to `cond`.
pub fn add_query(cond: &mut Condition, query: &Query) {
    if let Some(expr) = &query.expr {
        let clause = translate(cond, expr, false);
        cond.and(&format!("({clause})"));
    }
}

/// `expr` (negated when `negated`) as SQL.
fn translate(cond: &mut Condition, expr: &Expr, negated: bool) -> String {
    match expr {
        Expr::Not(inner) => translate(cond, inner, !negated),
        Expr::And(a, b) | Expr::Or(a, b) => {
            let a = translate(cond, a, negated);
            let b = translate(cond, b, negated);
            // De Morgan: a negated AND is an OR of the negations, and back.
            let is_and = matches!(expr, Expr::And(..)) != negated;
            let op = if is_and { "AND" } else { "OR" };
            format!("({a} {op} {b})")
        }
        Expr::Compare { field, op, value } => compare(cond, *field, *op, value, negated),
        Expr::In { field, values } => in_list(cond, *field, values, negated),
    }
}

fn constant(truth: bool) -> String {
    if truth { "TRUE" } else { "FALSE" }.to_string()
}

/// SQL for the comparison operators (`like` is handled apart).
fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Gt => ">",
        Op::Le => "<=",
        Op::Ge => ">=",
        Op::Like => "LIKE",
    }
}

/// The opposite comparison (on a present value, in a total order).
fn negate_op(op: Op) -> Op {
    match op {
        Op::Eq => Op::Ne,
        Op::Ne => Op::Eq,
        Op::Lt => Op::Ge,
        Op::Ge => Op::Lt,
        Op::Gt => Op::Le,
        Op::Le => Op::Gt,
        Op::Like => Op::Like,
    }
}

/// `lhs op rhs` for a value that may be missing (`lhs` NULL), with the
/// in-memory meaning: missing → only `!=` holds.
fn scalar(lhs: &str, op: Op, rhs: &str, negated: bool) -> String {
    let missing_matches = (op == Op::Ne) != negated;
    let present = match (op, negated) {
        (Op::Like, false) => format!("{lhs} LIKE {rhs}"),
        (Op::Like, true) => format!("{lhs} NOT LIKE {rhs}"),
        (op, false) => format!("{lhs} {} {rhs}", sql_op(op)),
        (op, true) => format!("{lhs} {} {rhs}", sql_op(negate_op(op))),
    };
    if missing_matches {
        format!("({lhs} IS NULL OR {present})")
    } else {
        present
    }
}

fn compare(cond: &mut Condition, field: Field, op: Op, value: &Value, negated: bool) -> String {
    match value {
        Value::Integer(n) => {
            let Column::Integer(col) = column(field) else {
                // A number never compares with a text field in memory:
                // the value counts as missing.
                return constant((op == Op::Ne) != negated);
            };
            if op == Op::Like {
                return constant(negated);
            }
            let p = cond.bind(Box::new(*n), "bigint");
            scalar(col, op, &p, negated)
        }
        Value::Text(t) => match column(field) {
            Column::Groups => groups(cond, op, t, negated),
            // The primary key's index serves an id given in its canonical form.
            Column::Id if matches!(op, Op::Eq | Op::Ne) && canonical_uuid(t).is_some() => {
                let id = canonical_uuid(t).unwrap_or_default();
                let p = cond.bind(Box::new(id), "uuid");
                let op = if (op == Op::Eq) != negated { "=" } else { "<>" };
                format!("id {op} {p}")
            }
            other => {
                let lhs = text_lhs(other);
                let rhs = if op == Op::Like {
                    cond.bind(Box::new(like_pattern(t)), "text")
                } else {
                    cond.bind(Box::new(pg_text(&fold(t)).into_owned()), "text")
                };
                scalar(&lhs, op, &rhs, negated)
            }
        },
    }
}

/// The id `text` names, when it is the canonical (lowercase hyphenated)
/// text of one: the only text equal to an event id's text.
fn canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    let lower = text.to_lowercase();
    uuid::Uuid::try_parse(&lower)
        .ok()
        .filter(|id| id.hyphenated().to_string() == lower)
}

/// The column as lowercased `C`-collated text (numbers in decimal, as in memory).
fn text_lhs(col: Column) -> String {
    match col {
        Column::Text(name) => name.to_string(),
        Column::Id => "(id::text COLLATE \"C\")".to_string(),
        Column::Integer(name) => format!("({name}::text COLLATE \"C\")"),
        Column::Groups => "group_text".to_string(),
    }
}

/// A set field: `like` on the joined text, every other operator means "has
/// this member" (`!=`: has not), members compared after `fold`, as in memory.
fn groups(cond: &mut Condition, op: Op, t: &str, negated: bool) -> String {
    if op == Op::Like {
        let p = cond.bind(Box::new(like_pattern(t)), "text");
        return scalar("group_text", Op::Like, &p, negated);
    }
    let p = cond.bind(Box::new(vec![pg_text(&fold(t)).into_owned()]), "text[]");
    let has = format!("group_members @> {p}");
    if (op == Op::Ne) != negated {
        format!("NOT ({has})")
    } else {
        has
    }
}

fn in_list(cond: &mut Condition, field: Field, values: &[Value], negated: bool) -> String {
    if values.is_empty() {
        return constant(negated);
    }
    let all_text = values.iter().all(|v| matches!(v, Value::Text(_)));
    let all_integer = values.iter().all(|v| matches!(v, Value::Integer(_)));
    let texts = || -> Vec<&str> {
        values
            .iter()
            .filter_map(|v| match v {
                Value::Text(t) => Some(t.as_str()),
                Value::Integer(_) => None,
            })
            .collect()
    };
    match column(field) {
        Column::Groups if all_text => {
            let members: Vec<String> = texts()
                .iter()
                .map(|t| pg_text(&fold(t)).into_owned())
                .collect();
            let p = cond.bind(Box::new(members), "text[]");
            let any = format!("group_members && {p}");
            if negated {
                format!("NOT ({any})")
            } else {
                any
            }
        }
        Column::Integer(col) if all_integer => {
            let numbers: Vec<i64> = values
                .iter()
                .filter_map(|v| match v {
                    Value::Integer(n) => Some(*n),
                    Value::Text(_) => None,
                })
                .collect();
            let p = cond.bind(Box::new(numbers), "bigint[]");
            any_of(col, &p, negated)
        }
        col @ (Column::Text(_) | Column::Id) if all_text && field.kind() == FieldKind::Text => {
            let lowered: Vec<String> = texts()
                .iter()
                .map(|t| pg_text(&fold(t)).into_owned())
                .collect();
            let p = cond.bind(Box::new(lowered), "text[]");
            any_of(&text_lhs(col), &p, negated)
        }
        // Mixed lists: one equality each.
        _ => {
            let parts: Vec<String> = values
                .iter()
                .map(|v| compare(cond, field, Op::Eq, v, negated))
                .collect();
            let joiner = if negated { " AND " } else { " OR " };
            format!("({})", parts.join(joiner))
        }
    }
}

fn any_of(lhs: &str, array: &str, negated: bool) -> String {
    if negated {
        format!("({lhs} IS NULL OR NOT ({lhs} = ANY({array})))")
    } else {
        format!("{lhs} = ANY({array})")
    }
}

/// The `LIKE` pattern for a query's `like` value: a glob (`*`, `?`) matched
/// whole, else a substring; lowercased like the column. `%`, `_` and `\` in
/// the value are escaped, so they match themselves.
pub fn like_pattern(value: &str) -> String {
    let lower = fold(value);
    let glob = lower.contains(['*', '?']);
    let mut out = String::with_capacity(lower.len() + 2);
    if !glob {
        out.push('%');
    }
    for c in pg_text(&lower).chars() {
        match c {
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '*' if glob => out.push('%'),
            '?' if glob => out.push('_'),
            c => out.push(c),
        }
    }
    if !glob {
        out.push('%');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_events::parse_query;

    fn sql(q: &str) -> (String, usize) {
        let mut c = Condition::new(1);
        add_query(&mut c, &parse_query(q).unwrap());
        (c.text().to_string(), c.params.len())
    }

    #[test]
    fn values_become_parameters_never_sql_text() {
        let (text, n) = sql("user = \"x' OR 1=1 --\" and host like '%_\\\\'");
        assert!(!text.contains("1=1"), "{text}");
        assert!(!text.contains('\''), "{text}");
        assert_eq!(n, 2);
        assert_eq!(text, "((user_name = $1::text AND host LIKE $2::text))");
    }

    #[test]
    fn negations_are_pushed_to_null_aware_comparisons() {
        let (text, _) = sql("not (user = a or status < 400)");
        assert_eq!(
            text,
            "(((user_name IS NULL OR user_name <> $1::text) AND (status IS NULL OR status >= $2::bigint)))"
        );
        let (text, _) = sql("not group = eng");
        assert_eq!(text, "(NOT (group_members @> $1::text[]))");
        let (text, _) = sql("category not in (a, b)");
        assert_eq!(
            text,
            "((category IS NULL OR NOT (category = ANY($1::text[]))))"
        );
    }

    #[test]
    fn like_values_are_escaped_and_globs_anchor() {
        assert_eq!(like_pattern("News"), "%news%");
        assert_eq!(like_pattern("*.Dropbox.com"), "%.dropbox.com");
        assert_eq!(like_pattern("a?c"), "a_c");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(like_pattern(""), "%%");
    }
}
