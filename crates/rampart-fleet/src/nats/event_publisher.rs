//! The gateway side of events: publish batches to JetStream and wait for the
//! acknowledgements; spool on disk what NATS did not acknowledge and replay it
//! in order when NATS is back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use rampart_events::spool::Spool;
use rampart_events::Event;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::nats::buckets::{self, EventsStreamSettings};
use crate::nats::connection::{connect, is_connected};
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
    /// Events per replayed batch.
    pub replay_batch: usize,
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
            replay_batch: 2000,
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

/// One event ready to send: its id (the `Nats-Msg-Id`) and its OCSF JSON.
struct Outgoing {
    id: String,
    json: Bytes,
}

impl Outgoing {
    /// The spool line: `<id> <json>` (the id first, so replay needs no JSON parsing).
    fn spool_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.id.len() + 1 + self.json.len());
        line.extend_from_slice(self.id.as_bytes());
        line.push(b' ');
        line.extend_from_slice(&self.json);
        line
    }

    fn from_spool_line(line: Vec<u8>) -> Option<Outgoing> {
        let space = line.iter().position(|b| *b == b' ')?;
        let id = std::str::from_utf8(&line[..space]).ok()?.to_string();
        let json = Bytes::from(line).slice(space + 1..);
        Some(Outgoing { id, json })
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
            // Large batches wait for acknowledgement permits rather than fail.
            .max_ack_inflight(20_000)
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
        });
        let replayer = tokio::spawn(replay(inner.clone()));
        Ok(EventPublisher { inner, replayer })
    }

    /// Publish a batch and wait for JetStream's acknowledgements. What is not
    /// acknowledged is spooled (the call still succeeds); an error means the
    /// spool could not be written either.
    pub async fn publish(&self, events: &[Event]) -> Result<PublishOutcome, NatsError> {
        let outgoing: Vec<Outgoing> = events
            .iter()
            .map(|e| Outgoing {
                id: e.id().to_string(),
                json: Bytes::from(rampart_events::render::ocsf_line(e)),
            })
            .collect();
        let inner = &self.inner;
        let _sending = inner.sending.lock().await;
        let spool_empty = lock(&inner.spool).is_empty();
        if !spool_empty || !is_connected(&inner.client) || !inner.ensure_stream().await {
            return inner.spool_all(&outgoing);
        }
        match inner.send_all(&outgoing).await {
            Ok(duplicates) => Ok(PublishOutcome {
                acknowledged: outgoing.len(),
                duplicates,
                spooled: 0,
            }),
            Err((first_unacked, err)) => {
                tracing::warn!(%err, "events not acknowledged by NATS: spooling them");
                // From the first unacknowledged event on, in order; any later one
                // that did get stored is dropped as a duplicate on replay.
                let mut outcome = inner.spool_all(&outgoing[first_unacked..])?;
                outcome.acknowledged = first_unacked;
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

    /// Events discarded because the spool reached its bound (since start).
    pub fn dropped_events(&self) -> u64 {
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
            spooled: outgoing.len(),
        })
    }

    /// Send every event, then wait for every acknowledgement. On failure,
    /// the index of the first event not acknowledged.
    async fn send_all(&self, outgoing: &[Outgoing]) -> Result<usize, (usize, NatsError)> {
        let mut pending = Vec::with_capacity(outgoing.len());
        for (i, event) in outgoing.iter().enumerate() {
            let message = PublishMessage::build()
                .message_id(&event.id)
                .payload(event.json.clone());
            match self.js.send_publish(self.subject.clone(), message).await {
                Ok(ack) => pending.push(ack),
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

    /// Await acknowledgements in order: `(count acknowledged, duplicates)`,
    /// or the index of the first failure.
    async fn await_acks(
        &self,
        pending: Vec<jetstream::context::PublishAckFuture>,
    ) -> Result<(usize, usize), (usize, NatsError)> {
        let mut duplicates = 0;
        let total = pending.len();
        for (i, ack) in pending.into_iter().enumerate() {
            match ack.await {
                Ok(ack) => duplicates += usize::from(ack.duplicate),
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
