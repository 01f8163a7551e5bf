//! The agent configuration (`agent.toml`). Enrolled agents also receive exceptions and
//! the fail mode from the server (see [`crate::server_config`] for the precedence).
//!
//! ```toml
//! data_dir = "/var/lib/rampart-agent"
//!
//! [steering]
//! mode = "transparent"          # transparent | local-proxy
//! steer_all = false             # true: every outbound TCP port, not just 80/443
//! default = "steer"             # action when no exception matches
//!
//! [[steering.exceptions]]
//! name = "python to PyPI goes direct"
//! processes = ["python3*", "pip*"]
//! hosts = ["pypi.org", "files.pythonhosted.org"]
//! action = "bypass"             # steer | bypass | tunnel-bypass | block
//! log = true
//!
//! [gateway]
//! proxy = "gateway.example:3128"
//! fail_mode = "open"            # open | closed
//! fail_closed_allow = ["login.corp.example"]
//! ```

use crate::error::AgentError;
use crate::steering::{ExceptionConfig, FailMode, SteeringAction};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How connections reach the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SteeringMode {
    /// Applications use the agent as an explicit HTTP proxy (no root needed).
    #[default]
    LocalProxy,
    /// An nftables table redirects outbound TCP to the agent (root needed).
    Transparent,
}

/// Complete agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent log (and later enrollment state) lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub steering: SteeringConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub local_proxy: LocalProxyConfig,
    #[serde(default)]
    pub transparent: TransparentConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub attribution: AttributionConfig,
    #[serde(default)]
    pub sync: SyncConfig,
}

/// Configuration from the server and upload of decisions (enrolled agents only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// How often the agent asks the server for a new steering configuration
    /// (`rampart agent update` asks at once).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often spooled decisions are sent when no new one wakes the uploader.
    #[serde(default = "default_upload_interval", with = "humantime_serde")]
    pub upload_interval: Duration,
    /// Bound of `upload-spool.jsonl` while the server is unreachable.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            poll_interval: default_poll_interval(),
            upload_interval: default_upload_interval(),
            spool_max_bytes: default_spool_max_bytes(),
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_upload_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_spool_max_bytes() -> u64 {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringConfig {
    #[serde(default)]
    pub mode: SteeringMode,
    /// Steer every outbound TCP port (non-web visibility), not only 80 and 443.
    #[serde(default)]
    pub steer_all: bool,
    /// Action for connections no exception matches (including unknown processes).
    #[serde(default = "default_action")]
    pub default: SteeringAction,
    #[serde(default)]
    pub exceptions: Vec<ExceptionConfig>,
}

impl Default for SteeringConfig {
    fn default() -> Self {
        SteeringConfig {
            mode: SteeringMode::default(),
            steer_all: false,
            default: default_action(),
            exceptions: Vec::new(),
        }
    }
}

/// The upstream gateway. Until the mTLS tunnel lands, the agent chains to the gateway's
/// HTTP proxy listener with CONNECT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `host:port` of the gateway's proxy listener, used until the agent is enrolled
    /// (enrolled agents use the tunnel address from enrollment).
    #[serde(default)]
    pub proxy: String,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the enrolled agent checks its open tunnel with an HTTP/2 PING, and how
    /// long it waits for the answer before it drops the connection as dead.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Host patterns reachable directly while the gateway is down in closed mode.
    #[serde(default)]
    pub fail_closed_allow: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            proxy: String::new(),
            connect_timeout: default_connect_timeout(),
            keepalive: default_keepalive(),
            fail_mode: FailMode::default(),
            fail_closed_allow: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProxyConfig {
    /// Must be a loopback address: the local proxy is for this host's processes only.
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
}

impl Default for LocalProxyConfig {
    fn default() -> Self {
        LocalProxyConfig {
            listen: default_proxy_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Port the nftables table redirects to (on 127.0.0.1 and ::1).
    #[serde(default = "default_transparent_port")]
    pub port: u16,
    /// Name of the agent's own table in the `inet` family.
    #[serde(default = "default_table")]
    pub table: String,
    /// SO_MARK put on the agent's own outbound sockets so the table lets them pass.
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Additionally exclude all traffic of this uid (e.g. a dedicated agent user).
    #[serde(default)]
    pub exclude_uid: Option<u32>,
    /// How long to wait for the client's first bytes (SNI / Host) before deciding on
    /// the IP address alone (server-speaks-first protocols in steer-all mode).
    #[serde(default = "default_sniff_timeout", with = "humantime_serde")]
    pub sniff_timeout: Duration,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            port: default_transparent_port(),
            table: default_table(),
            mark: default_mark(),
            exclude_uid: None,
            sniff_timeout: default_sniff_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Rotate `agent.log` when it reaches this size.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`agent.log.1` … `agent.log.N`).
    #[serde(default = "default_log_keep")]
    pub keep: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    /// How long a socket-owner scan and a process's details stay cached.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            cache_ttl: default_cache_ttl(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/rampart-agent")
}
fn default_action() -> SteeringAction {
    SteeringAction::Steer
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_proxy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3130))
}
fn default_transparent_port() -> u16 {
    3131
}
fn default_table() -> String {
    "rampart_agent".to_string()
}
fn default_mark() -> u32 {
    // "RA" in ASCII: recognisable in `nft list ruleset` and unlikely to collide.
    0x5241
}
fn default_sniff_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    3
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(2)
}

