//! The gateway side of events: publish them to JetStream several per message
//! (`event_batch.rs`) and wait for the acknowledgements; spool on disk the
//! batches NATS did not acknowledge and replay them, unchanged and in order,
//! when NATS is back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use base64::Engine as _;
use bytes::Bytes;
use rampart_events::spool::Spool;
use rampart_events::Event;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::nats::buckets::{self, EventsStreamSettings};
use crate::nats::connection::{connect, is_connected};
use crate::nats::event_batch::{self, Batch, BatchLimits};
use crate::nats::{validate_gateway_id, NatsError, NatsSettings, EVENTS_SUBJECT_PREFIX};

/// How a gateway publishes its events.
#[derive(Clone, Debug)]
pub struct PublisherSettings {
    pub nats: NatsSettings,
    pub gateway_id: String,
    /// The gateway's data dir; the spool lives in `spool/nats-events` under it.
    pub data_dir: PathBuf,
    /// Bytes the spool may hold; past it the oldest events are discarded (and counted).
    pub spool_max_bytes: u64,
    /// Spooled messages (batches) sent per replay round.
    pub replay_batch: usize,
    /// How many events one JetStream message carries at most.
    pub batch: BatchLimits,
    /// Limits of the stream, should this publisher be the one to create it.
    pub stream: EventsStreamSettings,
}

impl PublisherSettings {
    pub fn new(nats_url: &str, gateway_id: &str, data_dir: PathBuf) -> PublisherSettings {
        PublisherSettings {
            nats: NatsSettings::new(nats_url, format!("rampart-gateway-{gateway_id}-events")),
            gateway_id: gateway_id.to_string(),
            data_dir,
            spool_max_bytes: 1 << 30,
            replay_batch: 16,
            batch: BatchLimits::default(),
            stream: EventsStreamSettings::default(),
        }
    }
}

/// What became of one [`EventPublisher::publish`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Stored by JetStream (acknowledged).
    pub acknowledged: usize,
    /// Of those, dropped by JetStream as a copy of an id it already had.
    pub duplicates: usize,
    /// Written to the local spool, to be replayed.
    pub spooled: usize,
}

/// The spool keeps one line per unacknowledged batch: `b1 <msg-id>
/// <base64 payload>` (lines cannot hold the payload's raw bytes). Spools of
/// gateways before batching hold `<event-id> <OCSF JSON>` lines; those replay
/// as one-event messages under their event id, as they would have been sent.
const SPOOL_LINE_V1: &str = "b1";

/// A batch ready to send: its `Nats-Msg-Id` and payload.
struct Outgoing {
    msg_id: String,
    batch: Batch,
}

impl Outgoing {
    fn new(batch: Batch) -> Outgoing {
        Outgoing {
            msg_id: batch.msg_id(),
            batch,
        }
    }

    fn spool_line(&self) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.batch.payload);
        format!("{SPOOL_LINE_V1} {} {encoded}", self.msg_id).into_bytes()
    }

    fn from_spool_line(line: Vec<u8>) -> Option<Outgoing> {
        if let Some(rest) = line.strip_prefix(SPOOL_LINE_V1.as_bytes()) {
            let rest = std::str::from_utf8(rest.strip_prefix(b" ")?).ok()?;
            let (msg_id, encoded) = rest.split_once(' ')?;
            let payload = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(encoded)
                .ok()?;
            return Some(Outgoing {
                msg_id: msg_id.to_string(),
                batch: Batch::from_payload(Bytes::from(payload)),
            });
        }
        let space = line.iter().position(|b| *b == b' ')?;
        let msg_id = std::str::from_utf8(&line[..space]).ok()?.to_string();
        let json = Bytes::from(line).slice(space + 1..);
        Some(Outgoing {
            msg_id,
            batch: Batch::from_payload(json),
        })
    }
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    stream_settings: EventsStreamSettings,
    stream_ready: AtomicBool,
    spool: Mutex<Spool>,
    /// One sender at a time: live batches never overtake spooled ones.
    sending: tokio::sync::Mutex<()>,
    /// Wakes the replayer when something was spooled.
    spooled: Notify,
    replay_batch: usize,
    batch_limits: BatchLimits,
}

