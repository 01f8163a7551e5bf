//! The embedded event store: SQLite in WAL mode in the data dir.
//!
//! One writer (the pipeline's writer thread) inserts in batched transactions;
//! any number of readers (CLI, API) open their own connections. Each indexed
//! query field is a column; the whole OCSF document is kept in `doc`,
//! compressed (see `doc.rs`).

mod doc;
mod reader;
mod schema;
mod writer;

pub use reader::{Cursor, Page, SearchRequest, StoreReader};
pub use schema::ALERTS_CONDITION;
pub use writer::{Checkpointer, RetentionReport, StoreWriter};

use std::path::{Path, PathBuf};

/// The database file inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("events.db")
}
