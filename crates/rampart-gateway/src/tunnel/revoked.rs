//! Admission of a fleet gateway's agent tunnel: the device certificates are
//! enrolled and revoked on the server, whose inventory a gateway does not have;
//! the server sends the revoked device ids with each configuration revision.
//! A device with a valid certificate from the device CA (checked by the TLS
//! verifier before admission is asked) is admitted unless its id is in that
//! list; a revision that adds an id closes the device's open connections at once.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use super::DeviceAdmission;

/// The revoked device ids of the fleet's newest configuration revision.
#[derive(Default)]
pub struct RevokedDevices {
    ids: RwLock<HashSet<String>>,
    changed: Arc<tokio::sync::Notify>,
}

impl RevokedDevices {
    pub fn new() -> RevokedDevices {
        RevokedDevices::default()
    }

    /// Replaces the list (a new revision); open connections of newly revoked
    /// devices are checked at once rather than at the periodic check.
    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        let ids: HashSet<String> = ids.into_iter().collect();
        let mut current = self.ids.write().unwrap_or_else(|p| p.into_inner());
        let added = ids.difference(&current).next().is_some();
        *current = ids;
        drop(current);
        if added {
            // A stored permit if the listener is busy: the check is not lost.
            self.changed.notify_one();
        }
    }

    pub fn contains(&self, device: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(device)
    }
}

impl DeviceAdmission for RevokedDevices {
    fn admit(&self, device: &str) -> bool {
        !self.contains(device)
    }

    fn revoked_among(&self, open: &[String]) -> Vec<String> {
        open.iter().filter(|d| self.contains(d)).cloned().collect()
    }

    fn revocations(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changed.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_id_is_refused_and_announced_once_added() {
        let revoked = RevokedDevices::new();
        assert!(revoked.admit("dev-a"));
        let announced = revoked.revocations().unwrap();
        revoked.replace(["dev-a".to_string()]);
        tokio::time::timeout(std::time::Duration::from_secs(1), announced.notified())
            .await
            .expect("a new revocation wakes the tunnel listener");
        assert!(!revoked.admit("dev-a"));
        assert!(revoked.admit("dev-b"));
        let open = ["dev-a".to_string(), "dev-b".to_string()];
        assert_eq!(revoked.revoked_among(&open), ["dev-a"]);
    }
}
