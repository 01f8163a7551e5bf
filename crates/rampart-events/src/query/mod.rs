//! The event query language, shared by the CLI and the API.
//!
//! ```text
//! user = alice and action = block and category in (news, gambling)
//! host like "*.dropbox.com" or (process = python3 and not tls = decrypt)
//! ```
//!
//! A query parses to an [`Expr`] and compiles to parameterised SQL: values are
//! always bound parameters, never spliced into the SQL text.

mod lexer;
mod parser;
mod sql;

pub use parser::{parse, Expr, Op, Query, Value};
pub use sql::{compile, SqlFilter, SqlValue};

/// A query that could not be parsed, with the 1-based column of the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query column {column}: {message}")]
pub struct QueryError {
    pub column: usize,
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            column,
            message: message.into(),
        }
    }

    /// The query with a caret under the offending column, for terminals.
    pub fn render(&self, query: &str) -> String {
        let pad = " ".repeat(self.column.saturating_sub(1));
        format!("{self}\n  {query}\n  {pad}^")
    }
}
