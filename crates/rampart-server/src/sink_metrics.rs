//! Event sink and store health on `/metrics`, read from the pipeline's own
//! counters at each scrape: the set of sinks changes on reload, so the series
//! follow whatever sinks run at the moment of the scrape.
//!
//! ```text
//! rampart_sink_delivered_total{sink="siem"}        events the destination accepted
//! rampart_sink_failed_total{sink="siem"}           failed delivery attempts (each retried)
//! rampart_sink_dropped_total{sink="siem"}          events discarded (spool full)
//! rampart_sink_pending_bytes{sink="siem"}          bytes waiting in the sink's spool
//! rampart_sink_oldest_pending_seconds{sink="siem"} age of the oldest undelivered event
//! rampart_event_store_errors_total                 failed store commits
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use rampart_events::sink::{SinkStats, Sinks};
use rampart_events::PipelineStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// Registered once on the process's registry (`Registry::register_collector`).
pub struct SinkMetrics {
    sinks: Arc<Sinks>,
    pipeline: Arc<PipelineStats>,
}

impl std::fmt::Debug for SinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkMetrics")
    }
}

impl SinkMetrics {
    pub fn new(sinks: Arc<Sinks>, pipeline: Arc<PipelineStats>) -> Self {
        SinkMetrics { sinks, pipeline }
    }
}

/// One family: a descriptor, then one sample per sink.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    sinks: &[(String, Arc<SinkStats>)],
    value: impl Fn(&SinkStats) -> M,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (name, stats) in sinks {
        let labels = SinkLabels { sink: name.clone() };
        value(stats).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SinkMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sinks = self.sinks.stats();
        let now_ms = rampart_events::now_ms();
        family(
            &mut encoder,
            "rampart_sink_delivered",
            "Events the sink's destination accepted",
            MetricType::Counter,
            &sinks,
            |s| ConstCounter::new(s.delivered.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "rampart_sink_failed",
            "Failed delivery attempts of the sink (each is retried with back-off)",
            MetricType::Counter,
            &sinks,
            |s| ConstCounter::new(s.failures.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "rampart_sink_dropped",
            "Events the sink discarded because its spool reached spool_max_size while the destination was down",
            MetricType::Counter,
            &sinks,
            |s| ConstCounter::new(s.dropped.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "rampart_sink_pending_bytes",
            "Bytes waiting in the sink's spool",
            MetricType::Gauge,
            &sinks,
            |s| ConstGauge::new(s.pending_bytes.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "rampart_sink_oldest_pending_seconds",
            "Age of the oldest event the sink has not delivered yet (0 when its spool is drained)",
            MetricType::Gauge,
            &sinks,
            |s| ConstGauge::new(s.oldest_pending_seconds(now_ms)),
        )?;
        let store_errors = ConstCounter::new(self.pipeline.store_errors.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "rampart_event_store_errors",
            "Failed event store commits (their events were spilled to disk and retried)",
            None,
            store_errors.metric_type(),
        )?;
        store_errors.encode(metric)
    }
}
