//! The PostgreSQL fleet event store.
