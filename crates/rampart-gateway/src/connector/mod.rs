//! Connectors: how the gateway reaches an origin. The choice is made per
//! request or tunnel (`EgressChoice`), so policy rules can send chosen
//! destinations through an upstream group or from a fixed source address.

pub mod direct;
pub mod forward;
pub mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::config::GatewayConfig;
use crate::destination::DestinationGuard;
use crate::error::{ConfigError, ConnectError};
use crate::resolver::Resolver;
use upstream::{UpstreamGroup, UpstreamProxy};

/// What a rule (or the `[egress]` default) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum EgressChoice {
    /// `[egress] default`.
    #[default]
    Default,
    Direct,
    /// Direct, from this local source address.
    Source(IpAddr),
    /// Through the named `[upstreams.NAME]` group.
    Upstream(String),
}

/// A resolved egress route.
#[derive(Debug, Clone)]
pub enum EgressRoute {
    Direct { source: Option<IpAddr> },
    Upstream(Arc<UpstreamGroup>),
}

impl EgressRoute {
    /// Stable key used to keep one connection pool per route.
    pub fn key(&self) -> String {
        match self {
            EgressRoute::Direct { source: None } => "direct".into(),
            EgressRoute::Direct { source: Some(ip) } => format!("direct@{ip}"),
            EgressRoute::Upstream(group) => format!("upstream:{}", group.name),
        }
    }
}

/// The egress actually used by one connection, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressUsed(pub Arc<str>);

/// An established connection to an origin (directly or through an upstream tunnel).
pub struct Connected {
    pub stream: TcpStream,
    /// The TCP peer: the origin, or the upstream proxy.
    pub peer: SocketAddr,
    /// Bytes the upstream proxy sent after its CONNECT response.
    pub leftover: Bytes,
    pub egress: EgressUsed,
}

pub struct Connector {
    resolver: Resolver,
    guard: DestinationGuard,
    connect_timeout: Duration,
    default_route: EgressRoute,
    default_source: Option<IpAddr>,
    groups: HashMap<String, Arc<UpstreamGroup>>,
}

