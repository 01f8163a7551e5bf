//! Fleet mode (issue 20, DESIGN.md §9): the server publishes each
//! configuration revision to NATS JetStream, and `rampart gateway` processes
//! apply them. The transport (bucket, watcher, last good revision on disk,
//! status write-back) is `rampart_fleet::nats`; this module decides what a
//! revision holds and how a gateway turns it into its running configuration.
//!
//! A gateway's running configuration is its own file (listeners, data dir,
//! `[fleet]`, CA paths: what differs per machine) laid over the revision's
//! `gateway_config` (policy, proxy rules, TLS, inspection: what the fleet
//! shares), with `policy` pointing at the revision's policy files written under
//! `DATA_DIR/fleet/rev-ID/`. The merged file is `DATA_DIR/fleet/rampart.toml`;
//! the gateway's reloader reloads from it, so a revision is applied by the same
//! checked, atomic reload as SIGHUP, and a revision that fails it is reported
//! as rejected while the previous one keeps serving.
//!
//! Shared state (issue 20, item 5): each revision carries the server's revoked
//! device ids (a gateway refuses those devices' tunnels and closes their open
//! connections), the fleet's coaching key (a "proceed" link shown by one
//! gateway is honoured by any other) and the device CA's certificate with its
//! key fingerprint (a gateway whose device CA key differs rejects the
//! revision). The server re-publishes within a second of a revocation.
//! Coaching allowances and pinned-client auto-bypass state stay per gateway.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use rampart_fleet::nats::{
    CaMaterial, ConfigPublisher, ConfigRevision, ConfigWatcher, NatsSettings, PolicyBundle,
    WatcherSettings,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Overrides, RampartConfig};
use crate::reload::{ReloadOptions, Reloader, Trigger};

/// A policy bundle must fit one NATS message (1 MiB by default) with room for
/// the rest of the revision.
const MAX_BUNDLE_BYTES: usize = 900 * 1024;

/// `[fleet]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The fleet's NATS server with JetStream, e.g. `nats://10.0.0.5:4222`.
    /// Unset: no fleet (the server runs all-in-one; a gateway serves its own file).
    pub nats: Option<String>,
    /// Server: the configuration file published to every gateway (the shared
    /// part: `[proxy]` rules, `[tls]`, `[inspect]`...). The policy is the
    /// server's own.
    pub gateway_config: Option<PathBuf>,
    /// Gateway: its id in the fleet (letters, digits, `-`, `_`); default the
    /// host name.
    pub gateway_id: Option<String>,
    /// Server: the PostgreSQL fleet event store the events stream is consumed
    /// into, e.g. `postgresql://rampart@10.0.0.6/rampart`.
    pub postgres: Option<String>,
}

// ---------------------------------------------------------------- server --

/// Publishes the current revision now, after every applied reload and within
/// a second of a device revocation, until `shutdown`. NATS may be down: the
/// task keeps trying, and the revision in the bucket is the newest one the
/// server applied.
pub fn spawn_publisher(
    reloader: Arc<Reloader>,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut applied = reloader.watch_applied();
        loop {
            let config = match &config_path {
                Some(path) => RampartConfig::load(path).map(|c| c.with_overrides(&overrides)),
                None => Ok(RampartConfig::default().with_overrides(&overrides)),
            };
            let (outcome, data_dir) = match config {
                Ok(config) => (publish(&config).await, Some(config.data_dir.clone())),
                Err(e) => (Err(anyhow::anyhow!(e.to_string())), None),
            };
            let published_revoked = match outcome {
                Ok(revoked) => revoked,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "fleet: publishing the configuration revision failed; retrying in 5 s"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            // Revocations are made through the API or `rampart device revoke
            // --data-dir` (a file edit): the inventory is read every second.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = applied.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                    _ = tokio::time::sleep(REVOCATION_POLL) => {
                        let Some(dir) = &data_dir else { break };
                        let now = revoked_devices(dir);
                        if now.as_ref().ok() != Some(&published_revoked) {
                            break;
                        }
                    }
                }
            }
        }
    });
}

