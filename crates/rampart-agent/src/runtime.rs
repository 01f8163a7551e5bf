//! Starting and stopping the agent: listeners, the steering table, the agent log.

use crate::agent_log::{AgentLog, Level};
use crate::attribution::{Attributor, ProcessAttribution};
use crate::config::{AgentConfig, SteeringMode};
use crate::connector::Connector;
use crate::enrollment::Enrollment;
use crate::error::AgentError;
use crate::flow::{CounterSnapshot, Counters, FlowContext};
use crate::mtls_tunnel::MtlsH2Tunnel;
use crate::server_config::{LiveSteering, ServerConfig, SyncHandle};
use crate::status::AgentStatus;
use crate::steering::{ExceptionPolicy, FailPolicy, SteeringPolicy};
use crate::steering_table::{SteeringTable, TableSpec};
use crate::tunnel::{GatewayTunnel, HttpProxyTunnel};
use crate::uploader::Uploader;
use crate::{local_proxy, transparent};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Builds an agent from its config, with optional replacements for the seams.
pub struct AgentBuilder {
    config: AgentConfig,
    policy: Option<Arc<dyn SteeringPolicy>>,
    tunnel: Option<Arc<dyn GatewayTunnel>>,
    attribution: Option<Arc<dyn ProcessAttribution>>,
}

impl AgentBuilder {
    pub fn new(config: AgentConfig) -> Self {
        AgentBuilder {
            config,
            policy: None,
            tunnel: None,
            attribution: None,
        }
    }