impl Connector {
    /// Upstream groups come from `[upstreams.*]` of the configuration and of
    /// the policy (for its egress rules); the configuration's win on a name clash.
    pub fn new(
        config: &GatewayConfig,
        policy: &rampart_policy::Policy,
        resolver: Resolver,
        guard: DestinationGuard,
    ) -> Result<Self, ConfigError> {
        let mut groups = HashMap::new();
        for (name, group) in &config.upstreams {
            if group.proxies.is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("upstreams.{name}.proxies"),
                    reason: "an upstream group needs at least one proxy".into(),
                });
            }
            groups.insert(name.clone(), Arc::new(UpstreamGroup::new(name, group)));
        }
        for group in policy.upstream_groups() {
            if groups.contains_key(&*group.name) {
                continue;
            }
            let proxies = group
                .proxies
                .iter()
                .map(|p| {
                    p.url.parse().map_err(|reason| ConfigError::Invalid {
                        key: format!("policy upstreams.{}", group.name),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let config = crate::config::UpstreamGroupConfig::with_defaults(proxies);
            groups.insert(
                group.name.to_string(),
                Arc::new(UpstreamGroup::new(&group.name, &config)),
            );
        }
        let default_source = config.egress.source_address;
        let default_route = match config.egress.default.as_deref() {
            None | Some("direct") => EgressRoute::Direct {
                source: default_source,
            },
            Some(name) => EgressRoute::Upstream(groups.get(name).cloned().ok_or_else(|| {
                ConfigError::Invalid {
                    key: "egress.default".into(),
                    reason: format!(
                        "unknown upstream group {name:?} (defined: {})",
                        display_names(&groups)
                    ),
                }
            })?),
        };
        Ok(Connector {
            resolver,
            guard,
            connect_timeout: config.limits.connect_timeout,
            default_route,
            default_source,
            groups,
        })
    }

    pub fn groups(&self) -> impl Iterator<Item = &Arc<UpstreamGroup>> {
        self.groups.values()
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn route(&self, choice: &EgressChoice) -> Result<EgressRoute, ConnectError> {
        Ok(match choice {
            EgressChoice::Default => self.default_route.clone(),
            EgressChoice::Direct => EgressRoute::Direct {
                source: self.default_source,
            },
            EgressChoice::Source(ip) => EgressRoute::Direct { source: Some(*ip) },
            EgressChoice::Upstream(name) => {
                EgressRoute::Upstream(self.groups.get(name).cloned().ok_or_else(|| {
                    ConnectError::UnknownUpstream {
                        group: name.clone(),
                    }
                })?)
            }
        })
    }

    /// Opens a byte stream to `host:port` for a CONNECT tunnel (or an
    /// intercepted TLS session): direct, or chained with CONNECT upstream.
    pub async fn open_tunnel(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<Connected, ConnectError> {
        match route {
            EgressRoute::Direct { source } => self.connect_direct(host, port, *source).await,
            EgressRoute::Upstream(group) => {
                let target = authority(host, port);
                self.through_group(group, |mut stream, proxy| {
                    let target = target.clone();
                    async move {
                        let leftover = tokio::time::timeout(
                            self.connect_timeout,
                            upstream::connect_handshake(&mut stream, proxy, &target),
                        )
                        .await
                        .map_err(|_| ConnectError::Timeout {
                            target: proxy.url.authority(),
                        })??;
                        Ok((stream, leftover))
                    }
                })
                .await
            }
        }
    }

    /// Opens a connection for forwarding plain HTTP: to the origin directly,
    /// or to an upstream proxy that receives the request in absolute form.
    pub async fn open_for_forwarding(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<(Connected, bool), ConnectError> {
        match route {
            EgressRoute::Direct { source } => {
                Ok((self.connect_direct(host, port, *source).await?, false))
            }
            EgressRoute::Upstream(group) => {
                let connected =
                    self.through_group(group, |stream, _proxy| async move {
                        Ok((stream, Bytes::new()))
                    })
                    .await?;
                Ok((connected, true))
            }
        }
    }

    async fn connect_direct(
        &self,
        host: &str,
        port: u16,
        source: Option<IpAddr>,
    ) -> Result<Connected, ConnectError> {
        let ips = self.resolver.resolve(host).await?;
        let mut addrs = Vec::with_capacity(ips.len());
        let mut refusal = None;
        for ip in ips.iter() {
            let addr = SocketAddr::new(*ip, port);
            match self.guard.check(addr) {
                Ok(()) => addrs.push(addr),
                Err(e) => refusal = Some(e),
            }
        }
        if addrs.is_empty() {
            return Err(refusal.unwrap_or(ConnectError::Dns {
                host: host.to_string(),
                detail: "no addresses".into(),
            }));
        }
        let target = authority(host, port);
        let stream =
            direct::connect_happy_eyeballs(&addrs, source, self.connect_timeout, &target).await?;
        let peer = stream.peer_addr().map_err(|e| ConnectError::Unreachable {
            target: target.clone(),
            source: e,
        })?;
        let egress = match source {
            Some(ip) => format!("direct@{ip}"),
            None => "direct".to_string(),
        };
        Ok(Connected {
            stream,
            peer,
            leftover: Bytes::new(),
            egress: EgressUsed(egress.into()),
        })
    }

    /// Tries the group's proxies in failover order, recording health.
    async fn through_group<'a, F, Fut>(
        &'a self,
        group: &'a UpstreamGroup,
        handshake: F,
    ) -> Result<Connected, ConnectError>
    where
        F: Fn(TcpStream, &'a UpstreamProxy) -> Fut,
        Fut: std::future::Future<Output = Result<(TcpStream, Bytes), ConnectError>>,
    {
        let mut last_error = None;
        for proxy in group.candidates() {
            let result = async {
                let stream = self.connect_proxy(proxy).await?;
                let peer = stream.peer_addr().map_err(|e| ConnectError::Unreachable {
                    target: proxy.url.authority(),
                    source: e,
                })?;
                let (stream, leftover) = handshake(stream, proxy).await?;
                Ok::<_, ConnectError>((stream, peer, leftover))
            }
            .await;
            match result {
                Ok((stream, peer, leftover)) => {
                    group.record_success(proxy);
                    return Ok(Connected {
                        stream,
                        peer,
                        leftover,
                        egress: EgressUsed(
                            format!("{}/{}", group.name, proxy.url.authority()).into(),
                        ),
                    });
                }
                Err(e) if e.counts_against_upstream() || matches!(e, ConnectError::Dns { .. }) => {
                    tracing::debug!(group = %group.name, proxy = %proxy.url, error = %e, "upstream proxy failed, trying the next");
                    group.record_failure(proxy, &e);
                    last_error = Some(e);
                }
                // The proxy answered (e.g. 403 or 502 for the origin): its verdict stands.
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::UpstreamsDown {
            group: group.name.clone(),
        }))
    }

    async fn connect_proxy(&self, proxy: &UpstreamProxy) -> Result<TcpStream, ConnectError> {
        let ips = self.resolver.resolve(&proxy.url.host).await?;
        let mut addrs = Vec::with_capacity(ips.len());
        for ip in ips.iter() {
            let addr = SocketAddr::new(*ip, proxy.url.port);
            // Upstreams are chosen by the administrator, so loopback is fine;
            // only a loop back into ourselves is refused.
            self.guard.check_not_self(addr)?;
            addrs.push(addr);
        }
        direct::connect_happy_eyeballs(&addrs, None, self.connect_timeout, &proxy.url.authority())
            .await
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn display_names(groups: &HashMap<String, Arc<UpstreamGroup>>) -> String {
    if groups.is_empty() {
        return "none".into();
    }
    let mut names: Vec<&str> = groups.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}
