//! Rampart's gateway: the forward-proxy data path.
//!
//! A request flows listener → admission → CONNECT tunnel or absolute-form
//! forwarding → connector (direct or egress upstream) → access log. The
//! configuration is compiled into an immutable [`state::GatewayState`] that a
//! reload swaps atomically.

pub mod access_log;
pub mod admission;
pub mod auth_limiter;
pub mod busy_poll;
pub mod coaching;
pub mod config;
pub mod connector;
pub mod credential_cache;
pub mod decision;
pub mod destination;
pub mod error;
pub mod fd_budget;
pub mod flow;
pub mod flow_events;
/// Entry points of the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod head_limit;
pub mod inspection;
pub mod intercept;
pub mod listener;
pub mod metrics;
pub mod policy_stage;
pub mod proxy;
pub mod proxy_header;
pub mod relay;
pub mod resolver;
pub mod response_gate;
pub mod state;
pub mod tunnel;
pub mod upload_gate;
pub mod url_redact;

pub use config::GatewayConfig;
pub use gateway::{raise_fd_limit, Gateway, GatewayError, GatewayHandle};
pub use metrics::Metrics;
