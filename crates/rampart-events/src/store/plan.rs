//! Which events of a block a query can match, from the block's postings.
//!
//! A plan is derived from the query's equality tests on indexed fields. It is
//! a superset: `user = alice and status >= 400` plans `user = alice`, and
//! the whole query then runs on the planned events only. A query with no
//! such test (e.g. only `like` or `not`) has no plan and is answered by
//! walking the segments of its time range instead (`scan.rs`).

use super::postings::{self, PostingsError};
use super::schema::INDEXED;
use crate::field::Field;
use crate::query::{Expr, Op, Query, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexPlan {
    /// Events whose `field` equals one of `keys` (normalised with [`postings::key`]).
    Lookup {
        field: Field,
        keys: Vec<String>,
    },
    And(Box<IndexPlan>, Box<IndexPlan>),
    Or(Box<IndexPlan>, Box<IndexPlan>),
}

/// The plan for `query`, when postings can narrow it.
pub fn plan(query: &Query) -> Option<IndexPlan> {
    query.expr.as_ref().and_then(plan_expr)
}

fn plan_expr(e: &Expr) -> Option<IndexPlan> {
    match e {
        Expr::Compare {
            field,
            op: Op::Eq,
            value,
        } if INDEXED.contains(field) => Some(IndexPlan::Lookup {
            field: *field,
            keys: vec![key_of(value)],
        }),
        Expr::In { field, values } if INDEXED.contains(field) => Some(IndexPlan::Lookup {
            field: *field,
            keys: values.iter().map(key_of).collect(),
        }),
        Expr::And(a, b) => match (plan_expr(a), plan_expr(b)) {
            (Some(a), Some(b)) => Some(IndexPlan::And(Box::new(a), Box::new(b))),
            (Some(p), None) | (None, Some(p)) => Some(p),
            (None, None) => None,
        },
        // A union is only narrower than "everything" when both sides are.
        Expr::Or(a, b) => Some(IndexPlan::Or(
            Box::new(plan_expr(a)?),
            Box::new(plan_expr(b)?),
        )),
        _ => None,
    }
}

/// A number given for a text field is looked up by its text, so `host = 1` looks up "1".
fn key_of(v: &Value) -> String {
    match v {
        Value::Text(t) => postings::key(t),
        Value::Integer(n) => n.to_string(),
    }
}

impl IndexPlan {
    /// Offsets within a block (ascending) of the events that may match.
    /// `blob(field)` is that block's postings for `field` (`None`: no event of
    /// the block has a value for it).
    pub fn offsets<E: From<PostingsError>>(
        &self,
        blob: &mut dyn FnMut(Field) -> Result<Option<std::rc::Rc<Vec<u8>>>, E>,
    ) -> Result<Vec<u32>, E> {
        match self {
            IndexPlan::Lookup { field, keys } => {
                let Some(data) = blob(*field)? else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for k in keys {
                    out = union(&out, &postings::lookup(&data, k)?);
                }
                Ok(out)
            }
            IndexPlan::And(a, b) => {
                let left = a.offsets(blob)?;
                if left.is_empty() {
                    return Ok(left);
                }
                Ok(intersect(&left, &b.offsets(blob)?))
            }
            IndexPlan::Or(a, b) => Ok(union(&a.offsets(blob)?, &b.offsets(blob)?)),
        }
    }
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;

    fn lookup(field: Field, keys: &[&str]) -> IndexPlan {
        IndexPlan::Lookup {
            field,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn equality_on_indexed_fields_plans_and_the_rest_is_left_to_the_filter() {
        let p = plan(&parse("user = Alice and status >= 400").unwrap());
        assert_eq!(p, Some(lookup(Field::User, &["alice"])));
        let p = plan(&parse("category in (News, gambling) and action = block").unwrap());
        assert_eq!(
            p,
            Some(IndexPlan::And(
                Box::new(lookup(Field::Category, &["news", "gambling"])),
                Box::new(lookup(Field::Action, &["block"]))
            ))
        );
        // Not indexed, negated, substring, or a union with an unplanned side: no plan.
        for q in [
            "status = 403",
            "not user = alice",
            "host like dropbox",
            "user = alice or url like x",
            "",
        ] {
            assert_eq!(plan(&parse(q).unwrap()), None, "{q}");
        }
        assert_eq!(
            plan(&parse("user = a or device = d").unwrap()),
            Some(IndexPlan::Or(
                Box::new(lookup(Field::User, &["a"])),
                Box::new(lookup(Field::Device, &["d"]))
            ))
        );
    }

    #[test]
    fn offsets_combine_postings() {
        let mut users = postings::PostingsBuilder::default();
        let mut actions = postings::PostingsBuilder::default();
        for i in 0..10u32 {
            users.add(if i % 2 == 0 { "alice" } else { "bob" }, i);
            actions.add(if i % 3 == 0 { "block" } else { "allow" }, i);
        }
        let users = std::rc::Rc::new(users.encode());
        let actions = std::rc::Rc::new(actions.encode());
        let mut blob = |f: Field| -> Result<_, PostingsError> {
            Ok(match f {
                Field::User => Some(users.clone()),
                Field::Action => Some(actions.clone()),
                _ => None,
            })
        };
        let p = plan(&parse("user = alice and action = block").unwrap()).unwrap();
        assert_eq!(p.offsets(&mut blob).unwrap(), vec![0, 6]);
        let p = plan(&parse("user = alice or action = block").unwrap()).unwrap();
        assert_eq!(p.offsets(&mut blob).unwrap(), vec![0, 2, 3, 4, 6, 8, 9]);
        let p = plan(&parse("user in (alice, bob)").unwrap()).unwrap();
        assert_eq!(p.offsets(&mut blob).unwrap(), (0..10).collect::<Vec<_>>());
        let p = plan(&parse("device = d1").unwrap()).unwrap();
        assert!(p.offsets(&mut blob).unwrap().is_empty());
    }
}
