//! Configuration of the gateway's data path: listeners, admission, port rules,
//! limits, egress upstreams, static name overrides and the access log.
//!
//! These types are the `[proxy]`, `[limits]`, `[egress]`, `[upstreams.*]`,
//! `[resolve]` and `[access_log]` sections of `rampart.toml`; the server crate
//! composes them into the whole file. Every key is documented in
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Everything the gateway needs to run, after defaults and command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub data_dir: PathBuf,
    pub proxy: ProxyConfig,
    pub limits: LimitsConfig,
    pub egress: EgressConfig,
    pub upstreams: BTreeMap<String, UpstreamGroupConfig>,
    pub resolve: BTreeMap<String, IpAddr>,
    pub access_log: AccessLogConfig,
    /// `[coaching]`: the proceed flow of `user-alert` rules.
    pub coaching: crate::coaching::CoachingConfig,
    /// The compiled policy; `None` runs the built-in default policy.
    pub policy: Option<std::sync::Arc<rampart_policy::Policy>>,
    /// `[tls]`: TLS interception of CONNECT tunnels to `proxy.tls_ports`; `None` never
    /// intercepts (the gateway library alone, without a data dir for the CA).
    pub tls: Option<rampart_tls::config::TlsConfig>,
    /// `[inspect]`: content inspection of plain and decrypted bodies (docs/inspection.md).
    pub inspect: rampart_inspect::InspectConfig,
    /// Addresses of the process's other listeners (API, tunnel), so loop
    /// protection refuses them as destinations too.
    pub own_listeners: Vec<SocketAddr>,
    /// Listeners opened after the gateway started (the agent tunnel registers
    /// itself here); the gateway keeps one registry across reloads.
    pub listener_registry: crate::destination::ListenerRegistry,
    /// Descriptors the process's API listener may hold (`[api] max_connections`),
    /// kept out of the data path's descriptor budget.
    pub api_connections: usize,
}

