//! The server side of events: a durable pull consumer on the events stream
//! feeding an [`EventSink`] (the PostgreSQL fleet store), acknowledging only
//! what the sink committed.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures_util::StreamExt;
use rampart_events::Event;
use tokio::task::JoinHandle;

use crate::nats::buckets::{self, EventsStreamSettings};
use crate::nats::connection::connect;
use crate::nats::{NatsError, NatsSettings, EVENTS_SUBJECT_PREFIX};

/// One event taken from the stream.
#[derive(Clone, Debug)]
pub struct ReceivedEvent {
    /// The gateway that published it (from the subject).
    pub gateway_id: String,
    pub event: Event,
    /// The OCSF JSON document exactly as published (store it without re-rendering).
    pub json: String,
    /// Its sequence number in the stream.
    pub stream_sequence: u64,
}

/// Where consumed events go. `insert_batch` returns once the batch is
/// committed (durable); events are acknowledged to JetStream only then. It
/// must ignore event ids it already holds: delivery is at least once.
pub trait EventSink: Send + Sync + 'static {
    type Error: Display + Send;

    /// Commit the batch; the number of events newly stored.
    fn insert_batch(
        &self,
        events: &[ReceivedEvent],
    ) -> impl Future<Output = Result<usize, Self::Error>> + Send;
}

/// How the server consumes the events stream.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub nats: NatsSettings,
    /// The durable consumer's name: consumers sharing it share the work.
    pub durable_name: String,
    /// Events handed to the sink at most per batch.
    pub batch: usize,
    /// How long to wait for more events once one arrived, to fill a batch.
    pub linger: Duration,
    /// A delivered event not acknowledged within this time is delivered again.
    pub ack_wait: Duration,
    /// First pause after a failed sink batch (doubling up to `retry_max`).
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub stream: EventsStreamSettings,
}

impl ConsumerSettings {
    pub fn new(nats_url: &str) -> ConsumerSettings {
        ConsumerSettings {
            nats: NatsSettings::new(nats_url, "rampart-server-events"),
            durable_name: "rampart-fleet-store".into(),
            batch: 2000,
            linger: Duration::from_millis(20),
            ack_wait: Duration::from_secs(60),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            stream: EventsStreamSettings::default(),
        }
    }
}

/// Counters of a consumer, for `/metrics` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Events the sink committed and that were acknowledged.
    pub committed: u64,
    pub batches: u64,
    /// Failed sink batches (their events were handed back for redelivery).
    pub sink_failures: u64,
    /// Deliveries of events delivered before.
    pub redelivered: u64,
    /// Messages that were not events (terminated, never redelivered).
    pub malformed: u64,
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    batches: AtomicU64,
    sink_failures: AtomicU64,
    redelivered: AtomicU64,
    malformed: AtomicU64,
}

/// A running consumer; dropping it stops consuming (unacknowledged events
/// are redelivered to the next consumer).
pub struct EventConsumer {
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl EventConsumer {
    /// Connect (in the background: the server starts while NATS is down) and
    /// feed `sink` until dropped.
    pub async fn start<S: EventSink>(
        settings: ConsumerSettings,
        sink: Arc<S>,
    ) -> Result<EventConsumer, NatsError> {
        let client = connect(&settings.nats, false).await?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(
            settings,
            jetstream::new(client),
            sink,
            counters.clone(),
        ));
        Ok(EventConsumer { counters, task })
    }

    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            committed: c.committed.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            sink_failures: c.sink_failures.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EventConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<S: EventSink>(
    settings: ConsumerSettings,
    js: jetstream::Context,
    sink: Arc<S>,
    counters: Arc<Counters>,
) {
    let mut backoff = settings.retry_initial;
    loop {
        match consume_until_failure(&settings, &js, sink.as_ref(), &counters).await {
            Ok(()) => backoff = settings.retry_initial,
            Err(err) => tracing::warn!(%err, retry_in = ?backoff, "event consumer interrupted"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.retry_max);
    }
}

async fn consume_until_failure<S: EventSink>(
    settings: &ConsumerSettings,
    js: &jetstream::Context,
    sink: &S,
    counters: &Counters,
) -> Result<(), NatsError> {
    let stream = buckets::events_stream(js, &settings.stream).await?;
    let config = consumer::pull::Config {
        durable_name: Some(settings.durable_name.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Enough in flight for a few batches being prefetched while one is committed.
        max_ack_pending: (settings.batch * 8).max(1000) as i64,
        filter_subject: format!("{EVENTS_SUBJECT_PREFIX}>"),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&settings.durable_name, config)
        .await
        .map_err(|e| NatsError::js(format!("opening consumer {}", settings.durable_name), e))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| NatsError::js("pulling events", e))?;
    let mut backoff = settings.retry_initial;
    loop {
        // Wait for one message, then take whatever else is already here.
        let first = match messages.next().await {
            None => return Ok(()),
            Some(Err(e)) => return Err(NatsError::js("pulling events", e)),
            Some(Ok(m)) => m,
        };
        // Bulk inserts pay per batch: linger a little for a fuller one.
        let mut batch = vec![first];
        let linger_until = tokio::time::Instant::now() + settings.linger;
        while batch.len() < settings.batch {
            match tokio::time::timeout_at(linger_until, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => {
                    tracing::debug!(%e, "pull interrupted; committing what arrived");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if deliver(batch, sink, counters).await {
            backoff = settings.retry_initial;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(settings.retry_max);
        }
    }
}

/// Hand one batch to the sink; acknowledge it on success, hand it back on failure.
async fn deliver<S: EventSink>(
    batch: Vec<jetstream::Message>,
    sink: &S,
    counters: &Counters,
) -> bool {
    let mut events = Vec::with_capacity(batch.len());
    let mut delivered = Vec::with_capacity(batch.len());
    for message in batch {
        match decode(&message) {
            Ok((event, delivery_count)) => {
                if delivery_count > 1 {
                    counters.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                events.push(event);
                delivered.push(message);
            }
            Err(reason) => {
                tracing::error!(subject = %message.subject, %reason, "not an event: discarded");
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(%err, "could not discard a malformed message");
                }
            }
        }
    }
    if events.is_empty() {
        return true;
    }
    match sink.insert_batch(&events).await {
        Ok(_) => {
            for message in &delivered {
                // A lost acknowledgement means one redelivery, which the sink ignores.
                if let Err(err) = message.ack().await {
                    tracing::warn!(%err, "event acknowledgement not sent");
                }
            }
            counters
                .committed
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(err) => {
            tracing::warn!(%err, events = events.len(), "event sink failed; events will be redelivered");
            counters.sink_failures.fetch_add(1, Ordering::Relaxed);
            for message in &delivered {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            false
        }
    }
}

/// The event, and how many times it has been delivered.
fn decode(message: &jetstream::Message) -> Result<(ReceivedEvent, i64), String> {
    let gateway_id = message
        .subject
        .as_str()
        .strip_prefix(EVENTS_SUBJECT_PREFIX)
        .ok_or("subject outside rampart.events.")?
        .to_string();
    let info = message.info().map_err(|e| e.to_string())?;
    let json = std::str::from_utf8(&message.payload)
        .map_err(|e| e.to_string())?
        .to_string();
    let event = rampart_events::render::parse_line(json.as_bytes())?;
    Ok((
        ReceivedEvent {
            gateway_id,
            event,
            json,
            stream_sequence: info.stream_sequence,
        },
        info.delivered,
    ))
}
