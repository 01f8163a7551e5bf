//! NATS JetStream transport: configuration revisions and events.
//!
//! # Configuration revisions
//! The server ([`ConfigPublisher`]) puts each [`ConfigRevision`] (gateway
//! config TOML, policy with its list and category files, revoked device ids,
//! coaching key, CA certificate) under one key of the key-value bucket
//! [`CONFIG_BUCKET`]. Every gateway ([`ConfigWatcher`]) watches that key, hands
//! each new revision to the caller's validate-and-apply callback and writes the
//! outcome under its gateway id in [`STATUS_BUCKET`]: the applied revision, or
//! the rejection with its error (the rejected revision never replaces the good
//! one: Envoy's ACK/NACK idea). The status entry doubles as the heartbeat (last
//! seen, load figures). The last good revision is kept on disk (atomic rename,
//! mode 0600) so a gateway starts from it when NATS is unreachable, and keeps
//! trying to reach NATS in the background.
//!
//! ## The CA key never travels through NATS
//! A gateway mints leaf certificates, so it needs the CA private key. Chosen
//! design: the operator distributes the CA key file to every gateway out of
//! band (configuration management, a secrets store, a mounted volume, mode
//! 0600), exactly as for any TLS private key. The bucket carries the CA
//! *certificate* and [`CaMaterial::key_fingerprint`], the SHA-256 of the
//! public key that the key file must hold. A gateway checks its key file with
//! [`CaMaterial::check_key`] before applying a revision, so a rotated CA whose
//! key has not reached the gateway yet is rejected (and reported) instead of
//! breaking interception. Why not encrypt the key to each gateway: it would
//! need per-gateway enrolment keys, re-encryption on every gateway added, and
//! a compromised bucket reader could still replay old ciphertexts; the key
//! file is simpler and leaks nothing through NATS.
//!
//! The coaching key (which signs "proceed" links so that one gateway honours
//! another's) does travel in the bucket: restrict the bucket's subjects
//! (`$KV.rampart-config.>`) to the server and gateways with NATS accounts or
//! users, and use TLS to NATS beyond one host.
//!
//! # Events
//! Gateways publish events ([`EventPublisher`]) to `rampart.events.<gateway-id>`
//! in the stream [`EVENTS_STREAM`], several per message (up to
//! [`BatchLimits`]: 1,000 events or 512 KiB), each in the embedded store's
//! stored form (a gateway forwards what its store holds without decoding
//! it). A message's `Nats-Msg-Id` is the hash of its payload, so JetStream
//! drops a batch re-sent unchanged within its duplicate window. Every call
//! waits for its acknowledgements; the batches not acknowledged (NATS down,
//! timeout) go to an on-disk spool under the data dir
//! (`rampart_events::spool::Spool`, the one the sinks use) and are replayed
//! unchanged and in order when NATS returns; only acknowledged batches are
//! removed. The server drains the stream with a durable pull consumer
//! ([`EventConsumer`]) into an [`EventSink`] (the PostgreSQL fleet store),
//! acknowledging each message only once the sink committed its events; a
//! failed batch is negatively acknowledged and comes back. Delivery is at
//! least once: the sink must ignore an event id it already holds (events
//! re-sent in a differently composed batch reach it twice).
//!
//! Tested with Debian's `nats-server` 2.9.10 and `async-nats` 0.52 (default
//! features off: they switch on request fields for servers 2.10 and later).

mod buckets;
mod ca;
mod config_publisher;
mod config_watcher;
mod connection;
mod error;
mod event_batch;
mod event_consumer;
mod event_publisher;
mod last_good;
mod revision;
mod status;

pub use buckets::{
    EventsStreamSettings, CONFIG_BUCKET, EVENTS_STREAM, EVENTS_SUBJECT_PREFIX, REVISION_KEY,
    STATUS_BUCKET,
};
pub use ca::CaMaterial;
pub use config_publisher::{ConfigPublisher, PublishedRevision};
pub use config_watcher::{ConfigWatcher, WatcherSettings};
pub use connection::{connect, validate_gateway_id, NatsSettings};
pub use error::NatsError;
pub use event_batch::{pack, stored_form, unpack, Batch, BatchError, BatchLimits};
pub use event_consumer::{
    ConsumerSettings, ConsumerStats, EventConsumer, EventSink, ReceivedEvent,
};
pub use event_publisher::{EventPublisher, PublishOutcome, PublisherSettings};
pub use last_good::LastGoodRevision;
pub use revision::{ConfigRevision, PolicyBundle};
pub use status::{
    fleet_status, AppliedRevision, FleetEntry, GatewayHealth, GatewayLoad, GatewayState,
    GatewayStatus, RejectedRevision,
};