/// Publishes a gateway's events; dropping it stops the replayer (the spool stays on disk).
pub struct EventPublisher {
    inner: Arc<Inner>,
    replayer: JoinHandle<()>,
}

impl EventPublisher {
    /// Open the spool (replaying what an earlier run left) and connect in the background.
    pub async fn start(settings: PublisherSettings) -> Result<EventPublisher, NatsError> {
        validate_gateway_id(&settings.gateway_id)?;
        let spool = Spool::open(
            &settings.data_dir.join("spool").join("nats-events"),
            settings.spool_max_bytes,
        )?;
        let client = connect(&settings.nats, false).await?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(settings.nats.request_timeout)
            // Many messages in one call wait for acknowledgement permits rather than fail.
            .max_ack_inflight(1_000)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let inner = Arc::new(Inner {
            client,
            js,
            subject: format!("{EVENTS_SUBJECT_PREFIX}{}", settings.gateway_id),
            stream_settings: settings.stream,
            stream_ready: AtomicBool::new(false),
            spool: Mutex::new(spool),
            sending: tokio::sync::Mutex::new(()),
            spooled: Notify::new(),
            replay_batch: settings.replay_batch.max(1),
            batch_limits: settings.batch,
        });
        let replayer = tokio::spawn(replay(inner.clone()));
        Ok(EventPublisher { inner, replayer })
    }

    /// Publish OCSF events (each rendered and compressed into the store's
    /// stored form first); see [`EventPublisher::publish_stored`].
    pub async fn publish(&self, events: &[Event]) -> Result<PublishOutcome, NatsError> {
        let stored: Vec<Vec<u8>> = events.iter().map(event_batch::stored_form).collect();
        self.publish_stored(&stored).await
    }

    /// Publish events in the embedded store's stored form (what
    /// `StoreReader::stored_after` returns), in order, several per message,
    /// and wait for JetStream's acknowledgements. What is not acknowledged is
    /// spooled (the call still succeeds); an error means the spool could not
    /// be written either.
    pub async fn publish_stored<S: AsRef<[u8]>>(
        &self,
        stored: &[S],
    ) -> Result<PublishOutcome, NatsError> {
        let outgoing: Vec<Outgoing> = event_batch::pack(stored, self.inner.batch_limits)
            .into_iter()
            .map(Outgoing::new)
            .collect();
        let inner = &self.inner;
        let _sending = inner.sending.lock().await;
        let spool_empty = lock(&inner.spool).is_empty();
        if !spool_empty || !is_connected(&inner.client) || !inner.ensure_stream().await {
            return inner.spool_all(&outgoing);
        }
        match inner.send_all(&outgoing).await {
            Ok(duplicates) => Ok(PublishOutcome {
                acknowledged: events_in(&outgoing),
                duplicates,
                spooled: 0,
            }),
            Err((first_unacked, err)) => {
                tracing::warn!(%err, "events not acknowledged by NATS: spooling them");
                // From the first unacknowledged batch on, in order; any later one
                // that did get stored is dropped as a duplicate on replay.
                let mut outcome = inner.spool_all(&outgoing[first_unacked..])?;
                outcome.acknowledged = events_in(&outgoing[..first_unacked]);
                Ok(outcome)
            }
        }
    }

    /// Whether NATS is connected right now (events go straight to it).
    pub fn connected(&self) -> bool {
        is_connected(&self.inner.client)
    }

    /// Bytes of events waiting in the spool.
    pub fn spooled_bytes(&self) -> u64 {
        lock(&self.inner.spool).pending_bytes()
    }

    /// Spooled batches discarded because the spool reached its bound (since start).
    pub fn dropped_batches(&self) -> u64 {
        lock(&self.inner.spool).dropped_lines()
    }

    /// Wait until the spool is empty; false on timeout.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if lock(&self.inner.spool).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

fn events_in(outgoing: &[Outgoing]) -> usize {
    outgoing.iter().map(|o| o.batch.events).sum()
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        self.replayer.abort();
    }
}

