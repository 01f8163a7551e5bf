//! The agent's error type: one variant per failure a user or operator would recognise.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the agent, each carrying the input that failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent configuration file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    ConfigRead { path: PathBuf, source: io::Error },
    /// The agent configuration is syntactically or semantically invalid.
    #[error("{origin}: {message}")]
    ConfigInvalid { origin: String, message: String },
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source} (is another agent running?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// `nft` could not be started at all.
    #[error("cannot run `nft` (install the Debian package `nftables`): {0}")]
    NftSpawn(io::Error),
    /// `nft` ran and refused the transaction.
    #[error("nft could not {action} table inet {table}: {stderr}")]
    Nft {
        action: &'static str,
        table: String,
        stderr: String,
    },
    /// The agent log could not be opened or written.
    #[error("cannot write agent log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    /// A redirected connection carried no original destination (not redirected by our table).
    #[error("connection from {peer} has no original destination: {source}")]
    OriginalDst { peer: SocketAddr, source: io::Error },
    /// The gateway could not be reached (triggers the fail mode).
    #[error("gateway {gateway} unreachable: {source}")]
    GatewayUnreachable { gateway: String, source: io::Error },
    /// The gateway refused this device's certificate as revoked (a `certificate_revoked`
    /// TLS alert). Unlike an unreachable gateway, this fails closed whatever the fail
    /// mode: a revoked (lost, compromised) device must not go direct, out of inspection.
    #[error("gateway {gateway} refused this device: its certificate is revoked ({detail})")]
    DeviceRevoked { gateway: String, detail: String },
    /// The gateway answered the tunnel request with something other than success.
    #[error("gateway {gateway} refused tunnel to {target}: {status}")]
    GatewayRefused {
        gateway: String,
        target: String,
        status: String,
    },
    /// The persisted state says this device is isolated and the kernel could
    /// not be made to match: the agent does not start (its unit restarts it),
    /// so nothing is steered past an isolation that is wanted and not in place.
    #[error("this device is isolated and the isolation could not be re-applied ({0}); not starting until it can be (check that `nft` runs; release with `rampart agent release` and a break-glass code)")]
    IsolationNotApplied(String),
    /// Enrollment state is missing, unreadable or inconsistent.
    #[error("enrollment {path}: {message}")]
    Enrollment { path: PathBuf, message: String },
    /// The mTLS tunnel's TLS settings could not be built from the enrollment files.
    #[error("agent tunnel TLS: {0}")]
    TunnelTls(String),
    /// A direct (bypass) connection to the destination failed.
    #[error("direct connection to {target} failed: {source}")]
    Direct { target: String, source: io::Error },
}

impl AgentError {
    /// True when the failure means the gateway is down, so the fail mode applies.
    pub fn is_gateway_unreachable(&self) -> bool {
        matches!(
            self,
            AgentError::GatewayUnreachable { .. } | AgentError::DeviceRevoked { .. }
        )
    }

    /// True when the gateway refused the device as revoked: the fail mode is closed
    /// then, whatever the configuration says.
    pub fn is_device_revoked(&self) -> bool {
        matches!(self, AgentError::DeviceRevoked { .. })
    }
}

impl AgentError {
    /// The status line a client of the agent gets for a flow that failed with this
    /// error: a gateway's policy refusal stays a 403 (the user was denied, nothing is
    /// broken); everything else is the gateway path failing, a 502.
    pub fn client_status(&self) -> &'static str {
        match self {
            AgentError::GatewayRefused { status, .. } if status.starts_with("403") => {
                "403 Forbidden"
            }
            _ => "502 Bad Gateway",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_policy_refusal_reaches_the_client_as_403_other_failures_as_502() {
        let refused = |status: &str| AgentError::GatewayRefused {
            gateway: "gw:3129".into(),
            target: "blocked.example:443".into(),
            status: status.into(),
        };
        assert_eq!(refused("403 Forbidden").client_status(), "403 Forbidden");
        assert_eq!(
            refused("502 Bad Gateway").client_status(),
            "502 Bad Gateway"
        );
        assert_eq!(
            refused("stream not established: reset").client_status(),
            "502 Bad Gateway"
        );
    }
}
