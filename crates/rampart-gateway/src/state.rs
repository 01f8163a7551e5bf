//! One generation of the gateway's configuration, compiled: admission rules,
//! connectors, forwarding clients and health checks. A reload builds a new
//! `GatewayState` off the data path and swaps it in atomically; requests in
//! flight keep the generation they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use http::HeaderValue;

use crate::admission::Admission;
use crate::config::GatewayConfig;
use crate::connector::forward::{self, ForwardClient};
use crate::connector::upstream::spawn_health_checks;
use crate::connector::{Connector, EgressRoute};
use crate::destination::DestinationGuard;
use crate::error::ConfigError;
use crate::resolver::Resolver;

pub struct GatewayState {
    pub config: GatewayConfig,
    pub policy: Arc<rampart_policy::Policy>,
    pub admission: Admission,
    pub connector: Arc<Connector>,
    /// `Via` value this gateway adds, e.g. `1.1 rampart (rampart/3f9a1c02)`.
    pub via: HeaderValue,
    /// The unique token that marks requests that already passed through this process.
    pub loop_token: String,
    /// TLS interception (CA, leaf cache, origin verification); `None` when `[tls]` is absent.
    pub interception: Option<Arc<crate::intercept::Interception>>,
    /// Content inspection (`[inspect]`); `None` when disabled.
    pub inspector: Option<Arc<rampart_inspect::Inspector>>,
    clients: Mutex<HashMap<String, ForwardClient>>,
    /// The client of the plain direct route, which nearly every request takes:
    /// kept apart so the data path neither formats a key nor takes the lock.
    direct_client: OnceLock<ForwardClient>,
    health_checks: Vec<tokio::task::JoinHandle<()>>,
}

impl GatewayState {
    /// Validates and compiles `config`. Must run inside a tokio runtime (health checks).
    pub fn new(config: GatewayConfig, instance_id: &str) -> Result<Self, ConfigError> {
        GatewayState::next(config, instance_id, None)
    }