/// The spool mutex is only held for file I/O; a panic while holding it left
/// nothing half-done in memory worth refusing.
fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    /// Create the stream once per connection-life if it is missing.
    async fn ensure_stream(&self) -> bool {
        if self.stream_ready.load(Ordering::Relaxed) {
            return true;
        }
        match buckets::events_stream(&self.js, &self.stream_settings).await {
            Ok(_) => {
                self.stream_ready.store(true, Ordering::Relaxed);
                true
            }
            Err(err) => {
                tracing::warn!(%err, "events stream not available");
                false
            }
        }
    }

    fn spool_all(&self, outgoing: &[Outgoing]) -> Result<PublishOutcome, NatsError> {
        let lines: Vec<Vec<u8>> = outgoing.iter().map(Outgoing::spool_line).collect();
        {
            let mut spool = lock(&self.spool);
            spool.append(lines.iter().map(Vec::as_slice))?;
            // Only on the outage path: worth an fsync so a power loss keeps them too.
            spool.sync()?;
        }
        self.spooled.notify_one();
        Ok(PublishOutcome {
            acknowledged: 0,
            duplicates: 0,
            spooled: events_in(outgoing),
        })
    }

    /// Send every batch, then wait for every acknowledgement: the events in
    /// batches JetStream already held. On failure, the index of the first
    /// batch not acknowledged.
    async fn send_all(&self, outgoing: &[Outgoing]) -> Result<usize, (usize, NatsError)> {
        let mut pending = Vec::with_capacity(outgoing.len());
        for (i, batch) in outgoing.iter().enumerate() {
            let message = PublishMessage::build()
                .message_id(&batch.msg_id)
                .payload(batch.batch.payload.clone());
            match self.js.send_publish(self.subject.clone(), message).await {
                Ok(ack) => pending.push((ack, batch.batch.events)),
                Err(e) => {
                    if i == 0 {
                        return Err((0, NatsError::js("publishing events", e)));
                    }
                    // Wait for the ones sent, so the caller knows where to resume.
                    let acked = match self.await_acks(pending).await {
                        Ok((n, _)) | Err((n, _)) => n,
                    };
                    return Err((acked, NatsError::js("publishing events", e)));
                }
            }
        }
        self.await_acks(pending)
            .await
            .map(|(_, duplicates)| duplicates)
    }

    /// Await acknowledgements in order: `(batches acknowledged, events in
    /// duplicate batches)`, or the index of the first failure.
    async fn await_acks(
        &self,
        pending: Vec<(jetstream::context::PublishAckFuture, usize)>,
    ) -> Result<(usize, usize), (usize, NatsError)> {
        let mut duplicates = 0;
        let total = pending.len();
        for (i, (ack, events)) in pending.into_iter().enumerate() {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        duplicates += events;
                    }
                }
                Err(e) => {
                    if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                        self.stream_ready.store(false, Ordering::Relaxed);
                    }
                    return Err((i, NatsError::js("publishing events", e)));
                }
            }
        }
        Ok((total, duplicates))
    }
}

/// Replay the spool whenever NATS is reachable, oldest first, removing only
/// what was acknowledged.
async fn replay(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = inner.spooled.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        loop {
            if !is_connected(&inner.client) || !inner.ensure_stream().await {
                break;
            }
            let _sending = inner.sending.lock().await;
            let chunk = match lock(&inner.spool).read(inner.replay_batch) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(%err, "event spool unreadable");
                    break;
                }
            };
            let end = chunk.end;
            let outgoing: Vec<Outgoing> = chunk
                .lines
                .into_iter()
                .filter_map(Outgoing::from_spool_line)
                .collect();
            match inner.send_all(&outgoing).await {
                Ok(_) => {
                    if let Err(err) = lock(&inner.spool).ack(end) {
                        tracing::error!(%err, "event spool cursor not saved: events may be sent twice");
                    }
                    backoff = Duration::from_millis(200);
                }
                Err((_, err)) => {
                    tracing::warn!(%err, retry_in = ?backoff, "spooled events not acknowledged yet");
                    drop(_sending);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}
