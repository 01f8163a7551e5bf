//! The Rampart endpoint agent (Linux first).
//!
//! Steers this host's outbound connections to the gateway, directly, or nowhere, per
//! process and host: [`attribution`] finds the process behind a connection,
//! [`SteeringPolicy`] decides, [`GatewayTunnel`] carries steered flows (over the mTLS
//! HTTP/2 [`MtlsH2Tunnel`] once [`enrollment`] is done), and the
//! [`AgentLog`] records every decision in stable wording. Entry point: [`run`].

pub mod agent_log;
pub mod attribution;
pub mod client_hello;
pub mod config;
pub mod connector;
pub mod enrollment;
pub mod enrollment_pin;
pub mod error;
pub mod flow;
/// Entry points of the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing;
pub mod glob;
mod h2_flow;
pub mod http_head;
pub mod isolation;
pub mod isolation_sync;
mod local_proxy;
pub mod mtls_tunnel;
pub mod process;
mod relay;
mod runtime;
pub mod server_config;
pub mod status;
pub mod steering;
pub mod steering_table;
mod transparent;
pub mod tunnel;
pub mod update;
pub mod uploader;

pub use agent_log::AgentLog;
pub use attribution::{Attributor, ProcessAttribution};
pub use config::{AgentConfig, SteeringMode};
pub use connector::Destination;
pub use enrollment::Enrollment;
pub use error::AgentError;
pub use flow::CounterSnapshot;
pub use mtls_tunnel::MtlsH2Tunnel;
pub use process::{ProcessInfo, UNKNOWN_PROCESS};
pub use runtime::{run, AgentBuilder, RunningAgent};
pub use status::AgentStatus;
pub use steering::{
    ExceptionPolicy, FailMode, FailPolicy, SteeringAction, SteeringDecision, SteeringPolicy,
};
pub use steering_table::{SteeringTable, TableSpec};
pub use tunnel::{
    AsyncStream, BoxFuture, BoxedStream, FlowRequest, FlowStream, GatewayTunnel, HttpProxyTunnel,
};
