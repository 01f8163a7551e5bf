//! The server side of configuration: put revisions, read the fleet's status.

use async_nats::jetstream::{self, kv};

use crate::nats::status::gateway_statuses;
use crate::nats::{
    buckets, ConfigRevision, FleetEntry, GatewayStatus, NatsError, CONFIG_BUCKET, REVISION_KEY,
    STATUS_BUCKET,
};

/// A revision as stored: its id and its sequence number in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedRevision {
    pub id: String,
    pub kv_revision: u64,
}

/// Publishes configuration revisions for the whole fleet.
#[derive(Clone, Debug)]
pub struct ConfigPublisher {
    client: async_nats::Client,
    js: jetstream::Context,
    config: kv::Store,
}

impl ConfigPublisher {
    /// Open (creating when missing) the configuration and status buckets.
    pub async fn new(client: async_nats::Client) -> Result<ConfigPublisher, NatsError> {
        let js = jetstream::new(client.clone());
        let config = buckets::key_value(&js, CONFIG_BUCKET, buckets::CONFIG_HISTORY).await?;
        buckets::key_value(&js, STATUS_BUCKET, 1).await?;
        Ok(ConfigPublisher { client, js, config })
    }

    /// Make `revision` the current one; every watching gateway receives it.
    pub async fn publish(&self, revision: &ConfigRevision) -> Result<PublishedRevision, NatsError> {
        let document = revision.to_json();
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && document.len() > max_payload {
            return Err(NatsError::JetStream {
                what: format!("publishing revision {}", revision.id),
                message: format!(
                    "the revision is {} bytes and NATS accepts at most {max_payload} per message: raise `max_payload` in nats-server's configuration (up to 64 MB) or ship large category databases separately",
                    document.len()
                ),
            });
        }
        let kv_revision = self
            .config
            .put(REVISION_KEY, document.into())
            .await
            .map_err(|e| NatsError::js(format!("publishing revision {}", revision.id), e))?;
        Ok(PublishedRevision {
            id: revision.id.clone(),
            kv_revision,
        })
    }

    /// The current revision and its sequence number, if one was published.
    pub async fn current(&self) -> Result<Option<(u64, ConfigRevision)>, NatsError> {
        let entry = self
            .config
            .entry(REVISION_KEY)
            .await
            .map_err(|e| NatsError::js("reading the current revision", e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some((
                entry.revision,
                ConfigRevision::from_json(&entry.value, "the current revision in NATS")?,
            ))),
            _ => Ok(None),
        }
    }

    /// The status documents of every gateway, sorted by id.
    pub async fn gateway_statuses(&self) -> Result<Vec<GatewayStatus>, NatsError> {
        gateway_statuses(&self.js).await
    }

    /// The fleet view for `rampart fleet status` and the API.
    pub async fn fleet_status(&self) -> Result<Vec<FleetEntry>, NatsError> {
        crate::nats::fleet_status(&self.js).await
    }
}
