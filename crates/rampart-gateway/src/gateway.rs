//! The gateway as a whole: binds the proxy listener, owns the current
//! configuration generation, reloads it atomically and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::GatewayConfig;
use crate::destination::ListenerRegistry;
use crate::error::ConfigError;
use crate::metrics::{KindLabels, Metrics};
use crate::proxy::Shared;
use crate::state::GatewayState;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
}

/// A bound, not yet running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    instance_id: String,
    listeners: ListenerRegistry,
}

/// Cheap handle for reloads and metrics while the gateway runs.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
    instance_id: String,
    listen: SocketAddr,
    listeners: ListenerRegistry,
}

impl Gateway {
    /// Validates `config`, opens the access log and binds the proxy listener.
    pub async fn bind(
        config: GatewayConfig,
        metrics: Arc<Metrics>,
        events: Option<rampart_events::EventSender>,
    ) -> Result<Self, GatewayError> {
        let instance_id = random_instance_id();
        let requested = config.proxy.listen;
        let listener = crate::listener::bind(requested).map_err(|source| GatewayError::Bind {
            addr: requested,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: requested,
            source,
        })?;
        let mut config = config;
        // With port 0 the real port is only known now; loop protection needs it.
        config.proxy.listen = local_addr;
        let access_log = AccessLog::start(&config.access_log, &config.data_dir)
            .map_err(GatewayError::AccessLog)?;
        let logins = Arc::new(crate::admission::Logins::new(
            config.proxy.auth_verify_concurrency,
            metrics.clone(),
        ));
        let listeners = config.listener_registry.clone();
        // Read after `raise_fd_limit` (the CLI calls it before the runtime starts).
        let plan = crate::fd_budget::DescriptorPlan::current(config.api_connections as u64)
            .map_err(config_error)?;
        plan.check_max_connections(config.limits.max_connections)
            .map_err(config_error)?;
        tracing::info!(
            limit = plan.limit,
            headroom = plan.headroom,
            api = plan.api,
            data_path = plan.data_path,
            max_connections = config
                .limits
                .max_connections
                .unwrap_or(plan.max_connections()),
            "descriptor budget"
        );
        warn_if_open_to_all(&config);
        let state = GatewayState::new(config, &instance_id)?;
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            metrics,
            access_log,
            events,
            tunnels: TaskTracker::new(),
            coaching: Arc::new(crate::coaching::Coaching::new()),
            logins,
            descriptors: crate::fd_budget::FdBudget::new(plan),
        });
        Ok(Gateway {
            shared,
            listener,
            local_addr,
            instance_id,
            listeners,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
            instance_id: self.instance_id.clone(),
            listen: self.local_addr,
            listeners: self.listeners.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains requests and tunnels
    /// for up to `[limits] shutdown_grace`.
    pub async fn run(self, shutdown: CancellationToken) {
        let started = tokio::time::Instant::now();
        crate::listener::serve(self.listener, self.shared.clone(), shutdown).await;
        let grace = self.shared.state.load().config.limits.shutdown_grace;
        let remaining = grace.saturating_sub(started.elapsed().min(grace));
        self.shared.tunnels.close();
        let tunnels = self.shared.tunnels.len();
        if tunnels > 0 {
            tracing::info!(tunnels, "waiting for open tunnels to finish");
            if tokio::time::timeout(remaining, self.shared.tunnels.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    tunnels = self.shared.tunnels.len(),
                    "closing tunnels still open at the end of the grace period"
                );
            }
        }
    }
}

impl GatewayHandle {
    /// The live state the agent tunnel listener shares with the proxy listener.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Compiles `config` and swaps it in. On error nothing changes and the
    /// current configuration keeps serving.
    pub fn reload(&self, mut config: GatewayConfig) -> Result<(), ConfigError> {
        if config.proxy.listen != self.listen
            && !(config.proxy.listen.port() == 0 && config.proxy.listen.ip() == self.listen.ip())
        {
            tracing::warn!(old = %self.listen, new = %config.proxy.listen,
                "proxy.listen changed: a new listen address takes effect only after a restart");
        }
        config.proxy.listen = self.listen;
        let running = self
            .shared
            .state
            .load()
            .config
            .proxy
            .auth_verify_concurrency;
        if config.proxy.auth_verify_concurrency != running {
            tracing::warn!(
                old = running,
                new = config.proxy.auth_verify_concurrency,
                "proxy.auth_verify_concurrency changed: it takes effect only after a restart"
            );
        }
        config.listener_registry = self.listeners.clone();
        // The budget was fixed at start; a reload may move the cap within it only.
        if let Err(e) = self
            .shared
            .descriptors
            .plan()
            .check_max_connections(config.limits.max_connections)
        {
            self.reload_rejected();
            return Err(config_error(e));
        }
        warn_if_open_to_all(&config);
        let current = self.shared.state.load_full();
        match GatewayState::next(config, &self.instance_id, Some(&current)) {
            Ok(state) => {
                self.shared.state.store(Arc::new(state));
                self.shared
                    .metrics
                    .config_reloads
                    .get_or_create(&KindLabels { kind: "ok".into() })
                    .inc();
                Ok(())
            }
            Err(e) => {
                self.shared
                    .metrics
                    .config_reloads
                    .get_or_create(&KindLabels {
                        kind: "rejected".into(),
                    })
                    .inc();
                Err(e)
            }
        }
    }

