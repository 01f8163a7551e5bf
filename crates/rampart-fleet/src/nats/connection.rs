//! Connecting to NATS: one client per process part, reconnecting on its own.

use std::time::Duration;

use crate::nats::NatsError;

/// Where NATS is and how patiently to talk to it.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `nats://host:port` (several separated by commas).
    pub url: String,
    /// The client name shown by `nats-server` monitoring (`rampart-gateway-gw1`).
    pub name: String,
    /// Timeout of JetStream API requests and publish acknowledgements.
    pub request_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub max_reconnect_delay: Duration,
}

impl NatsSettings {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> NatsSettings {
        NatsSettings {
            url: url.into(),
            name: name.into(),
            request_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }
}

/// Connect to NATS. With `wait = false` the connection is made in the
/// background (a gateway must start while NATS is down); otherwise the first
/// attempt's failure is returned. Either way the client reconnects forever.
pub async fn connect(settings: &NatsSettings, wait: bool) -> Result<async_nats::Client, NatsError> {
    let max_delay = settings.max_reconnect_delay;
    let mut options = async_nats::ConnectOptions::new()
        .name(&settings.name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(settings.request_timeout))
        // Short pauses: a restarted NATS should be used again within a second or two.
        .reconnect_delay_callback(move |attempts| {
            let step = Duration::from_millis(100).saturating_mul(attempts.min(100) as u32);
            step.min(max_delay)
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                other => tracing::debug!(%other, "NATS client event"),
            }
        });
    if !wait {
        options = options.retry_on_initial_connect();
    }
    options
        .connect(settings.url.as_str())
        .await
        .map_err(|e| NatsError::Connect {
            url: settings.url.clone(),
            message: e.to_string(),
        })
}

/// Whether the client is connected right now.
pub(crate) fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// A gateway id is a NATS subject token and a key-value key: keep it plain.
pub fn validate_gateway_id(id: &str) -> Result<(), NatsError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NatsError::BadGatewayId { id: id.to_string() })
    }
}
