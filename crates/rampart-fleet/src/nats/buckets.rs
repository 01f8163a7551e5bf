//! The JetStream objects Rampart uses, and creating them when they are missing.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::nats::NatsError;

/// Key-value bucket holding the current configuration revision.
pub const CONFIG_BUCKET: &str = "rampart-config";
/// The key of the current revision in [`CONFIG_BUCKET`].
pub const REVISION_KEY: &str = "revision";
/// Revisions kept in the configuration bucket's history (`nats kv history`).
pub(crate) const CONFIG_HISTORY: i64 = 10;
/// Key-value bucket of gateway status and heartbeats, keyed by gateway id.
pub const STATUS_BUCKET: &str = "rampart-gateway-status";
/// Stream of events from all gateways.
pub const EVENTS_STREAM: &str = "RAMPART_EVENTS";
/// Events of gateway `gw1` are published to `rampart.events.gw1`.
pub const EVENTS_SUBJECT_PREFIX: &str = "rampart.events.";

/// Limits of the events stream (applied when the stream is created).
#[derive(Clone, Debug)]
pub struct EventsStreamSettings {
    /// Window in which a re-sent event id is dropped by JetStream. Longer than
    /// any client-side retry of one publish; spool replays after a long outage
    /// rely on the store ignoring known ids.
    pub duplicate_window: Duration,
    /// Events older than this leave the stream even if never consumed.
    pub max_age: Duration,
    /// Bytes kept at most (-1: no limit).
    pub max_bytes: i64,
}

impl Default for EventsStreamSettings {
    fn default() -> Self {
        EventsStreamSettings {
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
        }
    }
}

/// Open a key-value bucket, creating it when missing (several processes may race).
///
/// The bucket's stream is created here rather than with
/// `Context::create_key_value`: async-nats 0.52 first reads the account info
/// and fails to decode the reply of servers before 2.10 (no
/// `reserved_memory`), so Debian's nats-server 2.9 could not create buckets
/// through it. The stream settings are those of the KV specification (ADR-8).
pub(crate) async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
) -> Result<kv::Store, NatsError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let created = js.get_or_create_stream(config).await;
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(open_err) => Err(match created {
            Err(create_err) => {
                NatsError::js(format!("creating key-value bucket {bucket}"), create_err)
            }
            Ok(_) => NatsError::js(format!("opening key-value bucket {bucket}"), open_err),
        }),
    }
}

/// Open the events stream, creating it when missing.
pub(crate) async fn events_stream(
    js: &jetstream::Context,
    settings: &EventsStreamSettings,
) -> Result<stream::Stream, NatsError> {
    let config = stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: vec![format!("{EVENTS_SUBJECT_PREFIX}>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: settings.duplicate_window,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| NatsError::js(format!("opening stream {EVENTS_STREAM}"), e))
}
