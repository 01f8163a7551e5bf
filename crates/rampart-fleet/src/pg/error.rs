//! What can go wrong with the fleet store, each saying what to check.

/// An error of the PostgreSQL fleet event store.
#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    #[error("fleet store URL: {0} (expected e.g. postgresql://rampart:PASSWORD@db.example:5432/rampart)")]
    BadUrl(String),
    #[error("cannot reach the fleet store PostgreSQL: {0}; check that it runs, listens where the URL says and accepts this user")]
    Connect(String),
    #[error("fleet store: {what} failed: {detail}")]
    Sql {
        what: &'static str,
        /// The error with its causes (the server's message among them).
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "fleet store database encoding is {0}, not UTF8: create the database with ENCODING 'UTF8'"
    )]
    Encoding(String),
    #[error("fleet store schema version {found} is newer than this build knows ({known}): run the newer rampart, or a database of this version")]
    NewerSchema { found: i32, known: i32 },
    #[error("event {id}: cannot render it as JSON: {source}")]
    Document {
        id: uuid::Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("fleet store: a stored event document does not parse as an event: {0}")]
    DamagedDocument(String),
}

impl PgStoreError {
    /// Whether retrying later may succeed (the database was unreachable or
    /// went away), as opposed to a fault in the request or the schema.
    pub fn is_transient(&self) -> bool {
        match self {
            PgStoreError::Connect(_) => true,
            PgStoreError::Sql { source, .. } => {
                source.is_closed()
                    || source.code().is_none_or(|c| {
                        let class = &c.code()[..2];
                        // connection exceptions, insufficient resources, operator intervention (shutdown)
                        matches!(class, "08" | "53" | "57")
                    })
            }
            _ => false,
        }
    }
}

/// An error and its causes on one line: tokio-postgres says only "db error"
/// and keeps the server's message in its source.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Wrap a failed statement, naming what it was for.
pub(crate) fn sql(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PgStoreError {
    move |source| PgStoreError::Sql {
        what,
        detail: chain(&source),
        source,
    }
}
