//! Prometheus metrics of the data path, served on the API listener's `/metrics`.

use std::sync::atomic::AtomicU64;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::access_log::FlowRecord;
use crate::connector::upstream::UpstreamGroup;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum FlowKind {
    Http,
    Connect,
}

impl EncodeLabelValue for FlowKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            FlowKind::Http => "http",
            FlowKind::Connect => "connect",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: FlowKind,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    ClientToOrigin,
    OriginToClient,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::ClientToOrigin => "client_to_origin",
            Direction::OriginToClient => "origin_to_client",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// Labels of `rampart_connections_rejected_total`, shared by every listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    /// `proxy`, `api`, `tunnel`.
    pub listener: String,
    /// The cap or limit that refused the connection.
    pub reason: String,
}

/// Labels of counters split by one kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub group: String,
    pub proxy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

/// Labels of the inspection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScanLabels {
    /// `download` or `upload`.
    pub direction: &'static str,
    /// `clean`, `malicious`, `encrypted`, `unscannable`, `sensitive`.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub engine: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScanDirectionLabels {
    pub direction: &'static str,
}

pub struct Metrics {
    /// Bodies scanned by content inspection, by direction and verdict.
    pub inspect_scans: Family<ScanLabels, Counter>,
    /// Bytes scanned, by direction.
    pub inspect_bytes: Family<ScanDirectionLabels, Counter>,
    /// Engine errors and timeouts, by engine.
    pub inspect_engine_errors: Family<EngineLabels, Counter>,
    /// Time spent scanning, by engine.
    pub inspect_seconds: Family<EngineLabels, Counter<f64, AtomicU64>>,
    pub connections_accepted: Counter,
    pub connections_active: Gauge,
    pub connections_rejected: Family<RejectedLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub errors: Family<KindLabels, Counter>,
    pub upstream_up: Family<UpstreamLabels, Gauge>,
    pub access_log_dropped: Gauge<u64, AtomicU64>,
    pub config_reloads: Family<KindLabels, Counter>,
    /// Refused proxy logins by reason (missing, malformed, unknown_user,
    /// wrong_password, unknown_token).
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Logins refused unverified during a backoff, by what was limited (source, user).
    pub auth_throttled: Family<ScopeLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            inspect_scans: Family::default(),
            inspect_bytes: Family::default(),
            inspect_engine_errors: Family::default(),
            inspect_seconds: Family::default(),
            connections_accepted: Counter::default(),
            connections_active: Gauge::default(),
            connections_rejected: Family::default(),
            requests: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            upstream_up: Family::default(),
            access_log_dropped: Gauge::default(),
            config_reloads: Family::default(),
            auth_failures: Family::default(),
            auth_throttled: Family::default(),
        }
    }

    /// Registers every metric under the `rampart_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rampart");
        r.register(
            "connections_accepted",
            "Client connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_active",
            "Client connections open now",
            self.connections_active.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections refused at accept, by listener and reason (the cap or limit)",
            self.connections_rejected.clone(),
        );
        r.register(
            "requests",
            "Proxied requests and tunnels, by kind and status",
            self.requests.clone(),
        );
        r.register(
            "bytes",
            "Body and tunnel bytes moved, by direction",
            self.bytes.clone(),
        );
        r.register(
            "errors",
            "Failures by kind (dns, refused, timeout, tls, upstream, ...)",
            self.errors.clone(),
        );
        r.register(
            "upstream_up",
            "1 when an upstream proxy is considered healthy",
            self.upstream_up.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log records lost: the writer's queue was full, or writing them failed (a full disk, an I/O error)",
            self.access_log_dropped.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by result",
            self.config_reloads.clone(),
        );
        r.register(
            "auth_failures",
            "Refused proxy logins, by reason",
            self.auth_failures.clone(),
        );
        r.register(
            "inspect_scans",
            "Bodies scanned by content inspection, by direction and verdict",
            self.inspect_scans.clone(),
        );
        r.register(
            "inspect_bytes",
            "Body bytes scanned by content inspection, by direction",
            self.inspect_bytes.clone(),
        );
        r.register(
            "inspect_engine_errors",
            "Inspection engine errors and timeouts (unscannable: engine-error or timeout), by engine",
            self.inspect_engine_errors.clone(),
        );
        r.register(
            "inspect_scan_seconds",
            "Time spent scanning bodies, by engine",
            self.inspect_seconds.clone(),
        );
        r.register(
            "auth_throttled",
            "Proxy logins refused without verification during a failed-login backoff, by scope",
            self.auth_throttled.clone(),
        );
    }

    /// Counts what content inspection did for one flow.
    fn record_inspection(&self, record: &FlowRecord) {
        for ins in [&record.inspection, &record.upload_inspection]
            .into_iter()
            .flatten()
        {
            let verdict = ins.verdict.as_str().to_string();
            self.inspect_scans
                .get_or_create(&ScanLabels {
                    direction: ins.direction.as_str(),
                    verdict,
                })
                .inc();
            self.inspect_bytes
                .get_or_create(&ScanDirectionLabels {
                    direction: ins.direction.as_str(),
                })
                .inc_by(ins.size);
            for f in &ins.findings {
                if matches!(f.reason, Some("engine-error" | "timeout")) {
                    self.inspect_engine_errors
                        .get_or_create(&EngineLabels { engine: f.engine })
                        .inc();
                }
            }
            if let Some(t) = &ins.engine_times {
                for (engine, d) in [
                    ("archive", t.archive),
                    ("encryption", t.encryption),
                    ("hash", t.hash),
                    ("yara", t.yara),
                    ("clamav", t.clamav),
                    ("dlp", t.dlp),
                ] {
                    if !d.is_zero() {
                        self.inspect_seconds
                            .get_or_create(&EngineLabels { engine })
                            .inc_by(d.as_secs_f64());
                    }
                }
            }
        }
    }

    pub fn record_flow(&self, record: &FlowRecord) {
        if record.inspection.is_some() || record.upload_inspection.is_some() {
            self.record_inspection(record);
        }
        let kind = if record.method == "CONNECT" {
            FlowKind::Connect
        } else {
            FlowKind::Http
        };
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                code: record.status,
            })
            .inc();
        if record.bytes_from_client > 0 {
            self.bytes
                .get_or_create(&DirectionLabels {
                    direction: Direction::ClientToOrigin,
                })
                .inc_by(record.bytes_from_client);
        }
        if record.bytes_to_client > 0 {
            self.bytes
                .get_or_create(&DirectionLabels {
                    direction: Direction::OriginToClient,
                })
                .inc_by(record.bytes_to_client);
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn auth_throttled(&self, scope: &'static str) {
        self.auth_throttled
            .get_or_create(&ScopeLabels { scope })
            .inc();
    }

    /// Refreshes gauges computed from state, right before a scrape.
    pub fn refresh_upstreams<'a>(
        &self,
        groups: impl Iterator<Item = &'a std::sync::Arc<UpstreamGroup>>,
    ) {
        self.upstream_up.clear();
        for group in groups {
            for proxy in &group.proxies {
                self.upstream_up
                    .get_or_create(&UpstreamLabels {
                        group: group.name.clone(),
                        proxy: proxy.url.authority(),
                    })
                    .set(i64::from(proxy.is_up()));
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