/// `[proxy]`: the HTTP proxy listener and who may use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address of the HTTP proxy listener.
    pub listen: SocketAddr,
    /// Source networks allowed to use the proxy. Empty: no network restriction
    /// (only acceptable on loopback or together with authentication).
    pub allow_networks: Vec<IpNet>,
    /// Users for `Proxy-Authorization: Basic`; passwords as Argon2 PHC hashes.
    pub users: Vec<ProxyUser>,
    /// Tokens for `Proxy-Authorization: Bearer`, stored as SHA-256 hex digests.
    pub tokens: Vec<ProxyToken>,
    /// Ports CONNECT may reach (Squid's `SSL_ports`).
    pub connect_ports: PortSet,
    /// CONNECT ports whose tunnels carry TLS and are intercepted (decrypted unless
    /// the decryption decision says otherwise).
    pub tls_ports: PortSet,
    /// Close tunnels to `tls_ports` whose first bytes are not TLS, instead of
    /// passing them through untouched.
    pub refuse_non_tls: bool,
    /// Ports absolute-form HTTP requests may reach (Squid's `Safe_ports`).
    pub http_ports: PortSet,
    /// Agent tunnel flows to these ports that start with an HTTP/1 request are
    /// served request by request, so the request stage sees every URL.
    pub agent_http_ports: PortSet,
    /// Allow destinations on loopback / unspecified addresses. Off by default so a
    /// proxy user cannot reach services bound to the gateway's own loopback.
    pub allow_loopback_destinations: bool,
    /// Add a `Via` header to forwarded requests and responses (RFC 9110 §7.6.3).
    pub via: bool,
    /// The pseudonym used in `Via`; also used to detect forwarding loops.
    pub via_name: String,
    /// Add `X-Forwarded-For` with the client's address.
    pub x_forwarded_for: bool,
    /// Allow destinations that are link-local (169.254.0.0/16, fe80::/10, where
    /// cloud metadata services live), multicast, broadcast, or listed in
    /// `metadata_addresses`. Off by default: a proxy user must not reach the
    /// gateway host's cloud credentials or its local segment's services.
    pub allow_link_local_destinations: bool,
    /// Cloud metadata service addresses, refused as destinations even with
    /// `allow_link_local_destinations` (remove one from the list to allow it).
    /// Default: 169.254.169.254 and fd00:ec2::254.
    pub metadata_addresses: Vec<IpAddr>,
    /// How long a verified `Proxy-Authorization` is remembered (per source
    /// address), so a logged-in client does not pay an Argon2 verification per
    /// connection. `0s` disables the cache.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Failed logins from one source address, or for one user name, before
    /// further attempts are refused with 407 and `Retry-After`.
    pub auth_max_failures: u32,
    /// The first refusal period after `auth_max_failures`; each further failure
    /// doubles it, up to `auth_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub auth_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub auth_backoff_max: Duration,
    /// A source's or user name's failures are forgotten after this long without one.
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// Argon2 verifications running at once (on the blocking pool); 0 means half
    /// the CPUs, at least one. Read at start.
    pub auth_verify_concurrency: usize,
    /// Load balancers whose connections start with a PROXY protocol header (v2 or
    /// v1) naming the real client. From these networks the header is mandatory;
    /// from any other address a header is refused. Empty (the default): off.
    pub proxy_protocol_from: Vec<IpNet>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3128)),
            allow_networks: Vec::new(),
            users: Vec::new(),
            tokens: Vec::new(),
            connect_ports: PortSet::from_ranges(vec![(443, 443)]),
            tls_ports: PortSet::from_ranges(vec![(443, 443)]),
            refuse_non_tls: false,
            http_ports: PortSet::from_ranges(vec![(80, 80), (443, 443), (1025, 65535)]),
            agent_http_ports: PortSet::from_ranges(vec![(80, 80)]),
            allow_loopback_destinations: false,
            via: true,
            via_name: "rampart".to_string(),
            x_forwarded_for: false,
            allow_link_local_destinations: false,
            metadata_addresses: crate::destination::DEFAULT_METADATA_ADDRESSES.to_vec(),
            auth_cache_ttl: Duration::from_secs(300),
            auth_max_failures: 5,
            auth_backoff: Duration::from_secs(1),
            auth_backoff_max: Duration::from_secs(300),
            auth_failure_window: Duration::from_secs(900),
            auth_verify_concurrency: 0,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl ProxyConfig {
    pub fn requires_authentication(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyUser {
    pub name: String,
    /// Argon2 PHC string, as printed by `rampart hash-password`.
    pub password_hash: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyToken {
    /// The identity the token authenticates (recorded as the user).
    pub name: String,
    /// Lower-case hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[limits]`: caps and timeouts that keep one client from hurting the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections open at once, over all sources. `None` (the default):
    /// what the descriptor limit allows (`fd_budget::DescriptorPlan`); a value
    /// above that is an error at start.
    pub max_connections: Option<usize>,
    /// Client connections open at once from one source address.
    pub max_connections_per_source: usize,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request.
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time allowed to establish a TCP connection to an origin or upstream proxy.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A keep-alive client connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A CONNECT tunnel with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// Time allowed for a TLS handshake with an origin or upstream.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time an origin has to start answering a forwarded request.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// On SIGTERM, how long in-flight requests and tunnels may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long `/healthz` answers 503 while the listeners still accept,
    /// before they close: a load balancer's health checks take the gateway out of
    /// rotation first (docs/fleet.md). `0s` (the default) closes them at once.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: None,
            max_connections_per_source: 2_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
        }
    }
}

/// `[egress]`: how traffic leaves the gateway when no rule says otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// `"direct"` or the name of an `[upstreams.NAME]` group.
    pub default: Option<String>,
    /// Fixed local source address for direct connections (a pinned egress IP).
    pub source_address: Option<IpAddr>,
}

/// `[upstreams.NAME]`: an ordered list of egress proxies with health tracking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroupConfig {
    /// Proxies tried in order: `http://[user:password@]host:port`.
    pub proxies: Vec<UpstreamProxyUrl>,
    /// Consecutive failures after which a proxy is marked down.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a proxy marked down is skipped before it is tried again.
    #[serde(default = "default_down_for", with = "humantime_serde")]
    pub down_for: Duration,
    /// Interval of active health checks (0s disables them).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Optional `host:port` that health checks CONNECT to through the proxy;
    /// without it a check is a TCP connect to the proxy itself.
    #[serde(default)]
    pub health_check_target: Option<String>,
}

impl UpstreamGroupConfig {
    /// A group of `proxies` with the default health settings.
    pub fn with_defaults(proxies: Vec<UpstreamProxyUrl>) -> Self {
        UpstreamGroupConfig {
            proxies,
            failure_threshold: default_failure_threshold(),
            down_for: default_down_for(),
            health_check_interval: default_health_interval(),
            health_check_target: None,
        }
    }
}

