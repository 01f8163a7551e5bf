//! The errors of the NATS transport, each saying what failed and what to check.

use std::path::PathBuf;

/// What went wrong talking to NATS or keeping local state.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {message} (is nats-server running with JetStream enabled, `-js`, and reachable?)")]
    Connect { url: String, message: String },
    #[error("NATS JetStream {what} failed: {message}")]
    JetStream { what: String, message: String },
    #[error("NATS is not connected: {what} was not attempted")]
    NotConnected { what: &'static str },
    #[error("invalid gateway id {id:?}: use 1 to 64 ASCII letters, digits, `-` or `_` (it becomes a NATS subject token and a key)")]
    BadGatewayId { id: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a valid document: {message}")]
    Document { what: String, message: String },
    #[error("CA material: {0}")]
    Ca(String),
    #[error("event spool: {0}")]
    Spool(#[from] rampart_events::EventsError),
}

impl NatsError {
    pub(crate) fn js(what: impl Into<String>, err: impl std::fmt::Display) -> NatsError {
        NatsError::JetStream {
            what: what.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NatsError {
        NatsError::Io {
            path: path.into(),
            source,
        }
    }
}