    /// The generation after `previous` (a reload): what did not change is kept
    /// rather than rebuilt. An unchanged `[tls]` keeps the interception as it
    /// is — the CA in memory, the minted-leaf cache, the pinned-client counts
    /// and auto-bypasses — so a policy edit costs no leaf and forgets no
    /// pinned client. A changed `[tls]` reloads the CA from disk.
    pub fn next(
        config: GatewayConfig,
        instance_id: &str,
        previous: Option<&GatewayState>,
    ) -> Result<Self, ConfigError> {
        validate(&config)?;
        let admission = Admission::new(&config.proxy)?;
        let policy = config
            .policy
            .clone()
            .unwrap_or_else(|| Arc::new(rampart_policy::Policy::builtin_default()));
        let mut listeners = config.own_listeners.clone();
        listeners.push(config.proxy.listen);
        let guard =
            DestinationGuard::new(&config.proxy, listeners, config.listener_registry.clone());
        let resolver = Resolver::new(&config.resolve);
        let connector = Arc::new(Connector::new(&config, &policy, resolver.clone(), guard)?);
        let health_checks = connector
            .groups()
            .filter_map(|group| {
                spawn_health_checks(
                    group.clone(),
                    resolver.clone(),
                    config.limits.connect_timeout,
                )
            })
            .collect();
        let kept =
            previous.filter(|p| p.config.tls == config.tls && p.config.data_dir == config.data_dir);
        let interception = match &config.tls {
            Some(_) if kept.is_some() => kept.and_then(|p| p.interception.clone()),
            Some(tls) => Some(Arc::new(
                crate::intercept::Interception::new(tls, &config.data_dir).map_err(|e| {
                    ConfigError::Invalid {
                        key: "tls".into(),
                        reason: e.to_string(),
                    }
                })?,
            )),
            None => None,
        };
        let inspector = if !config.inspect.enabled {
            None
        } else if let Some(p) = previous.filter(|p| {
            p.config.inspect == config.inspect
                && p.inspector.as_ref().is_some_and(|i| !i.sources_changed())
        }) {
            // Unchanged, rule and hash files included: keep the compiled
            // YARA rules and loaded hash lists.
            p.inspector.clone()
        } else {
            let mut settings = config.inspect.clone();
            // Bodies past the memory threshold spool under the data dir (the
            // system temp dir for a gateway without one).
            if settings.spool_dir.is_none() && !config.data_dir.as_os_str().is_empty() {
                settings.spool_dir = Some(config.data_dir.join("inspect-spool"));
            }
            if let Some(dir) = &settings.spool_dir {
                std::fs::create_dir_all(dir).map_err(|e| ConfigError::Invalid {
                    key: "inspect.spool_dir".into(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
            }
            let inspector =
                rampart_inspect::Inspector::new(settings).map_err(|e| ConfigError::Invalid {
                    key: "inspect".into(),
                    reason: e.to_string(),
                })?;
            if let Some(plan) = inspector.yara_plan() {
                // Which rules are decided while a body streams and which wait
                // for the whole body, once per (re)load: the latter hold the
                // last chunk of a long download for a full scan.
                let whole: Vec<String> = plan
                    .whole_file
                    .iter()
                    .map(|(rule, why)| format!("{rule}: {why}"))
                    .collect();
                tracing::info!(
                    streamed = plan.streamed.len(),
                    whole_body = whole.len(),
                    streams = plan.streams,
                    whole_body_rules = ?whole,
                    "yara rules compiled"
                );
            }
            Some(Arc::new(inspector))
        };
        let loop_token = format!("rampart/{instance_id}");
        let via = HeaderValue::from_str(&format!("1.1 {} ({loop_token})", config.proxy.via_name))
            .map_err(|_| ConfigError::Invalid {
            key: "proxy.via_name".into(),
            reason: "must be printable ASCII".into(),
        })?;
        Ok(GatewayState {
            policy,
            config,
            admission,
            connector,
            via,
            loop_token,
            interception,
            inspector,
            clients: Mutex::new(HashMap::new()),
            direct_client: OnceLock::new(),
            health_checks,
        })
    }

    /// The pooled forwarding client of `route`, created on first use.
    pub fn client(&self, route: &EgressRoute) -> ForwardClient {
        if let EgressRoute::Direct { source: None } = route {
            return self
                .direct_client
                .get_or_init(|| {
                    forward::client(
                        self.connector.clone(),
                        route.clone(),
                        self.config.limits.idle_timeout,
                    )
                })
                .clone();
        }
        let key = route.key();
        let mut clients = match self.clients.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(key)
            .or_insert_with(|| {
                forward::client(
                    self.connector.clone(),
                    route.clone(),
                    self.config.limits.idle_timeout,
                )
            })
            .clone()
    }
}

impl Drop for GatewayState {
    fn drop(&mut self) {
        for task in &self.health_checks {
            task.abort();
        }
    }
}

/// Checks that cannot be expressed in the types: never an open proxy.
fn validate(config: &GatewayConfig) -> Result<(), ConfigError> {
    let listen = config.proxy.listen;
    if !listen.ip().is_loopback()
        && config.proxy.allow_networks.is_empty()
        && !config.proxy.requires_authentication()
    {
        return Err(ConfigError::OpenProxy { listen });
    }
    if config.proxy.connect_ports.is_empty() {
        return Err(ConfigError::Invalid {
            key: "proxy.connect_ports".into(),
            reason: "must list at least one port".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_open_proxy_on_a_public_address() {
        let mut config = GatewayConfig::default();
        config.proxy.listen = "0.0.0.0:3128".parse().unwrap();
        let err = GatewayState::new(config.clone(), "t").err().unwrap();
        assert!(
            err.to_string().contains("refusing to start an open proxy"),
            "{err}"
        );
        config.proxy.allow_networks = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(GatewayState::new(config, "t").is_ok());
    }

    #[tokio::test]
    async fn unknown_default_egress_group_is_named() {
        let mut config = GatewayConfig::default();
        config.egress.default = Some("aws-squid".into());
        let err = GatewayState::new(config, "t").err().unwrap().to_string();
        assert!(
            err.contains("egress.default") && err.contains("aws-squid"),
            "{err}"
        );
    }
}
