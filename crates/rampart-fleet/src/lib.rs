//! Rampart's fleet: many stateless gateways (`rampart gateway`) behind an L4
//! balancer, one server. DESIGN.md §3 and issue 20.
//!
//! - [`pg`]: the PostgreSQL fleet event store (time-partitioned tables, bulk
//!   inserts, the query language translated to parameterised SQL, retention by
//!   dropping partitions).
//! - [`nats`]: configuration revisions in a JetStream key-value bucket (publish,
//!   watch, validate, apply, status write-back, last good revision on disk) and
//!   events through a JetStream stream (at-least-once, idempotent by event id,
//!   spooled locally while NATS is unreachable).

pub mod nats;
pub mod pg;