fn default_failure_threshold() -> u32 {
    3
}
fn default_down_for() -> Duration {
    Duration::from_secs(30)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[access_log]`: one line per request or tunnel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// File path (relative paths are inside the data dir), or `-` for stdout.
    pub path: String,
    pub format: AccessLogFormat,
    /// Rotate before the file would grow past this; 0: never by size.
    pub max_size: rampart_events::config::ByteSize,
    /// Rotate at the first write once the file is this old; 0: never by age.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Rotated files kept (the oldest beyond are deleted).
    pub keep: usize,
    /// gzip rotated files (in the background: the writer never waits for it).
    pub compress: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: "access.log".to_string(),
            format: AccessLogFormat::Json,
            max_size: rampart_events::config::ByteSize(100 << 20),
            max_age: Duration::from_secs(24 * 3600),
            keep: 7,
            compress: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Squid's native `access.log` format, for existing Squid log tooling.
    Squid,
}

/// A set of TCP ports, written as `[443, "8443", "1025-65535"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn from_ranges(ranges: Vec<(u16, u16)>) -> Self {
        PortSet { ranges }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for PortSet {
    type Err = String;
    /// Parses a comma-separated list such as `443,8443,1025-65535`.
    fn from_str(s: &str) -> Result<Self, String> {
        let ranges = s
            .split(',')
            .map(|part| parse_port_range(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortSet { ranges })
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("invalid port {p:?}: expected 1-65535"))
    };
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("invalid port range {s:?}: start is after end"));
            }
            Ok((lo, hi))
        }
        None => {
            let p = parse(s)?;
            Ok((p, p))
        }
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Number(u16),
            Text(String),
        }
        let items = Vec::<Item>::deserialize(deserializer)?;
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            ranges.push(match item {
                Item::Number(0) => return Err(serde::de::Error::custom("port 0 is not a port")),
                Item::Number(n) => (n, n),
                Item::Text(s) => parse_port_range(&s).map_err(serde::de::Error::custom)?,
            });
        }
        Ok(PortSet { ranges })
    }
}

/// An upstream proxy address: `http://[user:password@]host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamProxyUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl UpstreamProxyUrl {
    /// `host:port`, bracketing IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

// Never print the password: configuration dumps and logs must not leak it.
impl fmt::Debug for UpstreamProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for UpstreamProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(user) => write!(f, "http://{user}:***@{}", self.authority()),
            None => write!(f, "http://{}", self.authority()),
        }
    }
}

impl FromStr for UpstreamProxyUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("upstream proxy {s:?} must start with http://"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("upstream proxy {s:?} must not have a path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (Some(percent_decode(user)?), Some(percent_decode(pass)?))
            }
            None => (None, None),
        };
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| format!("upstream proxy {s:?} needs host:port"))?;
        Ok(UpstreamProxyUrl {
            host,
            port,
            username,
            password,
        })
    }
}

impl<'de> Deserialize<'de> for UpstreamProxyUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits `host:port` / `[v6]:port`; the port is mandatory and non-zero.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        let (host, port) = s.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    let port: u16 = port.parse().ok().filter(|&p| p > 0)?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid percent-encoding in upstream credentials".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "upstream credentials are not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_set_parses_numbers_and_ranges() {
        let set: PortSet = "443, 8443,1025-2000".parse().unwrap();
        assert!(set.contains(443));
        assert!(set.contains(1500));
        assert!(!set.contains(80));
        assert_eq!(set.to_string(), "443,8443,1025-2000");
        assert!("0".parse::<PortSet>().is_err());
        assert!("20-10".parse::<PortSet>().is_err());
    }

    #[test]
    fn upstream_url_keeps_credentials_out_of_display() {
        let u: UpstreamProxyUrl = "http://egress:s%40cret@10.0.0.1:3128".parse().unwrap();
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.to_string(), "http://egress:***@10.0.0.1:3128");
        assert!("https://x:1".parse::<UpstreamProxyUrl>().is_err());
        assert!("http://x".parse::<UpstreamProxyUrl>().is_err());
        let v6: UpstreamProxyUrl = "http://[::1]:3128".parse().unwrap();
        assert_eq!(v6.authority(), "[::1]:3128");
    }

    #[test]
    fn split_host_port_rejects_missing_or_zero_port() {
        assert_eq!(
            split_host_port("a.example:443"),
            Some(("a.example".into(), 443))
        );
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1".into(), 8080)));
        assert_eq!(split_host_port("a.example"), None);
        assert_eq!(split_host_port("a.example:0"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("::1:443"), None);
    }
}