/// How often the server looks for new revocations to publish.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Publishes the revision `config` describes (unless the bucket has it
/// already); returns the revoked device ids it carries.
async fn publish(config: &RampartConfig) -> anyhow::Result<Vec<String>> {
    let revision = build_revision(config)?;
    let Some(url) = &config.fleet.nats else {
        return Ok(revision.revoked_devices);
    };
    let client = rampart_fleet::nats::connect(&NatsSettings::new(url, "rampart-server"), true)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let publisher = ConfigPublisher::new(client).await?;
    if let Some((_, current)) = publisher.current().await? {
        if current.id == revision.id {
            return Ok(revision.revoked_devices);
        }
    }
    publisher.publish(&revision).await?;
    tracing::info!(revision = %revision.id, revoked_devices = revision.revoked_devices.len(),
        "fleet: configuration revision published");
    Ok(revision.revoked_devices)
}

/// The ids of the devices revoked on this server (sorted).
fn revoked_devices(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let devices = crate::devices::Inventory::new(data_dir)
        .list()
        .context("reading the device inventory for the revoked devices")?;
    let mut revoked: Vec<String> = devices
        .into_iter()
        .filter(|d| d.revoked_at.is_some())
        .map(|d| d.id)
        .collect();
    revoked.sort();
    Ok(revoked)
}

/// The fleet's coaching key (32 random bytes, hex), made on first use and
/// kept in `DATA_DIR/fleet/coaching.key` (owner-only): every revision carries
/// the same one, so links stay valid across revisions and server restarts.
fn coaching_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("fleet").join("coaching.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().to_string();
        if decode_coaching_key(&key).is_ok() {
            return Ok(key);
        }
        tracing::warn!(path = %path.display(), "fleet: the coaching key file is damaged; making a new key");
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let key = hex::encode(bytes);
    crate::devices::write_atomic(&path, key.as_bytes(), 0o600)
        .with_context(|| format!("writing the fleet's coaching key {}", path.display()))?;
    Ok(key)
}

/// The 32 bytes of a revision's coaching key.
fn decode_coaching_key(key: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(key).context("the coaching key is not hex")?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the coaching key is {} bytes, not 32", bytes.len()))
}

/// The revision the server's configuration describes.
pub fn build_revision(config: &RampartConfig) -> anyhow::Result<ConfigRevision> {
    let gateway_config = match &config.fleet.gateway_config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading [fleet] gateway_config {}", path.display()))?,
        None => String::new(),
    };
    // Checked here so that a broken shared file never reaches the gateways.
    toml::from_str::<toml::Table>(&gateway_config)
        .context("[fleet] gateway_config is not valid TOML")?;
    let policy = match &config.policy.file {
        Some(path) => bundle_policy(path)?,
        None => PolicyBundle::default(),
    };
    let paths = config.tls.ca_paths(&config.data_dir);
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading the CA file {}", p.display()))
    };
    let ca = CaMaterial::from_pem(&read(&paths.cert)?, &read(&paths.key)?)?;
    let revision = ConfigRevision::new(
        gateway_config,
        policy,
        revoked_devices(&config.data_dir)?,
        coaching_key(&config.data_dir)?,
        ca,
    );
    let device_ca = (
        crate::devices::DeviceCa::cert_path(&config.data_dir),
        crate::devices::DeviceCa::key_path(&config.data_dir),
    );
    if !(device_ca.0.exists() && device_ca.1.exists()) {
        return Ok(revision);
    }
    let device_ca = CaMaterial::from_pem(&read(&device_ca.0)?, &read(&device_ca.1)?)
        .context("the device CA")?;
    Ok(revision.with_device_ca(device_ca))
}

/// The policy file and the files beside it (lists, category files), by their
/// path relative to the policy's directory; a policy directory whole.
fn bundle_policy(path: &Path) -> anyhow::Result<PolicyBundle> {
    let mut bundle = PolicyBundle::default();
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        bundle.policy = std::fs::read_to_string(path)
            .with_context(|| format!("reading the policy {}", path.display()))?;
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let mut total = bundle.policy.len();
    let mut pending = vec![dir.clone()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || p == path {
                continue;
            }
            if p.is_dir() {
                pending.push(p);
                continue;
            }
            let Ok(content) = std::fs::read_to_string(&p) else {
                continue; // not text: not a policy, list or category file
            };
            total += content.len();
            anyhow::ensure!(
                total <= MAX_BUNDLE_BYTES,
                "the policy and the files beside it exceed {} KiB, more than one NATS message carries; keep only the policy's own files in its directory",
                MAX_BUNDLE_BYTES / 1024
            );
            let relative = p
                .strip_prefix(&dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            bundle.files.insert(relative, content);
        }
    }
    Ok(bundle)
}