    /// Adds a listener the process opened after the gateway started (the agent
    /// tunnel) to loop protection: the proxy never connects to it.
    pub fn register_listener(&self, addr: SocketAddr) {
        self.listeners.register(addr);
    }

    /// Counts a reload that failed before reaching the gateway (unreadable or unparsable file).
    pub fn reload_rejected(&self) {
        self.shared
            .metrics
            .config_reloads
            .get_or_create(&KindLabels {
                kind: "rejected".into(),
            })
            .inc();
    }

    /// Closes the access log and opens its path again (SIGUSR1: logrotate
    /// moved the file away).
    pub fn reopen_access_log(&self) {
        self.shared.access_log.reopen();
    }

    /// Brings state-derived gauges up to date; call before encoding metrics.
    pub fn refresh_metrics(&self) {
        let state = self.shared.state.load();
        self.shared
            .metrics
            .refresh_upstreams(state.connector.groups());
        self.shared
            .metrics
            .access_log_dropped
            .set(self.shared.access_log.dropped());
    }

    /// The policy serving now (follows reloads): the server derives the agents'
    /// steering configuration from it.
    pub fn policy(&self) -> Arc<rampart_policy::Policy> {
        self.shared.state.load().policy.clone()
    }

    /// `rampart_connections_rejected_total`: the family other listeners of the
    /// process (the API) count their refusals in, so there is one family.
    pub fn rejected_connections(
        &self,
    ) -> prometheus_client::metrics::family::Family<
        crate::metrics::RejectedLabels,
        prometheus_client::metrics::counter::Counter,
    > {
        self.shared.metrics.connections_rejected.clone()
    }

    pub fn tunnels_open(&self) -> usize {
        self.shared.tunnels.len()
    }

    /// Client connections open now (the `connections_active` gauge).
    pub fn connections_active(&self) -> u64 {
        self.shared.metrics.connections_active.get().max(0) as u64
    }

    /// Sign and check coaching "proceed" links with `key` (a fleet's shared
    /// key, so one gateway honours the links another showed).
    pub fn set_coaching_key(&self, key: [u8; 32]) {
        self.shared.coaching.set_key(key);
    }
}

/// A descriptor-budget error as a configuration error naming its key.
fn config_error(error: crate::fd_budget::BudgetError) -> ConfigError {
    let key = match error {
        crate::fd_budget::BudgetError::LimitTooLow { .. } => "RLIMIT_NOFILE",
        crate::fd_budget::BudgetError::MaxConnectionsTooHigh { .. } => "limits.max_connections",
    };
    ConfigError::Invalid {
        key: key.to_string(),
        reason: error.to_string(),
    }
}

/// A proxy reachable beyond loopback whose ACL admits every address and that
/// asks for no credentials is an open proxy in all but name: allowed (the
/// operator wrote it), but said loudly at every start and reload.
fn warn_if_open_to_all(config: &GatewayConfig) {
    let proxy = &config.proxy;
    let everyone = proxy.allow_networks.iter().any(|net| net.prefix_len() == 0);
    if !proxy.listen.ip().is_loopback() && everyone && !proxy.requires_authentication() {
        tracing::warn!(
            listen = %proxy.listen,
            "OPEN PROXY: [proxy] allow_networks admits every address ({}) and no users or \
             tokens are configured, so anyone who can reach {} may use this proxy; list your \
             client networks in allow_networks or add proxy authentication",
            proxy
                .allow_networks
                .iter()
                .filter(|net| net.prefix_len() == 0)
                .map(|net| net.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            proxy.listen
        );
    }
}

fn random_instance_id() -> String {
    let mut bytes = [0u8; 4];
    if getrandom_fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes = (nanos ^ std::process::id()).to_le_bytes();
    }
    hex::encode(bytes)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every tunnel holds two
/// sockets and two pipes, so the usual 1024 runs out fast.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some(hard)
}
