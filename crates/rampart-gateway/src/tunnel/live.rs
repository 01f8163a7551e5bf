//! The agent tunnel connections open now, by device, so that a revocation ends them.
//!
//! An agent keeps one tunnel connection for as long as it runs (days, on a laptop that
//! sleeps and wakes), so refusing only *new* connections of a revoked device would leave
//! a stolen or compromised device its tunnel until the next restart. Each connection
//! registers here once its device is admitted; [`LiveTunnels::disconnect`] cancels every
//! connection of a device, and the connection closes its socket, ending all its flows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Open tunnel connections by device id.
#[derive(Default)]
pub struct LiveTunnels {
    by_device: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One registered connection; dropping it (the connection ended) unregisters it.
pub struct LiveTunnel {
    registry: Arc<LiveTunnels>,
    device: String,
    id: u64,
    cancel: CancellationToken,
}

impl LiveTunnels {
    pub fn new() -> Arc<Self> {
        Arc::new(LiveTunnels::default())
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<(u64, CancellationToken)>>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.by_device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an admitted connection of `device`.
    pub fn register(self: &Arc<Self>, device: &str) -> LiveTunnel {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.map()
            .entry(device.to_string())
            .or_default()
            .push((id, cancel.clone()));
        LiveTunnel {
            registry: self.clone(),
            device: device.to_string(),
            id,
            cancel,
        }
    }

    /// Devices with at least one connection open, each once.
    pub fn devices(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Ends every open connection of `device`; returns how many there were.
    pub fn disconnect(&self, device: &str) -> usize {
        let map = self.map();
        let Some(connections) = map.get(device) else {
            return 0;
        };
        for (_, cancel) in connections {
            cancel.cancel();
        }
        connections.len()
    }
}

impl LiveTunnel {
    /// Completes when the connection must end (its device was revoked).
    pub async fn revoked(&self) {
        self.cancel.cancelled().await
    }
}

impl Drop for LiveTunnel {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        if let Some(connections) = map.get_mut(&self.device) {
            connections.retain(|(id, _)| *id != self.id);
            if connections.is_empty() {
                map.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn disconnect_ends_every_connection_of_the_device_and_only_those() {
        let live = LiveTunnels::new();
        let a1 = live.register("dev-a");
        let a2 = live.register("dev-a");
        let b = live.register("dev-b");
        let mut devices = live.devices();
        devices.sort();
        assert_eq!(devices, ["dev-a", "dev-b"]);

        assert_eq!(live.disconnect("dev-a"), 2);
        for conn in [&a1, &a2] {
            tokio::time::timeout(Duration::from_secs(1), conn.revoked())
                .await
                .expect("a connection of the revoked device was not told to end");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.revoked())
                .await
                .is_err(),
            "another device's connection was ended"
        );
        assert_eq!(live.disconnect("dev-unknown"), 0);
    }

    #[test]
    fn a_connection_that_ends_is_forgotten() {
        let live = LiveTunnels::new();
        let first = live.register("dev-a");
        let second = live.register("dev-a");
        drop(first);
        assert_eq!(live.devices(), ["dev-a"]);
        drop(second);
        assert!(live.devices().is_empty());
        assert_eq!(live.disconnect("dev-a"), 0);
    }
}
