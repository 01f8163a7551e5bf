//! One flow from decision to bytes: decide, log, then connect directly, through the
//! gateway, or not at all. Shared by the local proxy and the transparent listener.

use crate::agent_log::AgentLog;
use crate::attribution::ProcessAttribution;
use crate::connector::{Connector, Destination};
use crate::error::AgentError;
use crate::process::ProcessInfo;
use crate::server_config::LiveSteering;
use crate::steering::{FailMode, SteeringAction, SteeringDecision, SteeringPolicy};
use crate::tunnel::{FlowRequest, FlowStream, GatewayTunnel};
use crate::uploader::{DecisionRecord, Uploader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters for `rampart agent status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub steered: AtomicU64,
    pub bypassed: AtomicU64,
    pub tunnel_bypassed: AtomicU64,
    pub blocked: AtomicU64,
    pub fail_mode: AtomicU64,
    pub errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub steered: u64,
    pub bypassed: u64,
    pub tunnel_bypassed: u64,
    pub blocked: u64,
    /// Flows decided by the fail mode because the gateway was unreachable.
    pub fail_mode: u64,
    pub errors: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            steered: self.steered.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            tunnel_bypassed: self.tunnel_bypassed.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
            fail_mode: self.fail_mode.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn count(&self, action: SteeringAction) {
        let counter = match action {
            SteeringAction::Steer => &self.steered,
            SteeringAction::Bypass => &self.bypassed,
            SteeringAction::TunnelBypass => &self.tunnel_bypassed,
            SteeringAction::Block => &self.blocked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What became of a flow.
pub enum Outcome {
    /// A stream to the destination (direct or through the gateway).
    Connected(FlowStream),
    /// Refused by policy or by the closed fail mode; already logged.
    Blocked,
    /// The chosen path failed (already logged to tracing).
    Failed(AgentError),
}

/// Everything a listener needs to handle flows.
pub struct FlowContext {
    /// The exceptions and fail mode in force (swapped when the server sends a new
    /// configuration).
    pub live: Arc<LiveSteering>,
    pub tunnel: Arc<dyn GatewayTunnel>,
    pub attribution: Arc<dyn ProcessAttribution>,
    pub log: Arc<AgentLog>,
    /// Where decisions with `log = true` go to reach the server (enrolled agents).
    pub uploader: Option<Arc<Uploader>>,
    pub connector: Connector,
    pub counters: Counters,
}

impl FlowContext {
    /// Decide and open the flow. `host` is the name from SNI, Host header or the proxy
    /// request; without one the destination address is used for matching and logging.
    pub async fn open(
        &self,
        destination: Destination,
        host: Option<String>,
        process: ProcessInfo,
    ) -> Outcome {
        let label = match (&host, &destination) {
            (Some(host), _) => host.clone(),
            (None, Destination::Addr(addr)) => addr.ip().to_string(),
            (None, Destination::Name(name, _)) => name.clone(),
        };
        let decision = self.live.decide(&process, &label, destination.port());
        match decision.action {
            SteeringAction::Block => {
                self.counters.count(SteeringAction::Block);
                self.log
                    .decision(SteeringAction::Block, &process, &label, None);
                self.upload(&decision, &process, &label, &destination);
                Outcome::Blocked
            }
            SteeringAction::Bypass => {
                self.counters.count(SteeringAction::Bypass);
                self.log
                    .decision(SteeringAction::Bypass, &process, &label, None);
                self.upload(&decision, &process, &label, &destination);
                self.direct(&destination).await
            }
            action @ (SteeringAction::Steer | SteeringAction::TunnelBypass) => {
                let flow = FlowRequest {
                    destination,
                    host,
                    process,
                    action,
                };
                match self.tunnel.open(&flow).await {
                    Ok(stream) => {
                        self.counters.count(action);
                        self.log.decision(action, &flow.process, &label, None);
                        self.upload(&decision, &flow.process, &label, &flow.destination);
                        Outcome::Connected(stream)
                    }
                    Err(err) if err.is_gateway_unreachable() => {
                        self.fail_mode(flow, &label, err).await
                    }
                    Err(err) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%err, process = %flow.process, host = %label, "gateway refused flow");
                        Outcome::Failed(err)
                    }
                }
            }
        }
    }

    /// Queues an exception's decision for the server (`log = true`; steered flows are
    /// the gateway's to record).
    fn upload(
        &self,
        decision: &SteeringDecision,
        process: &crate::process::ProcessInfo,
        label: &str,
        destination: &Destination,
    ) {
        let Some(uploader) = &self.uploader else {
            return;
        };
        if !decision.log || decision.action == SteeringAction::Steer {
            return;
        }
        let dst_ip = match destination {
            Destination::Addr(addr) => Some(addr.ip()),
            Destination::Name(..) => None,
        };
        uploader.record(&DecisionRecord::new(
            decision.action,
            process,
            label,
            destination.port(),
            dst_ip,
            decision.rule.as_deref(),
        ));
    }

    async fn fail_mode(&self, flow: FlowRequest, label: &str, err: AgentError) -> Outcome {
        self.counters.fail_mode.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%err, "gateway unreachable, applying fail mode");
        let fail = self.live.fail();
        // A revoked device fails closed whatever the mode: going direct would take a
        // lost or compromised laptop out of inspection (docs/agent.md).
        let revoked = err.is_device_revoked();
        let direct = if revoked {
            fail.allows_direct_when_revoked(label)
        } else {
            fail.allows_direct(label)
        };
        if direct {
            let note = match (revoked, fail.mode) {
                (true, _) => "device revoked, fail-closed allowlist",
                (false, FailMode::Open) => "gateway unreachable, fail-open",
                (false, FailMode::Closed) => "gateway unreachable, fail-closed allowlist",
            };
            self.counters.count(SteeringAction::Bypass);
            self.log
                .decision(SteeringAction::Bypass, &flow.process, label, Some(note));
            self.direct(&flow.destination).await
        } else {
            self.counters.count(SteeringAction::Block);
            self.log.decision(
                SteeringAction::Block,
                &flow.process,
                label,
                Some(if revoked {
                    "device revoked, fail-closed"
                } else {
                    "gateway unreachable, fail-closed"
                }),
            );
            Outcome::Blocked
        }
    }

    async fn direct(&self, destination: &Destination) -> Outcome {
        match self.connector.direct(destination).await {
            Ok(stream) => Outcome::Connected(FlowStream::Tcp(stream)),
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%err, "direct connection failed");
                Outcome::Failed(err)
            }
        }
    }
}
