//! The gateway side of configuration: watch the bucket, validate and apply
//! each new revision through the caller's callback, report the outcome and a
//! heartbeat, keep the last good revision on disk.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::nats::connection::connect;
use crate::nats::{
    buckets, validate_gateway_id, AppliedRevision, ConfigRevision, GatewayLoad, GatewayState,
    GatewayStatus, LastGoodRevision, NatsError, NatsSettings, RejectedRevision, CONFIG_BUCKET,
    REVISION_KEY, STATUS_BUCKET,
};

/// How a gateway watches the fleet's configuration.
#[derive(Clone, Debug)]
pub struct WatcherSettings {
    pub nats: NatsSettings,
    pub gateway_id: String,
    /// Where the last good revision is kept (the gateway's data dir).
    pub state_dir: PathBuf,
    /// How often the status document (the heartbeat) is rewritten.
    pub heartbeat_interval: Duration,
}

impl WatcherSettings {
    pub fn new(nats_url: &str, gateway_id: &str, state_dir: PathBuf) -> WatcherSettings {
        WatcherSettings {
            nats: NatsSettings::new(nats_url, format!("rampart-gateway-{gateway_id}")),
            gateway_id: gateway_id.to_string(),
            state_dir,
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

type ApplyFn = dyn Fn(&ConfigRevision) -> Result<(), String> + Send + Sync;

struct Shared {
    settings: WatcherSettings,
    apply: Box<ApplyFn>,
    /// The status document; also what [`ConfigWatcher`] callers wait on.
    status: watch::Sender<GatewayStatus>,
}

/// A running watcher; dropping it stops the background task.
pub struct ConfigWatcher {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ConfigWatcher {
    /// Apply the last good revision from disk (if any), then watch NATS in the
    /// background. Returns without waiting for NATS: a gateway must start, and
    /// serve its last good revision, while NATS is unreachable.
    ///
    /// `apply` validates and applies a revision atomically (all of it or
    /// nothing); its error is reported in the status bucket. It runs on a
    /// blocking thread, one revision at a time.
    pub async fn start<F, E>(
        settings: WatcherSettings,
        apply: F,
    ) -> Result<ConfigWatcher, NatsError>
    where
        F: Fn(&ConfigRevision) -> Result<(), E> + Send + Sync + 'static,
        E: Display,
    {
        validate_gateway_id(&settings.gateway_id)?;
        let status = GatewayStatus {
            gateway_id: settings.gateway_id.clone(),
            state: GatewayState::Pending,
            applied: None,
            rejected: None,
            last_seen_ms: rampart_events::now_ms(),
            heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
            load: GatewayLoad::default(),
        };
        let shared = Arc::new(Shared {
            apply: Box::new(move |r| apply(r).map_err(|e| e.to_string())),
            status: watch::Sender::new(status),
            settings,
        });
        apply_from_disk(&shared).await;
        let client = connect(&shared.settings.nats, false).await?;
        let task = tokio::spawn(run(shared.clone(), client));
        Ok(ConfigWatcher { shared, task })
    }

    /// The revision being served, if any.
    pub fn applied(&self) -> Option<AppliedRevision> {
        self.shared.status.borrow().applied.clone()
    }

    /// The status document as last computed.
    pub fn status(&self) -> GatewayStatus {
        self.shared.status.borrow().clone()
    }

    /// Load figures sent with the next heartbeat.
    pub fn set_load(&self, load: GatewayLoad) {
        self.shared.status.send_modify(|s| s.load = load);
    }

    /// Changes of the status document (applied or rejected revisions, load).
    pub fn subscribe(&self) -> watch::Receiver<GatewayStatus> {
        self.shared.status.subscribe()
    }

    /// Wait until revision `id` is applied; false on timeout.
    pub async fn wait_applied(&self, id: &str, timeout: Duration) -> bool {
        let mut rx = self.shared.status.subscribe();
        let applied = rx.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.id == id));
        let outcome = tokio::time::timeout(timeout, applied).await;
        matches!(outcome, Ok(Ok(_)))
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start from the last good revision on disk, when there is one.
async fn apply_from_disk(shared: &Arc<Shared>) {
    let state_dir = &shared.settings.state_dir;
    let good = match LastGoodRevision::load(state_dir) {
        Ok(Some(good)) => good,
        Ok(None) => return,
        Err(err) => {
            tracing::error!(%err, "last good revision unreadable; waiting for NATS");
            return;
        }
    };
    let id = good.revision.id.clone();
    let kv_revision = good.kv_revision;
    match apply_blocking(shared, good.revision).await {
        Ok(()) => {
            tracing::info!(revision = %id, "applied the last good revision from disk");
            shared.status.send_modify(|s| {
                s.state = GatewayState::Applied;
                s.applied = Some(AppliedRevision {
                    id,
                    kv_revision,
                    applied_ms: rampart_events::now_ms(),
                    from_disk: true,
                });
            });
        }
        Err(error) => {
            // E.g. the CA key file changed since: report it, wait for NATS.
            tracing::error!(revision = %id, %error, "the last good revision on disk no longer applies");
            shared.status.send_modify(|s| {
                s.rejected = Some(RejectedRevision {
                    id,
                    // 0: the same revision from NATS is tried again (the cause,
                    // a missing key file say, may be fixed by then).
                    kv_revision: 0,
                    error,
                    rejected_ms: rampart_events::now_ms(),
                });
            });
        }
    }
}

async fn apply_blocking(shared: &Arc<Shared>, revision: ConfigRevision) -> Result<(), String> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || (shared.apply)(&revision))
        .await
        .unwrap_or_else(|e| Err(format!("the apply callback panicked: {e}")))
}

/// Watch until the process ends, re-establishing the watch after any failure.
async fn run(shared: Arc<Shared>, client: async_nats::Client) {
    let js = jetstream::new(client);
    let initial = Duration::from_millis(200);
    let mut backoff = initial;
    loop {
        match watch_until_failure(&shared, &js).await {
            Ok(()) => backoff = initial,
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "configuration watch interrupted")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn watch_until_failure(
    shared: &Arc<Shared>,
    js: &jetstream::Context,
) -> Result<(), NatsError> {
    let config = buckets::key_value(js, CONFIG_BUCKET, buckets::CONFIG_HISTORY).await?;
    let status = buckets::key_value(js, STATUS_BUCKET, 1).await?;
    // The current value first, then every change.
    let mut entries = config
        .watch_with_history(REVISION_KEY)
        .await
        .map_err(|e| NatsError::js("watching the configuration bucket", e))?;
    let mut heartbeat = tokio::time::interval(shared.settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            entry = entries.next() => match entry {
                None => return Ok(()),
                Some(Err(e)) => return Err(NatsError::js("watching the configuration bucket", e)),
                Some(Ok(entry)) => {
                    if entry.operation == kv::Operation::Put {
                        handle_entry(shared, entry).await;
                    }
                    write_status(shared, &status).await?;
                }
            },
            _ = heartbeat.tick() => write_status(shared, &status).await?,
        }
    }
}

/// Apply one revision from the bucket, or record why it was refused.
async fn handle_entry(shared: &Arc<Shared>, entry: kv::Entry) {
    let kv_revision = entry.revision;
    let (seen, applied_id) = {
        let s = shared.status.borrow();
        let seen = s
            .applied
            .iter()
            .map(|a| a.kv_revision)
            .chain(s.rejected.iter().map(|r| r.kv_revision))
            .max()
            .unwrap_or(0);
        (seen, s.applied.as_ref().map(|a| a.id.clone()))
    };
    if kv_revision <= seen && kv_revision != 0 {
        return; // Seen already (a re-established watch delivers the current value again).
    }
    let now = rampart_events::now_ms();
    let revision = match ConfigRevision::from_json(&entry.value, "the revision in NATS") {
        Ok(revision) => revision,
        Err(err) => {
            reject(shared, "unreadable".into(), kv_revision, err.to_string());
            return;
        }
    };
    let id = revision.id.clone();
    if applied_id.as_deref() == Some(id.as_str()) {
        // Same content re-published (or the one applied from disk): nothing to apply.
        persist(shared, kv_revision, revision);
        shared.status.send_modify(|s| {
            s.state = GatewayState::Applied;
            s.rejected = None;
            if let Some(a) = s.applied.as_mut() {
                a.kv_revision = kv_revision;
            }
        });
        return;
    }
    match apply_blocking(shared, revision.clone()).await {
        Ok(()) => {
            tracing::info!(revision = %id, kv_revision, "configuration revision applied");
            // On disk before it is reported applied: whoever sees "applied"
            // (the status bucket, `wait_applied`) may rely on a restart without
            // NATS serving it.
            persist(shared, kv_revision, revision);
            shared.status.send_modify(|s| {
                s.state = GatewayState::Applied;
                s.rejected = None;
                s.applied = Some(AppliedRevision {
                    id,
                    kv_revision,
                    applied_ms: now,
                    from_disk: false,
                });
            });
        }
        Err(error) => reject(shared, id, kv_revision, error),
    }
}

fn reject(shared: &Shared, id: String, kv_revision: u64, error: String) {
    tracing::error!(revision = %id, kv_revision, %error, "configuration revision rejected; keeping the previous one");
    shared.status.send_modify(|s| {
        s.state = if s.applied.is_some() {
            GatewayState::Rejected
        } else {
            GatewayState::Pending
        };
        s.rejected = Some(RejectedRevision {
            id,
            kv_revision,
            error,
            rejected_ms: rampart_events::now_ms(),
        });
    });
}

fn persist(shared: &Shared, kv_revision: u64, revision: ConfigRevision) {
    let good = LastGoodRevision {
        kv_revision,
        revision,
    };
    if let Err(err) = good.store(&shared.settings.state_dir) {
        // Still applied; only a restart without NATS would miss it.
        tracing::error!(%err, "could not keep the applied revision on disk");
    }
}

async fn write_status(shared: &Shared, store: &kv::Store) -> Result<(), NatsError> {
    let document = {
        let mut s = shared.status.borrow().clone();
        s.last_seen_ms = rampart_events::now_ms();
        serde_json::to_vec(&s).map_err(|e| NatsError::Document {
            what: "gateway status".into(),
            message: e.to_string(),
        })?
    };
    store
        .put(&shared.settings.gateway_id, document.into())
        .await
        .map_err(|e| NatsError::js("writing the gateway status", e))?;
    Ok(())
}