impl AgentConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate config text; `origin` names it in errors (a path or `<inline>`).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, AgentError> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|err| AgentError::ConfigInvalid {
                origin: location(origin, text, &err),
                message: err.message().to_string(),
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), AgentError> {
        let invalid = |message: String| AgentError::ConfigInvalid {
            origin: origin.to_string(),
            message,
        };
        if !self.local_proxy.listen.ip().is_loopback() {
            return Err(invalid(format!(
                "local_proxy.listen = \"{}\" is not a loopback address; the local proxy must not be reachable from the network (use 127.0.0.1)",
                self.local_proxy.listen
            )));
        }
        let table = &self.transparent.table;
        if table.is_empty()
            || table.len() > 64
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(format!(
                "transparent.table = \"{table}\" must be 1-64 characters of letters, digits, '_' or '-'"
            )));
        }
        if self.transparent.mark == 0 {
            return Err(invalid(
                "transparent.mark must be non-zero (0 is the mark of unmarked traffic)".into(),
            ));
        }
        if self.gateway.keepalive < Duration::from_secs(1) {
            return Err(invalid(format!(
                "gateway.keepalive = {:?} is too short; it must be at least 1s",
                self.gateway.keepalive
            )));
        }
        if self.transparent.port == 0 {
            return Err(invalid("transparent.port must be non-zero".into()));
        }
        if !self.gateway.proxy.is_empty()
            && self
                .gateway
                .proxy
                .rsplit_once(':')
                .is_none_or(|(host, port)| {
                    host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0)
                })
        {
            return Err(invalid(format!(
                "gateway.proxy = \"{}\" must be host:port, e.g. \"gateway.example:3128\"",
                self.gateway.proxy
            )));
        }
        for (i, exception) in self.steering.exceptions.iter().enumerate() {
            if exception.name.trim().is_empty() {
                return Err(invalid(format!(
                    "steering.exceptions[{i}] needs a non-empty name"
                )));
            }
        }
        Ok(())
    }

    /// The variables that point applications at the local proxy, in both spellings
    /// tools read (what `rampart agent env` prints).
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        let proxy = format!("http://{}", self.local_proxy.listen);
        let no_proxy = "localhost,127.0.0.1,::1".to_string();
        vec![
            ("HTTP_PROXY", proxy.clone()),
            ("HTTPS_PROXY", proxy.clone()),
            ("http_proxy", proxy.clone()),
            ("https_proxy", proxy),
            ("NO_PROXY", no_proxy.clone()),
            ("no_proxy", no_proxy),
        ]
    }

    /// Path of the agent log inside the data directory.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("agent.log")
    }
}

