//! Name resolution for origins and upstream proxies: static overrides from
//! `[resolve]` (split-horizon names, tests) first, then the system resolver,
//! with a small positive cache so a busy host is not resolved per request.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConnectError;

/// How long a successful system lookup is reused. getaddrinfo does not expose
/// record TTLs, so this is deliberately short.
const POSITIVE_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Resolver {
    overrides: Arc<BTreeMap<String, IpAddr>>,
    cache: moka::future::Cache<String, Arc<[IpAddr]>>,
}

impl Resolver {
    pub fn new(overrides: &BTreeMap<String, IpAddr>) -> Self {
        let overrides = overrides
            .iter()
            .map(|(host, ip)| (normalise_host(host), *ip))
            .collect();
        Resolver {
            overrides: Arc::new(overrides),
            cache: moka::future::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(POSITIVE_TTL)
                .build(),
        }
    }

    /// Addresses of `host` (an IP literal resolves to itself).
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, ConnectError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::from([ip]));
        }
        let key = normalise_host(host);
        if let Some(ip) = self.overrides.get(&key) {
            return Ok(Arc::from([*ip]));
        }
        self.cache
            .try_get_with(key.clone(), system_lookup(key))
            .await
            .map_err(|e: Arc<ConnectError>| match &*e {
                ConnectError::Dns { host, detail } => ConnectError::Dns {
                    host: host.clone(),
                    detail: detail.clone(),
                },
                other => ConnectError::Dns {
                    host: host.to_string(),
                    detail: other.to_string(),
                },
            })
    }
}

async fn system_lookup(host: String) -> Result<Arc<[IpAddr]>, ConnectError> {
    let addrs = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map_err(|e| ConnectError::Dns {
            host: host.clone(),
            detail: e.to_string(),
        })?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
    }
    if ips.is_empty() {
        return Err(ConnectError::Dns {
            host,
            detail: "no addresses".into(),
        });
    }
    Ok(ips.into())
}

/// Host names compare case-insensitively and without a trailing dot.
pub fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_win_and_are_case_and_dot_insensitive() {
        let mut map = BTreeMap::new();
        map.insert("Origin.Test".to_string(), "127.0.0.7".parse().unwrap());
        let r = Resolver::new(&map);
        let ips = r.resolve("origin.test.").await.unwrap();
        assert_eq!(&*ips, &["127.0.0.7".parse::<IpAddr>().unwrap()]);
        let lit = r.resolve("[::1]").await.unwrap();
        assert_eq!(&*lit, &["::1".parse::<IpAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn unknown_name_is_a_dns_error() {
        let r = Resolver::new(&BTreeMap::new());
        let err = r.resolve("does-not-exist.invalid").await.unwrap_err();
        assert_eq!(err.kind(), "dns");
    }
}
