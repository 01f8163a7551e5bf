//! Errors of the events crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "no event store at {0} (start `rampart server` with this data dir, or pass --data-dir)"
    )]
    NoStore(PathBuf),
    #[error("event store {0} was written by an older Rampart: start `rampart server` once to upgrade it")]
    OldStore(PathBuf),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error("invalid cursor `{0}` (pass the `next_cursor` value of the previous page)")]
    BadCursor(String),
    #[error("event {0} has no stored document: {1}")]
    BadDocument(String, serde_json::Error),
    #[error("stored event document is damaged: {0}")]
    DamagedDocument(String),
    #[error("event {0} names no device, so it has no device timeline")]
    NoDevice(String),
    #[error("sink {sink}: {message}")]
    Sink { sink: String, message: String },
    #[error("event journal {0} is in use by another process on this data dir (a server, or `rampart events import`)")]
    JournalBusy(PathBuf),
    #[error("admin token {path}: {message}")]
    Token { path: PathBuf, message: String },
}
