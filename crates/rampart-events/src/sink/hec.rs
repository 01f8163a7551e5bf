//! HTTP batches in Splunk HTTP Event Collector shape: concatenated JSON objects
//! `{"time", "host", "source", "sourcetype", "index", "event"}` posted with
//! `Authorization: Splunk TOKEN`. Any HEC-compatible collector accepts them.

use super::Destination;
use crate::config::SinkConfig;
use crate::event::Event;
use crate::http_client::{HttpClient, Target};

pub struct Hec {
    target: Target,
    auth: String,
    sourcetype: String,
    index: Option<String>,
    host: String,
    /// Keeps the connection to the collector open between batches.
    client: HttpClient,
}

impl Hec {
    pub fn new(c: &SinkConfig) -> Result<Hec, String> {
        let url = c.url.as_deref().ok_or("missing `url`")?;
        let target = Target::parse(url).map_err(|e| e.to_string())?;
        let tls = if target.https {
            Some(crate::tls_client::client_config(c.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Hec {
            target,
            auth: format!("Splunk {}", c.token.as_deref().unwrap_or_default()),
            sourcetype: c.sourcetype.clone().unwrap_or_else(|| "ocsf".into()),
            index: c.index.clone(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "rampart".into()),
            client: HttpClient::new(tls),
        })
    }
}

/// The request body for a batch.
pub fn body(events: &[Event], host: &str, sourcetype: &str, index: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let mut item = serde_json::json!({
            "time": e.time as f64 / 1000.0,
            "host": host,
            "source": "rampart",
            "sourcetype": sourcetype,
            "event": e,
        });
        if let Some(index) = index {
            item["index"] = index.into();
        }
        if serde_json::to_writer(&mut out, &item).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

impl Destination for Hec {
    fn deliver(&mut self, events: &[Event]) -> Result<(), String> {
        let payload = body(events, &self.host, &self.sourcetype, self.index.as_deref());
        let resp = self
            .client
            .send(
                "POST",
                &self.target,
                &[
                    ("Authorization", &self.auth),
                    ("Content-Type", "application/json"),
                ],
                &payload,
            )
            .map_err(|e| e.to_string())?;
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            Err(format!(
                "collector answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        }
    }
}
