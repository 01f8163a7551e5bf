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
    pub verdict: &'static str,
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
    /// Series of the families above that every request updates, resolved once.
    hot: HotSeries,
}

/// Handles on the labelled series that every request (or every scanned body)
/// updates. A `Family` lookup hashes the label set and takes the family's read
/// lock; with inspection on that was about ten lookups per request, ~0.4 µs
/// of the proxy's CPU. A handle shares its series' counter, so what it counts
/// is what `/metrics` shows. Side effect: these series are listed (at 0)
/// before their first use, which Prometheus prefers anyway.
struct HotSeries {
    http_200: Counter,
    bytes_client_to_origin: Counter,
    bytes_origin_to_client: Counter,
    inspect_bytes_download: Counter,
    inspect_bytes_upload: Counter,
    /// `inspect_scan_seconds` in [`SCAN_ENGINES`] order.
    inspect_seconds: [Counter<f64, AtomicU64>; SCAN_ENGINES.len()],
}

/// The engines whose scan time is counted, in `EngineTimes` field order.
const SCAN_ENGINES: [&str; 6] = ["archive", "encryption", "hash", "yara", "clamav", "dlp"];

impl HotSeries {
    fn resolve(
        requests: &Family<RequestLabels, Counter>,
        bytes: &Family<DirectionLabels, Counter>,
        inspect_bytes: &Family<ScanDirectionLabels, Counter>,
        inspect_seconds: &Family<EngineLabels, Counter<f64, AtomicU64>>,
    ) -> Self {
        let direction = |direction| bytes.get_or_create(&DirectionLabels { direction }).clone();
        let scanned = |direction| {
            inspect_bytes
                .get_or_create(&ScanDirectionLabels { direction })
                .clone()
        };
        HotSeries {
            http_200: requests
                .get_or_create(&RequestLabels {
                    kind: FlowKind::Http,
                    code: 200,
                })
                .clone(),
            bytes_client_to_origin: direction(Direction::ClientToOrigin),
            bytes_origin_to_client: direction(Direction::OriginToClient),
            inspect_bytes_download: scanned("download"),
            inspect_bytes_upload: scanned("upload"),
            inspect_seconds: SCAN_ENGINES.map(|engine| {
                inspect_seconds
                    .get_or_create(&EngineLabels { engine })
                    .clone()
            }),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::default();
        let bytes = Family::default();
        let inspect_bytes = Family::default();
        let inspect_seconds = Family::default();
        let hot = HotSeries::resolve(&requests, &bytes, &inspect_bytes, &inspect_seconds);
        Metrics {
            inspect_scans: Family::default(),
            inspect_bytes,
            inspect_engine_errors: Family::default(),
            inspect_seconds,
            connections_accepted: Counter::default(),
            connections_active: Gauge::default(),
            connections_rejected: Family::default(),
            requests,
            bytes,
            errors: Family::default(),
            upstream_up: Family::default(),
            access_log_dropped: Gauge::default(),
            config_reloads: Family::default(),
            auth_failures: Family::default(),
            auth_throttled: Family::default(),
            hot,
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
            let direction = ins.direction.as_str();
            self.inspect_scans
                .get_or_create(&ScanLabels {
                    direction,
                    verdict: ins.verdict.as_str(),
                })
                .inc();
            let scanned = match ins.direction {
                rampart_policy::Direction::Download => &self.hot.inspect_bytes_download,
                rampart_policy::Direction::Upload => &self.hot.inspect_bytes_upload,
            };
            scanned.inc_by(ins.size);
            for f in &ins.findings {
                if matches!(f.reason, Some("engine-error" | "timeout")) {
                    self.inspect_engine_errors
                        .get_or_create(&EngineLabels { engine: f.engine })
                        .inc();
                }
            }
            if let Some(t) = &ins.engine_times {
                // SCAN_ENGINES' order; a field added to EngineTimes fails here.
                let rampart_inspect::EngineTimes {
                    archive,
                    encryption,
                    hash,
                    yara,
                    clamav,
                    dlp,
                } = *t;
                let times = [archive, encryption, hash, yara, clamav, dlp];
                for (series, d) in self.hot.inspect_seconds.iter().zip(times) {
                    if !d.is_zero() {
                        series.inc_by(d.as_secs_f64());
                    }
                }
            }
        }
    }

    pub fn record_flow(&self, record: &FlowRecord) {
        if record.inspection.is_some() || record.upload_inspection.is_some() {
            self.record_inspection(record);
        }
        if record.method != "CONNECT" && record.status == 200 {
            self.hot.http_200.inc();
        } else {
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
        }
        if record.bytes_from_client > 0 {
            self.hot
                .bytes_client_to_origin
                .inc_by(record.bytes_from_client);
        }
        if record.bytes_to_client > 0 {
            self.hot
                .bytes_origin_to_client
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn record(method: &str, status: u16, from_client: u64, to_client: u64) -> FlowRecord {
        let client = "127.0.0.1:40000".parse().unwrap();
        let mut record = FlowRecord::new(client, method, "http://origin.test/".into());
        record.status = status;
        record.bytes_from_client = from_client;
        record.bytes_to_client = to_client;
        record
    }

    /// The resolved handles count into the same series a family lookup
    /// reaches: what `/metrics` shows does not depend on which path counted.
    #[test]
    fn hot_series_and_family_lookups_count_into_the_same_series() {
        let metrics = Metrics::new();
        metrics.record_flow(&record("GET", 200, 0, 1024));
        metrics.record_flow(&record("POST", 200, 300, 20));
        metrics.record_flow(&record("GET", 404, 0, 10));
        metrics.record_flow(&record("CONNECT", 200, 5, 7));
        let http_200 = metrics.requests.get_or_create(&RequestLabels {
            kind: FlowKind::Http,
            code: 200,
        });
        assert_eq!(http_200.get(), 2);
        drop(http_200);
        let text = scrape(&metrics);
        for line in [
            "rampart_requests_total{kind=\"http\",code=\"200\"} 2",
            "rampart_requests_total{kind=\"http\",code=\"404\"} 1",
            "rampart_requests_total{kind=\"connect\",code=\"200\"} 1",
            "rampart_bytes_total{direction=\"client_to_origin\"} 305",
            "rampart_bytes_total{direction=\"origin_to_client\"} 1061",
            "rampart_inspect_bytes_total{direction=\"download\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