/// Consumes the fleet's events stream into the PostgreSQL fleet store until
/// `shutdown`, in the background: the server starts and serves while
/// PostgreSQL or NATS is still down (events wait in JetStream meanwhile).
pub fn spawn_event_consumer(
    nats: String,
    postgres: String,
    retention: Option<Duration>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let started = tokio::select! {
            _ = shutdown.cancelled() => return,
            started = start_event_consumer(&nats, &postgres, retention) => started,
        };
        match started {
            // Held until shutdown: dropping the consumer stops it.
            Ok(_consumer) => shutdown.cancelled().await,
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "fleet: events are not consumed into PostgreSQL"
            ),
        }
    });
}

/// The consumer acknowledges a batch only once PostgreSQL committed it: while
/// PostgreSQL is down events wait in JetStream.
async fn start_event_consumer(
    nats: &str,
    postgres: &str,
    retention: Option<Duration>,
) -> anyhow::Result<rampart_fleet::nats::EventConsumer> {
    let store = Arc::new(connect_store(postgres).await?);
    spawn_partition_upkeep(store.clone(), retention);
    // The consumer stamps each event with the gateway it came from (the
    // subject it was published on), so one search over the fleet says which
    // gateway saw what (`gateway = gw2`).
    let consumer = rampart_fleet::nats::EventConsumer::start(
        rampart_fleet::nats::ConsumerSettings::new(nats),
        store,
    )
    .await
    .with_context(|| format!("consuming the fleet's events from NATS at {nats}"))?;
    tracing::info!(nats, "fleet: consuming events into PostgreSQL");
    Ok(consumer)
}

