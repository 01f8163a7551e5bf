//! Starting and stopping the agent: listeners, the steering table, the agent log.

use crate::agent_log::{AgentLog, Level};
use crate::attribution::{Attributor, ProcessAttribution};
use crate::config::{AgentConfig, SteeringMode};
use crate::connector::Connector;
use crate::error::AgentError;
use crate::flow::{CounterSnapshot, Counters, FlowContext};
use crate::steering::{ExceptionPolicy, FailPolicy, SteeringPolicy};
use crate::steering_table::{SteeringTable, TableSpec};
use crate::tunnel::{GatewayTunnel, HttpProxyTunnel};
use crate::{local_proxy, transparent};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
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
        crate::relay::raise_fd_limit();
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
        let tunnel = self.tunnel.unwrap_or_else(|| {
            Arc::new(HttpProxyTunnel::new(
                config.gateway.proxy.clone(),
                connector,
            ))
        });
        let attribution = self
            .attribution
            .unwrap_or_else(|| Attributor::new(config.attribution.cache_ttl));
        let ctx = Arc::new(FlowContext {
            policy,
            tunnel,
            attribution,
            log: Arc::clone(&log),
            fail: FailPolicy::new(config.gateway.fail_mode, &config.gateway.fail_closed_allow),
            connector,
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
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
                "Agent started in {mode} mode on {}, gateway: {}",
                addresses.join(", "),
                config.gateway.proxy
            ),
        );
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
