//! `rampart.toml`: the whole configuration file, its defaults, and the
//! command-line overrides. Errors name the file, line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rampart_gateway::config::{
    AccessLogConfig, EgressConfig, LimitsConfig, ProxyConfig, UpstreamGroupConfig,
};
use rampart_gateway::GatewayConfig;
use serde::Deserialize;

/// The parsed file. Every key is documented in `docs/configuration.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampartConfig {
    /// Where the CA, the event store and the logs live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Policy file (or directory); the built-in default policy when absent.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub egress: EgressConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamGroupConfig>,
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The agent tunnel listener.
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Event store, retention and SIEM sinks (docs/events.md).
    #[serde(default)]
    pub events: rampart_events::EventsConfig,
    /// `[coaching]`: the proceed flow of `user-alert` rules (docs/policy.md).
    #[serde(default)]
    pub coaching: rampart_gateway::coaching::CoachingConfig,
    /// `[tls]`: the gateway CA and TLS interception (docs/tls.md).
    #[serde(default)]
    pub tls: rampart_tls::config::TlsConfig,
    /// `[agent]`: what enrolled agents receive with their steering rules (docs/agent.md).
    #[serde(default)]
    pub agent: crate::devices::agent_api::AgentDistributionConfig,
    /// `[runtime]`: busy polling before the runtime threads sleep (docs/configuration.md).
    #[serde(default)]
    pub runtime: rampart_gateway::busy_poll::RuntimeConfig,
}

impl Default for RampartConfig {
    fn default() -> Self {
        RampartConfig {
            data_dir: default_data_dir(),
            policy: None,
            proxy: ProxyConfig::default(),
            api: ApiConfig::default(),
            limits: LimitsConfig::default(),
            egress: EgressConfig::default(),
            upstreams: BTreeMap::new(),
            resolve: BTreeMap::new(),
            access_log: AccessLogConfig::default(),
            log: LogConfig::default(),
            tunnel: TunnelConfig::default(),
            events: rampart_events::EventsConfig::default(),
            coaching: Default::default(),
            tls: Default::default(),
            agent: Default::default(),
            runtime: Default::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./rampart-data")
}

/// `[api]`: the API / metrics / health listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `[log]`: the process's own diagnostic log (not the access log).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `rampart_gateway=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[tunnel]`: the agent tunnel listener (mTLS, HTTP/2; docs/agent.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    pub listen: SocketAddr,
    /// `host:port` enrolled agents connect to, when it differs from `listen` (NAT, a
    /// load balancer, or listening on 0.0.0.0).
    pub advertise: Option<String>,
    /// A connection silent for this long gets a PING; no answer within as long again
    /// closes it ([`rampart_gateway::tunnel::ServeOptions::keepalive`]).
    #[serde(deserialize_with = "keepalive")]
    pub keepalive: std::time::Duration,
}

/// `[tunnel] keepalive`: a duration of at least one second (shorter would close
/// connections that are merely busy).
fn keepalive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let value: std::time::Duration = humantime_serde::deserialize(d)?;
    if value < std::time::Duration::from_secs(1) {
        return Err(serde::de::Error::custom(format!(
            "keepalive = \"{}\" is too short; it must be at least 1s",
            humantime_serde::re::humantime::format_duration(value)
        )));
    }
    Ok(value)
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3129)),
            advertise: None,
            keepalive: rampart_gateway::tunnel::DEFAULT_KEEPALIVE,
        }
    }
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub proxy_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub policy: Option<PathBuf>,
    pub resolve: Vec<(String, IpAddr)>,
    pub allow_loopback_destinations: bool,
    pub tunnel_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl RampartConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigFileError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }

    /// File (or defaults) plus command-line overrides.
    pub fn with_overrides(mut self, o: &Overrides) -> Self {
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(addr) = o.proxy_listen {
            self.proxy.listen = addr;
        }
        if let Some(addr) = o.api_listen {
            self.api.listen = addr;
        }
        if let Some(addr) = o.tunnel_listen {
            self.tunnel.listen = addr;
        }
        if let Some(policy) = &o.policy {
            self.policy = Some(policy.clone());
        }
        for (host, ip) in &o.resolve {
            self.resolve.insert(host.clone(), *ip);
        }
        if o.allow_loopback_destinations {
            self.proxy.allow_loopback_destinations = true;
        }
        self
    }

    /// The gateway's part of the configuration.
    pub fn gateway_config(&self, own_listeners: Vec<SocketAddr>) -> GatewayConfig {
        GatewayConfig {
            data_dir: self.data_dir.clone(),
            proxy: self.proxy.clone(),
            limits: self.limits.clone(),
            egress: self.egress.clone(),
            upstreams: self.upstreams.clone(),
            resolve: self.resolve.clone(),
            access_log: self.access_log.clone(),
            coaching: self.coaching.clone(),
            own_listeners,
            policy: None,
            tls: Some(self.tls.clone()),
        }
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Parses `HOST=IP` for `--resolve`.
pub fn parse_resolve(s: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("--resolve {s:?}: expected HOST=IP"))?;
    let ip = ip
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("--resolve {s:?}: {ip:?} is not an IP address"))?;
    if host.trim().is_empty() {
        return Err(format!("--resolve {s:?}: empty host"));
    }
    Ok((host.trim().to_string(), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_error_names_file_line_and_column() {
        let text = "data_dir = \"/tmp/x\"\n[proxy]\nlisten = \"127.0.0.1:3128\"\nlisen = 1\n";
        let err = RampartConfig::parse(text, Path::new("rampart.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("rampart.toml:4:1: unknown field `lisen`"),
            "{err}"
        );
    }

    #[test]
    fn tunnel_keepalive_defaults_to_a_minute_and_refuses_under_a_second() {
        let cfg = RampartConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(cfg.tunnel.keepalive, std::time::Duration::from_secs(60));
        let cfg =
            RampartConfig::parse("[tunnel]\nkeepalive = \"5s\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(cfg.tunnel.keepalive, std::time::Duration::from_secs(5));
        let err = RampartConfig::parse("[tunnel]\nkeepalive = \"200ms\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml:2:13: keepalive = \"200ms\" is too short"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let cfg = RampartConfig::parse("[proxy]\nlisten = \"127.0.0.1:1\"\n", Path::new("x.toml"))
            .unwrap();
        let cfg = cfg.with_overrides(&Overrides {
            proxy_listen: Some("127.0.0.1:2".parse().unwrap()),
            resolve: vec![("a.test".into(), "127.0.0.9".parse().unwrap())],
            allow_loopback_destinations: true,
            ..Overrides::default()
        });
        assert_eq!(cfg.proxy.listen.port(), 2);
        assert!(cfg.proxy.allow_loopback_destinations);
        assert_eq!(cfg.resolve["a.test"].to_string(), "127.0.0.9");
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rampart.toml");
        let cfg = RampartConfig::load(&path).unwrap();
        assert_eq!(cfg.proxy.listen.port(), 3128);
        // The commented upstream example must parse too once uncommented.
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| {
                        r.starts_with("[upstreams")
                            || r.starts_with("proxies")
                            || r.starts_with("failure_")
                            || r.starts_with("down_for")
                            || r.starts_with("health_check_interval")
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = RampartConfig::parse(&uncommented, &path).unwrap();
        assert_eq!(cfg.upstreams["aws-squid"].proxies.len(), 2);
    }

    #[test]
    fn resolve_flag_is_validated() {
        assert!(parse_resolve("a.test=127.0.0.1").is_ok());
        assert!(parse_resolve("a.test").is_err());
        assert!(parse_resolve("a.test=nope").is_err());
    }
}