/// `origin:line:column` of a TOML error, when toml reports a span.
fn location(origin: &str, text: &str, err: &toml::de::Error) -> String {
    let Some(span) = err.span() else {
        return origin.to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{origin}:{line}:{column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = AgentConfig::from_toml("[gateway]\nproxy = \"10.0.0.1:3128\"\n", "agent.toml")
            .expect("valid");
        assert_eq!(config.steering.mode, SteeringMode::LocalProxy);
        assert_eq!(config.steering.default, SteeringAction::Steer);
        assert_eq!(config.transparent.table, "rampart_agent");
        assert_eq!(config.gateway.fail_mode, FailMode::Open);
        assert_eq!(config.gateway.keepalive, Duration::from_secs(30));
        assert_eq!(
            config.log_path(),
            PathBuf::from("/var/lib/rampart-agent/agent.log")
        );
    }

    #[test]
    fn full_config_parses_exceptions_and_durations() {
        let config = AgentConfig::from_toml(
            r#"
data_dir = "/tmp/x"
[steering]
mode = "transparent"
steer_all = true
default = "bypass"
[[steering.exceptions]]
name = "py"
processes = ["python3*"]
hosts = ["pypi.org"]
action = "tunnel-bypass"
log = false
[gateway]
proxy = "gw.example:3128"
connect_timeout = "750ms"
fail_mode = "closed"
fail_closed_allow = ["login.corp.example"]
[transparent]
port = 4000
mark = 0x99
sniff_timeout = "1s"
"#,
            "agent.toml",
        )
        .expect("valid");
        assert_eq!(config.steering.mode, SteeringMode::Transparent);
        assert!(config.steering.steer_all);
        assert_eq!(config.steering.exceptions.len(), 1);
        assert_eq!(
            config.steering.exceptions[0].action,
            SteeringAction::TunnelBypass
        );
        assert_eq!(config.gateway.connect_timeout, Duration::from_millis(750));
        assert_eq!(config.transparent.mark, 0x99);
    }

    #[test]
    fn unknown_action_is_reported_with_line_and_column() {
        let err = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\n[[steering.exceptions]]\nname = \"x\"\naction = \"allow\"\n",
            "agent.toml",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.starts_with("agent.toml:5:"), "{text}");
        assert!(text.contains("allow"), "{text}");
    }

    #[test]
    fn keepalive_under_a_second_is_refused() {
        let err = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\nkeepalive = \"100ms\"\n",
            "agent.toml",
        )
        .expect_err("too short");
        assert!(
            err.to_string()
                .contains("gateway.keepalive = 100ms is too short; it must be at least 1s"),
            "{err}"
        );
    }

    #[test]
    fn non_loopback_local_proxy_is_refused() {
        let err = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\n[local_proxy]\nlisten = \"0.0.0.0:3130\"\n",
            "agent.toml",
        )
        .expect_err("open proxy");
        assert!(err.to_string().contains("not a loopback address"));
    }

    #[test]
    fn table_names_that_could_inject_nft_syntax_are_refused() {
        let err = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\n[transparent]\ntable = \"x; flush ruleset\"\n",
            "agent.toml",
        )
        .expect_err("bad table");
        assert!(err.to_string().contains("transparent.table"));
    }

    #[test]
    fn proxy_env_points_at_the_local_proxy() {
        let config = AgentConfig::from_toml(
            "[gateway]\nproxy = \"gw:3128\"\n[local_proxy]\nlisten = \"127.0.0.1:4000\"\n",
            "agent.toml",
        )
        .expect("valid");
        let env = config.proxy_env();
        assert!(env.contains(&("HTTPS_PROXY", "http://127.0.0.1:4000".to_string())));
        assert!(env
            .iter()
            .any(|(k, v)| *k == "no_proxy" && v.contains("localhost")));
    }

    #[test]
    fn gateway_without_port_is_refused() {
        let err = AgentConfig::from_toml("[gateway]\nproxy = \"gw\"\n", "agent.toml")
            .expect_err("no port");
        assert!(err.to_string().contains("host:port"));
    }
}
