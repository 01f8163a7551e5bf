//! The event query language, shared by the CLI and the API.
//!
//! ```text
//! user = alice and action = block and category in (news, gambling)
//! host like "*.dropbox.com" or (process = python3 and not tls = decrypt)
//! ```
//!
//! A query parses to an [`Expr`], which the store evaluates on each stored
//! record it reads (through [`FieldValues`]); its equality tests on indexed
//! fields also choose the postings to read (`store::plan`).

mod lexer;
mod parser;

pub use parser::{parse, Expr, FieldValues, Op, Query, Value};

/// The one case folding of the query language: text comparisons, set
/// membership, `like`, the embedded store's postings keys and the fleet
/// store's columns all fold with it, so an index never disagrees with the
/// in-memory match. Unicode lowercase, not ASCII: "İris" and "i̇ris" are equal.
pub fn fold(text: &str) -> String {
    text.to_lowercase()
}

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
