//! The server side of events: a durable pull consumer on the events stream
//! feeding an [`EventSink`] (the PostgreSQL fleet store), acknowledging only
//! what the sink committed. Messages carry several events each
//! (`event_batch.rs`); the next sink batch is pulled and decoded while the
//! sink commits the previous one.

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
use crate::nats::event_batch;
use crate::nats::{NatsError, NatsSettings, EVENTS_SUBJECT_PREFIX};

/// One event taken from the stream.
#[derive(Clone, Debug)]
pub struct ReceivedEvent {
    /// The gateway that published it (from the subject).
    pub gateway_id: String,
    /// The event, its `unmapped.gateway` set to `gateway_id`.
    pub event: Event,
    /// The stream sequence number of the message that carried it.
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
    /// Events handed to the sink per batch: messages are taken until they
    /// hold this many (a batch may exceed it by one message's events).
    pub batch: usize,
    /// Messages delivered and not yet acknowledged at most (each holds up to
    /// a publisher's batch of events).
    pub max_ack_pending: usize,
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
            max_ack_pending: 64,
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
    /// Sink batches committed.
    pub batches: u64,
    /// JetStream messages acknowledged (each carries one or more events).
    pub messages: u64,
    /// Failed sink batches (their events were handed back for redelivery).
    pub sink_failures: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
    /// Messages that were not events (terminated, never redelivered).
    pub malformed: u64,
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    batches: AtomicU64,
    messages: AtomicU64,
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
            messages: c.messages.load(Ordering::Relaxed),
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
    let max_ack_pending = settings.max_ack_pending.max(2);
    let config = consumer::pull::Config {
        durable_name: Some(settings.durable_name.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Room for the batch being committed and the next ones being pulled.
        max_ack_pending: max_ack_pending as i64,
        filter_subject: format!("{EVENTS_SUBJECT_PREFIX}>"),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&settings.durable_name, config)
        .await
        .map_err(|e| NatsError::js(format!("opening consumer {}", settings.durable_name), e))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(max_ack_pending / 2)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| NatsError::js("pulling events", e))?;
    // One decoded batch waits while the sink commits another: decoding (CPU
    // here) overlaps the database's work.
    let (ready, mut decoded) = tokio::sync::mpsc::channel::<Decoded>(1);
    let pull = pull_batches(settings, messages, ready, counters);
    let commit = async {
        let mut backoff = settings.retry_initial;
        while let Some(batch) = decoded.recv().await {
            if deliver(batch, sink, counters).await {
                backoff = settings.retry_initial;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.retry_max);
            }
        }
    };
    let (pulled, ()) = tokio::join!(pull, commit);
    pulled
}

/// A sink batch: its events and the messages that carried them.
struct Decoded {
    events: Vec<ReceivedEvent>,
    messages: Vec<jetstream::Message>,
}

/// Pull messages into sink batches of about `settings.batch` events, decode
/// them and hand them on; returns when the pull fails (or the committer is gone).
async fn pull_batches(
    settings: &ConsumerSettings,
    mut messages: consumer::pull::Stream,
    ready: tokio::sync::mpsc::Sender<Decoded>,
    counters: &Counters,
) -> Result<(), NatsError> {
    loop {
        // Wait for one message, then take whatever else is already here.
        let first = match messages.next().await {
            None => return Ok(()),
            Some(Err(e)) => return Err(NatsError::js("pulling events", e)),
            Some(Ok(m)) => m,
        };
        let mut batch = Decoded {
            events: Vec::with_capacity(settings.batch),
            messages: Vec::new(),
        };
        decode_into(first, &mut batch, counters).await;
        // Bulk inserts pay per batch: linger a little for a fuller one.
        let linger_until = tokio::time::Instant::now() + settings.linger;
        while batch.events.len() < settings.batch {
            match tokio::time::timeout_at(linger_until, messages.next()).await {
                Ok(Some(Ok(m))) => decode_into(m, &mut batch, counters).await,
                Ok(Some(Err(e))) => {
                    tracing::debug!(%e, "pull interrupted; committing what arrived");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if batch.messages.is_empty() {
            continue;
        }
        if ready.send(batch).await.is_err() {
            return Ok(());
        }
    }
}

/// Decode `message` into `batch`; a message that holds no events is
/// terminated (never redelivered) and counted.
async fn decode_into(message: jetstream::Message, batch: &mut Decoded, counters: &Counters) {
    match decode(&message) {
        Ok((events, delivery_count)) => {
            if delivery_count > 1 {
                counters.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            batch.events.extend(events);
            batch.messages.push(message);
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

/// Hand one batch to the sink; acknowledge its messages on success, hand
/// them back on failure.
async fn deliver<S: EventSink>(batch: Decoded, sink: &S, counters: &Counters) -> bool {
    let Decoded { events, messages } = batch;
    match sink.insert_batch(&events).await {
        Ok(_) => {
            for message in &messages {
                // A lost acknowledgement means one redelivery, which the sink ignores.
                if let Err(err) = message.ack().await {
                    tracing::warn!(%err, "event acknowledgement not sent");
                }
            }
            counters
                .committed
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            counters
                .messages
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(err) => {
            tracing::warn!(%err, events = events.len(), "event sink failed; events will be redelivered");
            counters.sink_failures.fetch_add(1, Ordering::Relaxed);
            for message in &messages {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            false
        }
    }
}

/// The message's events, and how many times it has been delivered.
fn decode(message: &jetstream::Message) -> Result<(Vec<ReceivedEvent>, i64), String> {
    let gateway_id = message
        .subject
        .as_str()
        .strip_prefix(EVENTS_SUBJECT_PREFIX)
        .ok_or("subject outside rampart.events.")?;
    let info = message.info().map_err(|e| e.to_string())?;
    let events = event_batch::unpack(&message.payload).map_err(|e| e.to_string())?;
    let received = events
        .into_iter()
        .map(|mut event| {
            event.unmapped.gateway = Some(gateway_id.to_string());
            ReceivedEvent {
                gateway_id: gateway_id.to_string(),
                event,
                stream_sequence: info.stream_sequence,
            }
        })
        .collect();
    Ok((received, info.delivered))
}