    /// Replace the config's exception list (e.g. with the policy crate's steering stage).
    pub fn policy(mut self, policy: Arc<dyn SteeringPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Replace the HTTP proxy chain (e.g. with the mTLS HTTP/2 tunnel).
    pub fn tunnel(mut self, tunnel: Arc<dyn GatewayTunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Replace process attribution (other platforms).
    pub fn attribution(mut self, attribution: Arc<dyn ProcessAttribution>) -> Self {
        self.attribution = Some(attribution);
        self
    }

    /// Bind listeners, install the steering table (transparent mode) and start serving.
    pub async fn start(self) -> Result<RunningAgent, AgentError> {
        let config = self.config;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let log = Arc::new(AgentLog::open(
            &config.log_path(),
            config.log.max_bytes,
            config.log.keep,
        )?);
        // Before anything is steered, the kernel matches the persisted isolation state:
        // an agent killed while isolated finds its table, a crash mid-release ends it.
        reapply_isolation(&config.data_dir, &log).await?;
        crate::relay::raise_fd_limit();
        crate::relay::keep_freed_heap();
        let transparent = config.steering.mode == SteeringMode::Transparent;
        let connector = Connector {
            mark: transparent.then_some(config.transparent.mark),
            timeout: config.gateway.connect_timeout,
        };
        let policy = self.policy.unwrap_or_else(|| {
            Arc::new(ExceptionPolicy::new(
                &config.steering.exceptions,
                config.steering.default,
            ))
        });
        let enrollment = Enrollment::load(&config.data_dir)?;
        // The control plane (configuration, uploads) rides the enrolled agent's tunnel.
        let mut control: Option<Arc<MtlsH2Tunnel>> = None;
        let tunnel: Arc<dyn GatewayTunnel> = match (self.tunnel, &enrollment) {
            (Some(tunnel), _) => tunnel,
            (None, Some(enrollment)) => {
                let mtls = Arc::new(
                    MtlsH2Tunnel::from_enrollment(
                        &config.data_dir,
                        enrollment,
                        connector,
                        Some(Arc::clone(&log)),
                    )?
                    .with_keepalive(config.gateway.keepalive),
                );
                control = Some(Arc::clone(&mtls));
                mtls
            }
            (None, None) if config.gateway.proxy.is_empty() => {
                return Err(AgentError::ConfigInvalid {
                    origin: "agent config".into(),
                    message: "gateway.proxy is required until the agent is enrolled \
                              (rampart agent enroll --server URL --token T)"
                        .into(),
                })
            }
            (None, None) => Arc::new(HttpProxyTunnel::new(
                config.gateway.proxy.clone(),
                connector,
            )),
        };
        let gateway_label = match &enrollment {
            Some(e) => format!("{} (mTLS tunnel, device {})", e.gateway, e.device_id),
            None => config.gateway.proxy.clone(),
        };
        let attribution = self
            .attribution
            .unwrap_or_else(|| Attributor::new(config.attribution.cache_ttl));
        let live = LiveSteering::new(
            policy,
            FailPolicy::new(config.gateway.fail_mode, &config.gateway.fail_closed_allow),
        );
        let sync = Arc::new(SyncHandle::default());
        sync.status.lock().unwrap_or_else(|p| p.into_inner()).source = "local agent.toml".into();
        let uploader = match &control {
            Some(_) => Some(Uploader::open(
                &config.data_dir,
                config.sync.spool_max_bytes,
            )?),
            None => None,
        };
        if control.is_some() {
            // A restart while the server is unreachable keeps the last good config.
            if let Some(saved) = ServerConfig::load_persisted(&config.data_dir) {
                crate::server_config::apply(
                    &saved,
                    &config,
                    &live,
                    &sync,
                    &log,
                    "server (persisted)",
                );
            }
        }
        let ctx = Arc::new(FlowContext {
            live: Arc::clone(&live),
            tunnel: Arc::clone(&tunnel),
            attribution,
            log: Arc::clone(&log),
            uploader: uploader.clone(),
            connector,
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(control) = &control {
            tasks.extend(crate::update::spawn_listener(
                Arc::clone(&sync),
                stopped.clone(),
            ));
            tasks.push(tokio::spawn(crate::server_config::run_sync(
                Arc::clone(control),
                config.clone(),
                Arc::clone(&live),
                Arc::clone(&sync),
                Arc::clone(&log),
                config.sync.poll_interval,
                stopped.clone(),
            )));
            if let Some(enrollment) = &enrollment {
                // Isolation commanded by the server: long-polled, applied at once.
                let (docs_tx, docs_rx) =
                    watch::channel(crate::isolation_sync::IsolationDoc::load(&config.data_dir));
                tasks.push(tokio::spawn(crate::isolation_sync::run_fetch(
                    Arc::clone(control),
                    config.data_dir.clone(),
                    docs_tx,
                    stopped.clone(),
                )));
                tasks.push(tokio::spawn(crate::isolation_sync::run_enforce(
                    Arc::clone(control),
                    config.data_dir.clone(),
                    crate::isolation_sync::Home::of(enrollment).with_connector(connector),
                    Arc::clone(&log),
                    docs_rx,
                    stopped.clone(),
                )));
            }
            if let Some(uploader) = &uploader {
                tasks.push(tokio::spawn(Arc::clone(uploader).run(
                    Arc::clone(control),
                    Arc::clone(&log),
                    config.sync.upload_interval,
                    stopped.clone(),
                )));
            }
        }
        let mut listen = Vec::new();
        let mut table = None;
        if transparent {
            let port = config.transparent.port;
            // REDIRECT sends locally generated IPv4 flows to 127.0.0.1 and IPv6 to ::1.
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let listener = TcpListener::bind(v4)
                .await
                .map_err(|source| AgentError::Bind {
                    what: "transparent steering",
                    addr: v4,
                    source,
                })?;
            listen.push(v4);
            tasks.push(tokio::spawn(transparent::serve(
                listener,
                Arc::clone(&ctx),
                config.transparent.sniff_timeout,
                stopped.clone(),
            )));
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            match TcpListener::bind(v6).await {
                Ok(listener) => {
                    listen.push(v6);
                    tasks.push(tokio::spawn(transparent::serve(
                        listener,
                        Arc::clone(&ctx),
                        config.transparent.sniff_timeout,
                        stopped.clone(),
                    )));
                }
                // Hosts without IPv6 loopback have no IPv6 flows to steer either.
                Err(err) => tracing::info!(%err, "no IPv6 transparent listener"),
            }
            let spec = TableSpec {
                name: config.transparent.table.clone(),
                port,
                mark: config.transparent.mark,
                exclude_uid: config.transparent.exclude_uid,
                steer_all: config.steering.steer_all,
            };
            match SteeringTable::install(spec) {
                Ok(installed) => table = Some(installed),
                Err(err) => {
                    let _ = stop.send(true);
                    return Err(err);
                }
            }
        } else {
            let addr = config.local_proxy.listen;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind {
                    what: "the local proxy",
                    addr,
                    source,
                })?;
            let bound = listener.local_addr().unwrap_or(addr);
            listen.push(bound);
            tasks.push(tokio::spawn(local_proxy::serve(
                listener,
                Arc::clone(&ctx),
                stopped.clone(),
            )));
        }
        let mode = if transparent {
            if config.steering.steer_all {
                "transparent (steer all TCP)"
            } else {
                "transparent"
            }
        } else {
            "local proxy"
        };
        let addresses: Vec<String> = listen.iter().map(ToString::to_string).collect();
        log.write(
            Level::Info,
            &format!(
                "Agent started in {mode} mode on {}, gateway: {gateway_label}",
                addresses.join(", "),
            ),
        );
        let status = AgentStatus {
            pid: std::process::id(),
            running: true,
            mode: mode.to_string(),
            listen: addresses,
            gateway: gateway_label,
            enrolled: enrollment.is_some(),
            device_id: enrollment.as_ref().map(|e| e.device_id.clone()),
            user: enrollment.as_ref().and_then(|e| e.user.clone()),
            tunnel: String::new(),
            config_revision: "local agent.toml".into(),
            counters: CounterSnapshot::default(),
            sync: Default::default(),
            uploads_pending: 0,
            uploads_sent: 0,
            uploads_dropped: 0,
            updated: String::new(),
        };
        tasks.push(tokio::spawn(report_status(
            status,
            config.data_dir.clone(),
            Arc::clone(&ctx),
            tunnel,
            sync,
            stopped.clone(),
        )));
        Ok(RunningAgent {
            ctx,
            log,
            stop,
            tasks,
            table,
            listen,
        })
    }
}

/// `reapply_at_start` on a blocking thread, logged. A failure while the
/// device is meant to be isolated stops the start: steering must never come up
/// around an isolation that is wanted and not in place (fail closed; the
/// service manager retries). A failure while released is only logged.
async fn reapply_isolation(data_dir: &std::path::Path, log: &AgentLog) -> Result<(), AgentError> {
    let dir = data_dir.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || {
        crate::isolation::reapply_at_start(&dir, &crate::isolation::Isolator::default())
    })
    .await;
    let failure = match &outcome {
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
        Ok(Ok(_)) => None,
    };
    if let Some(failure) = failure {
        let wanted = matches!(
            crate::isolation::state::load(data_dir),
            Ok(Some(crate::isolation::IsolationState {
                desired: crate::isolation::Desired::Isolated { .. },
                ..
            }))
        );
        if wanted {
            let err = AgentError::IsolationNotApplied(failure);
            log.write(Level::Warn, &err.to_string());
            return Err(err);
        }
    }
    match outcome {
        Ok(Ok(Some(o))) => log.write(
            Level::Info,
            &format!(
                "Isolation at start: {} (kernel had {:?}; re-applied: {}; leftover table removed: {})",
                o.status.as_str(),
                o.found,
                o.applied.is_some(),
                o.released
            ),
        ),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => log.write(
            Level::Warn,
            &format!("Isolation could not be re-applied at start: {e}"),
        ),
        Err(e) => log.write(Level::Warn, &format!("Isolation check at start failed: {e}")),
    }
    Ok(())
}

/// How often `status.json` is rewritten.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Rewrites `status.json` until the agent stops, then marks it stopped.
async fn report_status(
    mut status: AgentStatus,
    data_dir: PathBuf,
    ctx: Arc<FlowContext>,
    tunnel: Arc<dyn GatewayTunnel>,
    sync: Arc<SyncHandle>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        status.counters = ctx.counters.snapshot();
        status.sync = sync.snapshot();
        status.config_revision = if status.sync.revision.is_empty() {
            "local agent.toml".to_string()
        } else {
            status.sync.revision.clone()
        };
        if let Some(uploader) = &ctx.uploader {
            status.uploads_pending = uploader.pending();
            status.uploads_sent = uploader.sent.load(std::sync::atomic::Ordering::Relaxed);
            status.uploads_dropped = uploader.dropped.load(std::sync::atomic::Ordering::Relaxed);
        }
        status.tunnel = match tunnel.is_up() {
            Some(true) => "up",
            Some(false) => "down",
            None => "per-flow",
        }
        .to_string();
        status.updated = crate::status::now_rfc3339();
        status.running = !*stopped.borrow();
        if let Err(err) = status.write(&data_dir) {
            tracing::warn!(%err, "cannot write agent status file");
        }
        if !status.running {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            // A fetch completed (`agent update` waits for it to show).
            _ = sync.changed.notified() => {}
            _ = stopped.changed() => {}
        }
    }
}

/// A started agent. Call [`RunningAgent::shutdown`] to stop it and remove its table;
/// dropping it also removes the table.
pub struct RunningAgent {
    ctx: Arc<FlowContext>,
    log: Arc<AgentLog>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    table: Option<SteeringTable>,
    listen: Vec<SocketAddr>,
}

impl RunningAgent {
    /// Bound listener addresses (the local proxy's, or the transparent ones).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Decision counters so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.ctx.counters.snapshot()
    }

    /// Stop accepting, and delete the steering table. Established flows end with the
    /// runtime.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let removed = match self.table.take() {
            Some(table) => table.remove(),
            None => Ok(()),
        };
        self.log.write(Level::Info, "Agent stopped");
        removed
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Run the agent in the foreground until SIGINT or SIGTERM, then remove the steering
/// table and return. This is what `rampart agent run` calls.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let agent = AgentBuilder::new(config).start().await?;
    wait_for_signal().await;
    agent.shutdown().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
