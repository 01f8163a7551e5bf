//! `rampart.toml`: the whole configuration file, its defaults, and the
//! command-line overrides. Errors name the file, line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Policy file (or directory), and its test cases: `policy = "FILE"` or a
    /// `[policy]` table. The built-in default policy when absent.
    #[serde(default)]
    pub policy: PolicyConfig,
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
    /// `[isolation]`: exceptions and resolvers for isolated devices (docs/isolation.md).
    #[serde(default)]
    pub isolation: crate::isolation::IsolationConfig,
    /// `[[response]]`: response rules, event query → isolate (docs/isolation.md).
    #[serde(default)]
    pub response: Vec<crate::isolation::ResponseRuleConfig>,
    /// `[inspect]`: content inspection (docs/inspection.md).
    #[serde(default)]
    pub inspect: rampart_inspect::InspectConfig,
    /// `[fleet]`: scale-out through NATS JetStream (docs/fleet.md).
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
}

impl Default for RampartConfig {
    fn default() -> Self {
        RampartConfig {
            data_dir: default_data_dir(),
            policy: PolicyConfig::default(),
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
            isolation: Default::default(),
            response: Vec::new(),
            inspect: Default::default(),
            fleet: Default::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./rampart-data")
}

/// `policy = "FILE"`, or `[policy]` with `file` and `tests`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Policy file or directory; `None` runs the built-in default policy.
    pub file: Option<PathBuf>,
    /// A cases file (`rampart policy test` format): every reload, and the start, run
    /// these cases and refuse a policy that fails one.
    pub tests: Option<PathBuf>,
}

/// The table form of [`PolicyConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    file: Option<PathBuf>,
    tests: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PolicyConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a policy path, or a [policy] table with `file` and `tests`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PolicyConfig, E> {
                Ok(PolicyConfig {
                    file: Some(PathBuf::from(v)),
                    tests: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PolicyConfig, A::Error> {
                // Through the derived table type, so unknown keys are named in errors.
                let t =
                    PolicyTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PolicyConfig {
                    file: t.file,
                    tests: t.tests,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[api]`: the API / console / metrics / health listener, and the limits that keep
/// a flood on it from taking descriptors and memory from the proxy. The API has its
/// own connection budget, separate from `[limits]` (the proxy's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Connections open at once; beyond it new ones get a 503 and are closed.
    #[serde(deserialize_with = "api_max_connections")]
    pub max_connections: usize,
    /// The same, per client address.
    #[serde(deserialize_with = "api_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Time to send a complete request head, counted from the accept or from the
    /// first byte of a kept-alive connection's next request.
    #[serde(deserialize_with = "api_header_timeout")]
    pub header_timeout: HumanDuration,
    /// How long a kept-alive connection may wait for its next request to start.
    /// Longer than common poll periods and not a round multiple of them, so a
    /// client polling every 10, 15, 30 or 60 s does not send just as the server
    /// closes the connection.
    #[serde(deserialize_with = "api_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// A connection on which no byte moves either way for this long is closed (a
    /// stalled body upload, a client that stopped reading its response).
    #[serde(deserialize_with = "api_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Largest request head (request line and header fields); larger gets `431`.
    #[serde(deserialize_with = "api_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets `431`.
    #[serde(deserialize_with = "api_max_headers")]
    pub max_headers: usize,
    /// Largest request body; larger gets `413`.
    #[serde(deserialize_with = "api_max_body_bytes")]
    pub max_body_bytes: usize,
    /// `off`, `on` or `auto` (HTTPS unless listening on 127.0.0.1/::1); see `api::tls`.
    pub tls: crate::api::tls::TlsMode,
    /// The API's certificate chain (PEM, leaf first); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Names (DNS or IP) a minted API certificate carries besides the listen address.
    pub tls_names: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 512,
            max_connections_per_source: 64,
            header_timeout: HumanDuration(Duration::from_secs(10)),
            keepalive_timeout: HumanDuration(Duration::from_secs(75)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            tls: Default::default(),
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
        }
    }
}

/// `deserialize_with` functions that name their key in the error, e.g.
/// `rampart.toml:9:19: api.max_connections = 0 is not allowed; it must be at least 1`.
macro_rules! checked {
    ($($name:ident: $key:literal, $ty:ty, $check:expr;)*) => {$(
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let check: fn($ty) -> Result<$ty, String> = $check;
            check(Deserialize::deserialize(d)?)
                .map_err(|why| serde::de::Error::custom(format!("{} {why}", $key)))
        }
    )*};
}

checked! {
    api_max_connections: "api.max_connections", usize, at_least_one;
    api_max_connections_per_source: "api.max_connections_per_source", usize, at_least_one;
    api_max_headers: "api.max_headers", usize, at_least_one;
    api_max_body_bytes: "api.max_body_bytes", usize, at_least_one;
    api_max_header_bytes: "api.max_header_bytes", usize, header_bytes;
    api_header_timeout: "api.header_timeout", HumanDuration, api_timeout;
    api_keepalive_timeout: "api.keepalive_timeout", HumanDuration, api_timeout;
    api_idle_timeout: "api.idle_timeout", HumanDuration, api_timeout;
}

fn at_least_one(value: usize) -> Result<usize, String> {
    match value {
        0 => Err("= 0 is not allowed; it must be at least 1".into()),
        n => Ok(n),
    }
}

/// hyper cannot read a request head into a buffer under 8 KiB.
fn header_bytes(value: usize) -> Result<usize, String> {
    if value < 8192 {
        return Err(format!("= {value} is too small; it must be at least 8192"));
    }
    Ok(value)
}

/// API timeouts: at least 100 ms (shorter would cut off ordinary clients) and at
/// most a day (longer is a typo, and holds descriptors for ever).
fn api_timeout(value: HumanDuration) -> Result<HumanDuration, String> {
    let d = value.0;
    if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
        return Err(format!(
            "= \"{}\" is out of range; it must be between 100ms and 1d",
            humantime_serde::re::humantime::format_duration(d)
        ));
    }
    Ok(value)
}

/// A duration written like `"10s"`, for [`checked!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

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
    /// A device's `last_seen` moves while its tunnel is open, written at most this
    /// often per device (default 1m).
    #[serde(with = "humantime_serde")]
    pub last_seen_interval: std::time::Duration,
    /// A connection silent for this long gets a PING; no answer within as long again
    /// closes it ([`rampart_gateway::tunnel::ServeOptions::keepalive`]).
    #[serde(deserialize_with = "keepalive")]
    pub keepalive: std::time::Duration,
    /// Load balancers whose connections start with a PROXY protocol header naming
    /// the agent (docs/fleet.md); from anyone else a header is refused. Empty: off.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
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
            last_seen_interval: crate::devices::inventory::DEFAULT_LAST_SEEN_INTERVAL,
            keepalive: rampart_gateway::tunnel::DEFAULT_KEEPALIVE,
            proxy_protocol_from: Vec::new(),
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
    /// The gateway role: load the fleet's CA, never create one.
    pub never_create_ca: bool,
    /// `--pid-file`: written once the listeners are bound (not a setting of the file).
    pub pid_file: Option<PathBuf>,
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
            self.policy.file = Some(policy.clone());
        }
        for (host, ip) in &o.resolve {
            self.resolve.insert(host.clone(), *ip);
        }
        if o.allow_loopback_destinations {
            self.proxy.allow_loopback_destinations = true;
        }
        if o.never_create_ca {
            self.tls.create_ca = false;
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
            // The gateway keeps its own registry across reloads; this one is replaced.
            listener_registry: Default::default(),
            policy: None,
            tls: Some(self.tls.clone()),
            inspect: self.inspect.clone(),
            api_connections: self.api.max_connections,
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
    fn api_limits_have_defaults_and_invalid_values_name_their_key() {
        let cfg = RampartConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(cfg.api.max_connections, 512);
        assert_eq!(cfg.api.header_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.api.keepalive_timeout.0, Duration::from_secs(75));
        let cfg = RampartConfig::parse(
            "[api]\nmax_connections = 10\nheader_timeout = \"2s\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(cfg.api.max_connections, 10);
        assert_eq!(cfg.api.header_timeout.0, Duration::from_secs(2));
        for (text, expected) in [
            (
                "[api]\nmax_connections = 0\n",
                "x.toml:2:19: api.max_connections = 0 is not allowed",
            ),
            (
                "[api]\nheader_timeout = \"10ms\"\n",
                "x.toml:2:18: api.header_timeout = \"10ms\" is out of range",
            ),
            (
                "[api]\nmax_header_bytes = 100\n",
                "x.toml:2:20: api.max_header_bytes = 100 is too small",
            ),
        ] {
            let err = RampartConfig::parse(text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn policy_is_a_path_or_a_table_with_tests() {
        let cfg = RampartConfig::parse("policy = \"p.toml\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(cfg.policy.file, Some(PathBuf::from("p.toml")));
        assert_eq!(cfg.policy.tests, None);
        let cfg = RampartConfig::parse(
            "[policy]\nfile = \"p.toml\"\ntests = \"cases.toml\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(cfg.policy.tests, Some(PathBuf::from("cases.toml")));
        let err = RampartConfig::parse("[policy]\ntest = \"c.toml\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `test`"), "{err}");
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
