//! Compiling a query to an SQL `WHERE` fragment with bound parameters.
//!
//! Only column names chosen by [`Field::column`] and fixed operator text reach the
//! SQL string; every user-supplied value is a `?` parameter.

use super::parser::{Expr, Op, Query, Value};
use crate::field::{Field, FieldKind};

/// A bound parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Integer(i64),
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            SqlValue::Text(s) => s.to_sql(),
            SqlValue::Integer(n) => n.to_sql(),
        }
    }
}

/// A `WHERE` fragment and its parameters, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlFilter {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

/// Compile `query`; an empty query compiles to `1`.
pub fn compile(query: &Query) -> SqlFilter {
    let mut out = SqlFilter::default();
    match &query.expr {
        Some(e) => emit(e, &mut out),
        None => out.sql.push('1'),
    }
    out
}

fn emit(e: &Expr, out: &mut SqlFilter) {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            out.sql.push('(');
            emit(a, out);
            out.sql.push_str(if matches!(e, Expr::And(..)) {
                " AND "
            } else {
                " OR "
            });
            emit(b, out);
            out.sql.push(')');
        }
        Expr::Not(a) => {
            out.sql.push_str("(NOT ");
            emit(a, out);
            out.sql.push(')');
        }
        Expr::In { field, values } => {
            if field.kind() == FieldKind::Set {
                out.sql.push('(');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.sql.push_str(" OR ");
                    }
                    emit_compare(*field, Op::Eq, v, out);
                }
                out.sql.push(')');
                return;
            }
            out.sql.push_str(field.column());
            out.sql.push_str(" IN (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.sql.push_str(", ");
                }
                out.sql.push('?');
                out.params.push(param(v));
            }
            out.sql.push(')');
        }
        Expr::Compare { field, op, value } => emit_compare(*field, *op, value, out),
    }
}

fn param(v: &Value) -> SqlValue {
    match v {
        Value::Text(t) => SqlValue::Text(t.clone()),
        Value::Integer(n) => SqlValue::Integer(*n),
    }
}

fn emit_compare(field: Field, op: Op, value: &Value, out: &mut SqlFilter) {
    let col = field.column();
    if field.kind() == FieldKind::Set {
        // Groups are stored as ",a,b," so membership is a delimited substring test.
        let member = match value {
            Value::Text(t) => t.to_lowercase(),
            Value::Integer(n) => n.to_string(),
        };
        match op {
            Op::Like => {
                out.sql
                    .push_str(&format!("coalesce({col}, '') LIKE ? ESCAPE '\\'"));
                out.params.push(SqlValue::Text(like_pattern(&member)));
            }
            Op::Ne => {
                out.sql
                    .push_str(&format!("coalesce(instr(lower({col}), ?), 0) = 0"));
                out.params.push(SqlValue::Text(format!(",{member},")));
            }
            _ => {
                out.sql
                    .push_str(&format!("coalesce(instr(lower({col}), ?), 0) > 0"));
                out.params.push(SqlValue::Text(format!(",{member},")));
            }
        }
        return;
    }
    if field == Field::Type && op == Op::Eq {
        if let Value::Text(t) = value {
            if crate::event::EventType::parse(t) == Some(crate::event::EventType::Alert) {
                // The literal lets SQLite use the partial alerts index; the
                // text is a constant, never the user's input.
                out.sql.push_str(crate::store::ALERTS_CONDITION);
                return;
            }
        }
    }
    // IS / IS NOT treat a missing value as "not equal", like the in-memory matcher.
    let sym = match op {
        Op::Like => {
            let pattern = match value {
                Value::Text(t) => like_pattern(t),
                Value::Integer(n) => like_pattern(&n.to_string()),
            };
            out.sql
                .push_str(&format!("coalesce({col}, '') LIKE ? ESCAPE '\\'"));
            out.params.push(SqlValue::Text(pattern));
            return;
        }
        Op::Eq => "IS",
        Op::Ne => "IS NOT",
        Op::Lt => "<",
        Op::Gt => ">",
        Op::Le => "<=",
        Op::Ge => ">=",
    };
    out.sql.push_str(&format!("{col} {sym} ?"));
    out.params.push(param(value));
}

/// The SQL LIKE pattern for a `like` value: globs become anchored patterns,
/// anything else a substring search. SQL wildcards in the value are escaped.
fn like_pattern(v: &str) -> String {
    let is_glob = v.contains('*') || v.contains('?');
    let mut p = String::with_capacity(v.len() + 2);
    if !is_glob {
        p.push('%');
    }
    for c in v.chars() {
        match c {
            '%' | '_' | '\\' => {
                p.push('\\');
                p.push(c);
            }
            '*' => p.push('%'),
            '?' => p.push('_'),
            c => p.push(c),
        }
    }
    if !is_glob {
        p.push('%');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;

    #[test]
    fn values_become_parameters_never_sql_text() {
        let f = compile(&parse("user = \"x' OR 1=1 --\" and category in (a, b)").unwrap());
        assert_eq!(f.sql, "(user_name IS ? AND category IN (?, ?))");
        assert_eq!(
            f.params,
            vec![
                SqlValue::Text("x' OR 1=1 --".into()),
                SqlValue::Text("a".into()),
                SqlValue::Text("b".into())
            ]
        );
    }

    #[test]
    fn like_escapes_sql_wildcards_and_translates_globs() {
        assert_eq!(like_pattern("50%_off"), "%50\\%\\_off%");
        assert_eq!(like_pattern("*.dropbox.com"), "%.dropbox.com");
        assert_eq!(like_pattern("a?c"), "a_c");
    }

    #[test]
    fn group_membership_is_a_delimited_search() {
        let f = compile(&parse("group = Engineering").unwrap());
        assert_eq!(f.sql, "coalesce(instr(lower(groups), ?), 0) > 0");
        assert_eq!(f.params, vec![SqlValue::Text(",engineering,".into())]);
    }

    #[test]
    fn alerts_compile_to_the_partial_index_condition() {
        let f = compile(&parse("type = alert and user = bob").unwrap());
        assert_eq!(f.sql, "(type = 'alert' AND user_name IS ?)");
        assert_eq!(f.params, vec![SqlValue::Text("bob".into())]);
        let f = compile(&parse("type = http").unwrap());
        assert_eq!(f.sql, "type IS ?");
    }

    #[test]
    fn numbers_bind_as_integers() {
        let f = compile(&parse("status >= 400 and not dst_port = 443").unwrap());
        assert_eq!(f.sql, "(status >= ? AND (NOT dst_port IS ?))");
        assert_eq!(
            f.params,
            vec![SqlValue::Integer(400), SqlValue::Integer(443)]
        );
    }
}