/// Connects to the fleet store, waiting for PostgreSQL if it is not up yet.
async fn connect_store(url: &str) -> anyhow::Result<rampart_fleet::pg::FleetStore> {
    let mut logged = false;
    loop {
        match rampart_fleet::pg::FleetStore::connect(url).await {
            Ok(store) => return Ok(store),
            Err(e) if !logged => {
                tracing::warn!(error = %e, "fleet: PostgreSQL is not reachable yet; events wait in JetStream");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Creates the coming days' partitions ahead of their events and drops the
/// days older than `[events] max_age` (the fleet store keeps what the embedded
/// store would), at start and every hour.
fn spawn_partition_upkeep(store: Arc<rampart_fleet::pg::FleetStore>, retention: Option<Duration>) {
    tokio::spawn(async move {
        loop {
            let now = rampart_events::now_ms();
            if let Err(e) = store.maintain_partitions(now).await {
                tracing::warn!(error = %e, "fleet store: creating the coming days' partitions failed; inserts create them on demand");
            }
            if let Some(age) = retention {
                let days = (age.as_secs() / 86_400).max(1) as u32;
                match store.drop_partitions_older_than(days, now).await {
                    Ok(dropped) if !dropped.is_empty() => {
                        tracing::info!(partitions = %dropped.join(", "), "fleet store: retention dropped old days")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet store: retention failed; retrying in an hour")
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

// --------------------------------------------------------------- gateway --

/// Publishes every event the gateway stores to the fleet's events stream.
/// The publisher spools to `DATA_DIR/spool/nats-events` while NATS is
/// unreachable and replays in order; JetStream drops a re-sent event by its id.
///
/// The forwarder reads the gateway's own store from a cursor, the sequence
/// number of the last event handed to the publisher (acknowledged by JetStream
/// or in its spool), kept in `DATA_DIR/fleet/published-seq`. A gateway killed
/// between its local commit and the publish sends those events after its
/// restart: it resumes from the cursor. The cursor is written after each
/// publish without an fsync: after a power cut it may be behind, and the
/// events sent again are dropped as copies (by `Nats-Msg-Id` in JetStream,
/// by event id in PostgreSQL).
pub async fn start_event_forwarder(
    pipeline: &rampart_events::Pipeline,
    nats: &str,
    gateway_id: &str,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let publisher = rampart_fleet::nats::EventPublisher::start(
        rampart_fleet::nats::PublisherSettings::new(nats, gateway_id, data_dir.to_path_buf()),
    )
    .await
    .with_context(|| format!("publishing events to NATS at {nats}"))?;
    let db = pipeline.db_path().to_path_buf();
    let reader = rampart_events::StoreReader::open(&db)
        .with_context(|| format!("opening the gateway's event store {}", db.display()))?;
    let cursor = PublishCursor::open(&data_dir.join("fleet").join("published-seq"), &reader)?;
    // The store's commits wake the forwarder (coalesced: one pending wake-up
    // is enough, the forwarder reads everything after its cursor).
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    pipeline.set_stored_hook(Arc::new(WakeOnStored(wake)));
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("rampart-fleet-forward".into())
        .spawn(move || forward(reader, cursor, publisher, woken, runtime))
        .context("starting the fleet event forwarder")?;
    Ok(())
}

/// Events read from the store per publish.
const FORWARD_BATCH: usize = 5000;

/// The forwarder's loop: publish what the store holds after the cursor, then
/// move the cursor; wait for a commit (or a second) when there is nothing.
/// Events go out in their stored form, several per JetStream message: the
/// forwarder neither decodes nor re-renders them.
fn forward(
    reader: rampart_events::StoreReader,
    mut cursor: PublishCursor,
    publisher: rampart_fleet::nats::EventPublisher,
    woken: std::sync::mpsc::Receiver<()>,
    runtime: tokio::runtime::Handle,
) {
    loop {
        let batch = match reader.stored_after(cursor.seq, FORWARD_BATCH) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "fleet: reading the event store to forward failed; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(&(last, _)) = batch.last() else {
            match woken.recv_timeout(Duration::from_secs(1)) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                _ => continue,
            }
        };
        let stored: Vec<Vec<u8>> = batch.into_iter().map(|(_, s)| s).collect();
        match runtime.block_on(publisher.publish_stored(&stored)) {
            Ok(_) => cursor.advance(last),
            Err(e) => {
                tracing::error!(error = %e, events = stored.len(),
                    "fleet: events could not be published or spooled; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The sequence number of the last event handed to the publisher, on disk.
struct PublishCursor {
    path: PathBuf,
    seq: i64,
}

impl PublishCursor {
    /// The saved cursor; without one (a new gateway) the store's newest event:
    /// what an older version or the all-in-one role stored is not sent.
    fn open(path: &Path, reader: &rampart_events::StoreReader) -> anyhow::Result<PublishCursor> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let saved = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok());
        let mut cursor = PublishCursor {
            path: path.to_path_buf(),
            seq: 0,
        };
        match saved {
            Some(seq) => cursor.seq = seq,
            None => {
                let seq = reader
                    .last_seq()
                    .context("reading the event store's newest sequence number")?;
                cursor.advance(seq);
            }
        }
        Ok(cursor)
    }

    fn advance(&mut self, seq: i64) {
        self.seq = seq;
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{seq}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            // Not fatal: the events are published; after a restart the ones
            // since the saved cursor are sent again and dropped as copies.
            tracing::warn!(error = %e, path = %self.path.display(), "fleet: saving the publish cursor failed");
        }
    }
}

struct WakeOnStored(std::sync::mpsc::SyncSender<()>);

impl rampart_events::pipeline::StoredHook for WakeOnStored {
    fn stored(&self, _events: &[rampart_events::store::PreparedEvent]) {
        // Full: a wake-up is pending already.
        let _ = self.0.try_send(());
    }
}

/// This gateway's id in the fleet.
pub fn gateway_id(config: &FleetConfig) -> anyhow::Result<String> {
    match &config.gateway_id {
        Some(id) => Ok(id.clone()),
        None => host_name(),
    }
}

/// A gateway's side of the fleet: the watcher, and the reloader it applies
/// revisions through once the gateway runs.
pub struct FleetGateway {
    watcher: Arc<ConfigWatcher>,
    reloader: Arc<OnceLock<Arc<Reloader>>>,
    /// The revision's revoked device ids: the agent tunnel's admission.
    revoked: Arc<rampart_gateway::tunnel::RevokedDevices>,
    /// The revision's coaching key, and the running gateway to give it to.
    coaching: Arc<CoachingKeySlot>,
    /// The merged configuration file the gateway runs (and reloads) from.
    pub config_path: PathBuf,
}

impl FleetGateway {
    /// Starts watching the fleet's revisions and waits until one is applied
    /// (the last good one from disk at once, else the first from NATS): a
    /// gateway without the fleet's configuration must not serve.
    pub async fn start(local_path: &Path, local: &RampartConfig) -> anyhow::Result<FleetGateway> {
        let url = local
            .fleet
            .nats
            .clone()
            .context("[fleet] nats is not set")?;
        let id = gateway_id(&local.fleet)?;
        let state_dir = local.data_dir.join("fleet");
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let reloader: Arc<OnceLock<Arc<Reloader>>> = Arc::new(OnceLock::new());
        let revoked = Arc::new(rampart_gateway::tunnel::RevokedDevices::new());
        let coaching = Arc::new(CoachingKeySlot::default());
        let applier = Applier {
            local_path: local_path.to_path_buf(),
            ca_key: local.tls.ca_paths(&local.data_dir).key,
            device_ca_key: crate::devices::DeviceCa::key_path(&local.data_dir),
            state_dir: state_dir.clone(),
            reloader: reloader.clone(),
            revoked: revoked.clone(),
            coaching: coaching.clone(),
        };
        let watcher = ConfigWatcher::start(
            WatcherSettings::new(&url, &id, state_dir.clone()),
            move |revision: &ConfigRevision| applier.apply(revision),
        )
        .await
        .with_context(|| format!("starting the fleet watcher (NATS at {url})"))?;
        let mut status = watcher.subscribe();
        loop {
            if watcher.applied().is_some() {
                break;
            }
            if let Some(rejected) = &status.borrow().rejected {
                tracing::error!(revision = %rejected.id, error = %rejected.error,
                    "fleet: the configuration revision was rejected; waiting for a good one");
            }
            tracing::info!(nats = %url, gateway = %id,
                "fleet: waiting for the fleet's first configuration revision");
            let _ = tokio::time::timeout(Duration::from_secs(10), status.changed()).await;
        }
        Ok(FleetGateway {
            watcher: Arc::new(watcher),
            reloader,
            revoked,
            coaching,
            config_path: state_dir.join("rampart.toml"),
        })
    }

    /// Apply later revisions through this reloader (the running gateway's).
    pub fn set_reloader(&self, reloader: Arc<Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    /// The running gateway: it signs coaching links with the fleet's key from
    /// now on (the one of the revision applied at start, then each new one).
    pub fn set_gateway(&self, gateway: rampart_gateway::GatewayHandle) {
        self.coaching.set_gateway(gateway);
    }

    /// Who may use this gateway's agent tunnel: any device of the fleet's
    /// device CA that the newest revision does not list as revoked.
    pub fn admission(&self) -> Arc<dyn rampart_gateway::tunnel::DeviceAdmission> {
        self.revoked.clone()
    }

    /// Sends the gateway's load with its heartbeats (open connections and
    /// CPU, for `rampart fleet status`), refreshed every 5 s.
    pub fn report_load(&self, gateway: rampart_gateway::GatewayHandle) {
        // Weak: the reports stop when the gateway drops its watcher.
        let watcher = Arc::downgrade(&self.watcher);
        tokio::spawn(async move {
            let mut cpu = CpuMeter::new();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let load = rampart_fleet::nats::GatewayLoad {
                    active_connections: gateway.connections_active(),
                    cpu_percent: cpu.percent_since_last(),
                    ..Default::default()
                };
                match watcher.upgrade() {
                    Some(w) => w.set_load(load),
                    None => return,
                }
            }
        });
    }
}

/// This process's CPU use between two readings of `/proc/self/stat`, in
/// percent of one CPU.
struct CpuMeter {
    last: Option<(u64, std::time::Instant)>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        let mut meter = CpuMeter { last: None };
        meter.percent_since_last();
        meter
    }

    fn percent_since_last(&mut self) -> f64 {
        let now = std::time::Instant::now();
        let Some(ticks) = process_cpu_ticks() else {
            return 0.0;
        };
        let percent = match self.last {
            Some((before, at)) => {
                // Linux reports in clock ticks of 1/100 s (USER_HZ).
                let used = ticks.saturating_sub(before) as f64 / 100.0;
                let wall = now.duration_since(at).as_secs_f64().max(1e-3);
                (used / wall * 100.0 * 10.0).round() / 10.0
            }
            None => 0.0,
        };
        self.last = Some((ticks, now));
        percent
    }
}

/// utime + stime of this process, in clock ticks.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The fleet's coaching key, held until the gateway runs (the first revision
/// is applied before it exists).
#[derive(Default)]
struct CoachingKeySlot {
    state: Mutex<(Option<[u8; 32]>, Option<rampart_gateway::GatewayHandle>)>,
}

impl CoachingKeySlot {
    fn set_key(&self, key: [u8; 32]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = Some(key);
        if let Some(gateway) = &state.1 {
            gateway.set_coaching_key(key);
        }
    }

    fn set_gateway(&self, gateway: rampart_gateway::GatewayHandle) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = state.0 {
            gateway.set_coaching_key(key);
        }
        state.1 = Some(gateway);
    }
}

/// Turns a revision into the gateway's running configuration.
struct Applier {
    local_path: PathBuf,
    ca_key: PathBuf,
    /// `DATA_DIR/devices/ca.key`: present when this gateway serves agents.
    device_ca_key: PathBuf,
    state_dir: PathBuf,
    reloader: Arc<OnceLock<Arc<Reloader>>>,
    revoked: Arc<rampart_gateway::tunnel::RevokedDevices>,
    coaching: Arc<CoachingKeySlot>,
}

impl Applier {
    fn apply(&self, revision: &ConfigRevision) -> Result<(), String> {
        // Revocations first, whatever becomes of the rest: a revision this
        // gateway cannot apply (a bad shared file, a CA it lacks) must not keep
        // a revoked device in. A revocation is never undone, so taking the
        // list of a rejected revision cannot let anyone in.
        self.revoked
            .replace(revision.revoked_devices.iter().cloned());
        self.apply_inner(revision).map_err(|e| format!("{e:#}"))
    }

    fn apply_inner(&self, revision: &ConfigRevision) -> anyhow::Result<()> {
        let key = std::fs::read_to_string(&self.ca_key)
            .with_context(|| format!("reading this gateway's CA key {}", self.ca_key.display()))?;
        revision.ca.check_key(&key)?;
        if let (Some(device_ca), Ok(device_key)) = (
            &revision.device_ca,
            std::fs::read_to_string(&self.device_ca_key),
        ) {
            device_ca.check_key(&device_key).with_context(|| {
                format!(
                    "the device CA key {} is not the fleet's",
                    self.device_ca_key.display()
                )
            })?;
        }
        let coaching_key = match revision.coaching_key.as_str() {
            "" => None,
            key => Some(decode_coaching_key(key)?),
        };
        let dir = self.state_dir.join(format!("rev-{}", revision.id));
        let merged = self.write_revision(revision, &dir)?;
        // The same checks a reload makes, before anything changes.
        let config = RampartConfig::load(&merged)?;
        crate::reload::load_policy(&config.policy)?;
        let running = self.state_dir.join("rampart.toml");
        let previous = std::fs::read(&running).ok();
        replace_file(&running, &std::fs::read(&merged)?)?;
        if let Some(reloader) = self.reloader.get() {
            let outcome = reloader.reload_blocking(Trigger::Fleet, &ReloadOptions::default());
            if let Err(e) = outcome.result {
                if let Some(previous) = previous {
                    replace_file(&running, &previous)?;
                }
                anyhow::bail!("{e}");
            }
        }
        if let Some(key) = coaching_key {
            self.coaching.set_key(key);
        }
        self.remove_old_revisions(&dir);
        tracing::info!(revision = %revision.id, revoked_devices = revision.revoked_devices.len(),
            "fleet: configuration revision applied");
        Ok(())
    }

    /// Writes the policy files and the merged configuration under `dir`;
    /// returns the merged file.
    fn write_revision(&self, revision: &ConfigRevision, dir: &Path) -> anyhow::Result<PathBuf> {
        let _ = std::fs::remove_dir_all(dir);
        let policy_dir = dir.join("policy");
        std::fs::create_dir_all(&policy_dir)
            .with_context(|| format!("creating {}", policy_dir.display()))?;
        for (relative, content) in &revision.policy.files {
            let path = policy_dir.join(relative);
            anyhow::ensure!(
                path.starts_with(&policy_dir) && !relative.contains(".."),
                "the revision names a file outside its policy directory: {relative}"
            );
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let policy_path = if revision.policy.policy.is_empty() {
            policy_dir.clone()
        } else {
            let p = policy_dir.join("policy.toml");
            std::fs::write(&p, &revision.policy.policy)?;
            p
        };
        let mut merged: toml::Table = toml::from_str(&revision.gateway_config)
            .context("the revision's gateway configuration is not valid TOML")?;
        let local_text = std::fs::read_to_string(&self.local_path)
            .with_context(|| format!("reading {}", self.local_path.display()))?;
        let local: toml::Table = toml::from_str(&local_text)
            .with_context(|| format!("{} is not valid TOML", self.local_path.display()))?;
        lay_over(&mut merged, local);
        if !revision.policy.policy.is_empty() || !revision.policy.files.is_empty() {
            merged.insert(
                "policy".into(),
                toml::Value::String(policy_path.display().to_string()),
            );
        }
        let path = dir.join("rampart.toml");
        std::fs::write(&path, toml::to_string(&merged)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Keeps the newest revision directories (the running one and the one
    /// before it, for a look after a rejected reload).
    fn remove_old_revisions(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
            return;
        };
        let mut revisions: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rev-"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        revisions.sort();
        let excess = revisions.len().saturating_sub(2);
        for (_, path) in revisions.into_iter().take(excess) {
            if path != keep {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

/// `local` laid over `base`: tables merge key by key, anything else in
/// `local` replaces what `base` has.
fn lay_over(base: &mut toml::Table, local: toml::Table) {
    for (key, value) in local {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => lay_over(b, l),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Write through a temporary file and a rename: a reader sees the old file or
/// the new one.
fn replace_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name for [fleet] gateway_id (or set it)")?;
    let id: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    anyhow::ensure!(
        !id.is_empty(),
        "the host name is empty: set [fleet] gateway_id"
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_own_file_wins_over_the_fleets_key_by_key() {
        let mut base: toml::Table = toml::from_str(
            "[proxy]\nlisten = \"0.0.0.0:3128\"\nallow = [\"10.0.0.0/8\"]\n[tls]\ndo_not_decrypt = [\"bank.example\"]\n",
        )
        .unwrap();
        let local: toml::Table = toml::from_str(
            "data_dir = \"/var/lib/rampart\"\n[proxy]\nlisten = \"10.0.0.7:3128\"\n",
        )
        .unwrap();
        lay_over(&mut base, local);
        assert_eq!(base["proxy"]["listen"].as_str(), Some("10.0.0.7:3128"));
        assert_eq!(base["proxy"]["allow"][0].as_str(), Some("10.0.0.0/8"));
        assert_eq!(
            base["tls"]["do_not_decrypt"][0].as_str(),
            Some("bank.example")
        );
        assert_eq!(base["data_dir"].as_str(), Some("/var/lib/rampart"));
    }

    #[test]
    fn the_coaching_key_is_made_once_owner_only_and_decodes_to_32_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = coaching_key(dir.path()).unwrap();
        assert_eq!(coaching_key(dir.path()).unwrap(), key, "kept across calls");
        assert_eq!(decode_coaching_key(&key).unwrap().len(), 32);
        let mode = std::fs::metadata(dir.path().join("fleet/coaching.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(decode_coaching_key("abcd").is_err());
        assert!(decode_coaching_key("not hex").is_err());
    }

    #[test]
    fn the_publish_cursor_starts_at_the_newest_event_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, events) =
            rampart_events::Pipeline::start(dir.path(), &rampart_events::EventsConfig::default())
                .unwrap();
        for _ in 0..3 {
            events.send(rampart_events::device_event(
                rampart_events::DeviceActivity::Enrolled,
                "dev-1",
                None,
                None,
                None,
                rampart_events::now_ms(),
            ));
        }
        assert!(pipeline.wait_stored(3, Duration::from_secs(10)));
        let reader = rampart_events::StoreReader::open(pipeline.db_path()).unwrap();
        let path = dir.path().join("fleet/published-seq");
        let mut cursor = PublishCursor::open(&path, &reader).unwrap();
        let newest = reader.last_seq().unwrap();
        assert_eq!(
            cursor.seq, newest,
            "a new gateway does not send its history"
        );
        cursor.advance(newest - 2);
        let reopened = PublishCursor::open(&path, &reader).unwrap();
        assert_eq!(reopened.seq, newest - 2, "resumes where it was");
        pipeline.close();
    }

    #[test]
    fn a_policy_bundle_keeps_relative_names_and_skips_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), "# p\n").unwrap();
        std::fs::create_dir(dir.path().join("lists")).unwrap();
        std::fs::write(dir.path().join("lists/news.txt"), "news.test\n").unwrap();
        std::fs::write(dir.path().join(".policy.toml.swp"), "x").unwrap();
        let bundle = bundle_policy(&dir.path().join("policy.toml")).unwrap();
        assert_eq!(bundle.policy, "# p\n");
        assert_eq!(
            bundle.files.keys().cloned().collect::<Vec<_>>(),
            vec!["lists/news.txt".to_string()]
        );
    }
}
