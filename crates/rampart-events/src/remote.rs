//! A client for a running server's events API (`rampart events --server URL --token T`).

use std::sync::Arc;

use serde::Deserialize;

use crate::error::EventsError;
use crate::event::Event;
use crate::http_client::{request, Target};
use crate::render::time_text;
use crate::store::Page;

pub struct RemoteClient {
    base: String,
    token: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Deserialize)]
struct PageBody {
    events: Vec<Event>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct TimelineBody {
    alert: Event,
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

fn remote_err(message: impl Into<String>) -> EventsError {
    EventsError::Sink {
        sink: "server".into(),
        message: message.into(),
    }
}

/// Percent-encode a query-string value (RFC 3986 unreserved characters pass).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RemoteClient {
    /// `server` is the API base URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(
        server: &str,
        token: &str,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<RemoteClient, EventsError> {
        let base = server.trim_end_matches('/').to_string();
        let target = Target::parse(&base).map_err(|e| remote_err(e.to_string()))?;
        let tls = if target.https {
            Some(crate::tls_client::client_config(extra_ca).map_err(remote_err)?)
        } else {
            None
        };
        Ok(RemoteClient {
            base,
            token: token.to_string(),
            tls,
        })
    }

    fn get(&self, path_and_query: &str) -> Result<Option<Vec<u8>>, EventsError> {
        let url = format!("{}{path_and_query}", self.base);
        let target = Target::parse(&url).map_err(|e| remote_err(e.to_string()))?;
        let auth = format!("Bearer {}", self.token);
        let resp = request(
            "GET",
            &target,
            &[("Authorization", &auth)],
            &[],
            self.tls.as_ref(),
        )
        .map_err(|e| remote_err(format!("{}: {e}", self.base)))?;
        match resp.status {
            200 => Ok(Some(resp.body)),
            404 => Ok(None),
            status => {
                let msg = serde_json::from_slice::<ErrorBody>(&resp.body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).into_owned());
                Err(remote_err(format!(
                    "{} answered {status}: {msg}",
                    self.base
                )))
            }
        }
    }

    /// `GET /api/v1/events` (or `/api/v1/alerts` when `alerts_only`).
    pub fn search(
        &self,
        query: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, EventsError> {
        let mut qs = format!("/api/v1/events?q={}&limit={limit}", encode(query));
        if let Some(f) = from_ms {
            qs.push_str(&format!("&from={}", encode(&time_text(f))));
        }
        if let Some(t) = to_ms {
            qs.push_str(&format!("&to={}", encode(&time_text(t))));
        }
        if let Some(c) = cursor {
            qs.push_str(&format!("&cursor={}", encode(c)));
        }
        let body = self
            .get(&qs)?
            .ok_or_else(|| remote_err("events API not found (is this a Rampart server?)"))?;
        let page: PageBody =
            serde_json::from_slice(&body).map_err(|e| remote_err(format!("bad response: {e}")))?;
        Ok(Page {
            events: page.events,
            next_cursor: page.next_cursor,
        })
    }

    pub fn event(&self, id: &str) -> Result<Option<Event>, EventsError> {
        match self.get(&format!("/api/v1/events/{}", encode(id)))? {
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| remote_err(format!("bad response: {e}"))),
            None => Ok(None),
        }
    }

    pub fn alert_timeline(
        &self,
        id: &str,
        window: &str,
    ) -> Result<Option<(Event, Vec<Event>)>, EventsError> {
        match self.get(&format!(
            "/api/v1/alerts/{}/timeline?window={}",
            encode(id),
            encode(window)
        ))? {
            Some(body) => {
                let t: TimelineBody = serde_json::from_slice(&body)
                    .map_err(|e| remote_err(format!("bad response: {e}")))?;
                Ok(Some((t.alert, t.events)))
            }
            None => Ok(None),
        }
    }
}
