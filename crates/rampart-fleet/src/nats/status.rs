//! What each gateway reports in the status bucket, and the fleet view built
//! from it for `rampart fleet status` and the API.

use async_nats::jetstream;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::{buckets, NatsError, STATUS_BUCKET};

/// Where a gateway stands with the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayState {
    /// No revision applied yet: the gateway is not ready to serve.
    Pending,
    /// Serving the newest revision it has seen.
    Applied,
    /// The newest revision was rejected; still serving the previous good one.
    Rejected,
}

impl GatewayState {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Pending => "pending",
            GatewayState::Applied => "applied",
            GatewayState::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRevision {
    pub id: String,
    /// Sequence number of the revision in the configuration bucket (0 if unknown).
    pub kv_revision: u64,
    pub applied_ms: i64,
    /// Applied from the copy on disk at start (NATS was not reached yet).
    pub from_disk: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRevision {
    pub id: String,
    pub kv_revision: u64,
    /// Why validation or application failed, as the gateway's callback said.
    pub error: String,
    pub rejected_ms: i64,
}

/// Load figures a gateway reports with its heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayLoad {
    pub active_connections: u64,
    pub requests_per_second: f64,
    /// CPU used by the gateway process, in percent of one CPU.
    pub cpu_percent: f64,
    /// Events waiting in the gateway's local spool.
    pub spooled_events: u64,
}

/// The status document a gateway writes under its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub gateway_id: String,
    pub state: GatewayState,
    pub applied: Option<AppliedRevision>,
    /// The last rejection, kept while it is the newest revision seen.
    pub rejected: Option<RejectedRevision>,
    pub last_seen_ms: i64,
    /// How often the gateway writes this document.
    pub heartbeat_interval_ms: u64,
    pub load: GatewayLoad,
}

/// Whether the gateway's heartbeat is recent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayHealth {
    Up,
    /// No heartbeat for three intervals: down, partitioned from NATS, or stopped.
    Stale,
}

/// One line of `rampart fleet status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub gateway_id: String,
    /// The revision being served.
    pub revision: Option<String>,
    pub state: GatewayState,
    pub health: GatewayHealth,
    pub last_seen_ms: i64,
    pub load: GatewayLoad,
    /// The rejection error when `state` is `rejected`.
    pub error: Option<String>,
}

impl FleetEntry {
    fn from_status(status: GatewayStatus, now_ms: i64) -> FleetEntry {
        let stale_after = (status.heartbeat_interval_ms.max(1) * 3) as i64;
        let health = if now_ms - status.last_seen_ms > stale_after {
            GatewayHealth::Stale
        } else {
            GatewayHealth::Up
        };
        FleetEntry {
            revision: status.applied.as_ref().map(|a| a.id.clone()),
            error: match status.state {
                GatewayState::Rejected => status.rejected.as_ref().map(|r| r.error.clone()),
                _ => None,
            },
            gateway_id: status.gateway_id,
            state: status.state,
            health,
            last_seen_ms: status.last_seen_ms,
            load: status.load,
        }
    }
}

/// Every gateway that ever reported, sorted by id.
pub async fn fleet_status(js: &jetstream::Context) -> Result<Vec<FleetEntry>, NatsError> {
    let statuses = gateway_statuses(js).await?;
    let now = rampart_events::now_ms();
    Ok(statuses
        .into_iter()
        .map(|s| FleetEntry::from_status(s, now))
        .collect())
}

/// The raw status documents, sorted by gateway id.
pub(crate) async fn gateway_statuses(
    js: &jetstream::Context,
) -> Result<Vec<GatewayStatus>, NatsError> {
    let store = buckets::key_value(js, STATUS_BUCKET, 1).await?;
    // A set: the key listing is a consumer over a bucket the gateways keep
    // writing to, and a heartbeat landing while it runs delivers its key again
    // (seen with nats-server 2.9 under load: gw1 listed a dozen times).
    let keys: std::collections::BTreeSet<String> = store
        .keys()
        .await
        .map_err(|e| NatsError::js("listing gateway status keys", e))?
        .try_collect()
        .await
        .map_err(|e| NatsError::js("listing gateway status keys", e))?;
    let mut statuses = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(value) = store
            .get(key.as_str())
            .await
            .map_err(|e| NatsError::js(format!("reading status of gateway {key}"), e))?
        else {
            continue;
        };
        match serde_json::from_slice::<GatewayStatus>(&value) {
            Ok(status) => statuses.push(status),
            Err(err) => tracing::warn!(gateway = %key, %err, "unreadable gateway status ignored"),
        }
    }
    statuses.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
    Ok(statuses)
}
