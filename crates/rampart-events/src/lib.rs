//! See the crate description in Cargo.toml; this crate is being built up issue by issue.
