//! `rampart server` and `rampart gateway`: load the configuration, apply the
//! flags, and run until SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rampart_server::config::parse_resolve;
use rampart_server::{Overrides, RampartConfig, Role};

/// Flags shared by `server` and `gateway`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Configuration file (TOML); embedded defaults when omitted. The same
    /// variable points `rampart ca|trust|events|device` at this file's data_dir.
    #[arg(long, short = 'c', value_name = "FILE", env = "RAMPART_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the CA, event store and logs [default: ./rampart-data].
    #[arg(long, value_name = "DIR", env = "RAMPART_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP proxy listener address [default: 127.0.0.1:3128].
    #[arg(long, value_name = "ADDR")]
    proxy_listen: Option<SocketAddr>,
    /// Agent tunnel listener address (mTLS HTTP/2 for enrolled agents) [default: 127.0.0.1:3129].
    #[arg(long, value_name = "ADDR")]
    tunnel_listen: Option<SocketAddr>,
    /// API, metrics and health listener address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<SocketAddr>,
    /// Policy file or directory [default: the built-in policy].
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Static name override HOST=IP (repeatable), like a [resolve] entry.
    #[arg(long, value_name = "HOST=IP", value_parser = parse_resolve)]
    resolve: Vec<(String, IpAddr)>,
    /// Let proxy clients reach loopback destinations (off: they cannot reach the gateway host's own services).
    #[arg(long)]
    allow_loopback_destinations: bool,
    /// Diagnostic log filter, e.g. info or rampart_gateway=debug [default: [log] level, or RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Write the process id to FILE once the listeners are bound (removed at a
    /// clean exit), for `kill -HUP "$(cat FILE)"` (reload) and `kill -USR1`
    /// (reopen the access log); refuses to start if FILE names a running rampart.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

/// `rampart gateway` takes the same flags.
pub type GatewayArgs = ServerArgs;

pub fn run_server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    run(args, Role::AllInOne)
}

pub fn run_gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    run(args, Role::Gateway)
}

fn run(args: ServerArgs, role: Role) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        data_dir: args.data_dir,
        proxy_listen: args.proxy_listen,
        api_listen: args.api_listen,
        policy: args.policy,
        resolve: args.resolve,
        allow_loopback_destinations: args.allow_loopback_destinations,
        tunnel_listen: args.tunnel_listen,
        never_create_ca: role == Role::Gateway,
        pid_file: args.pid_file,
    };
    let file = match &args.config {
        Some(path) => RampartConfig::load(path)?,
        None => RampartConfig::default(),
    };
    let config = file.with_overrides(&overrides);
    crate::logging::init(
        args.log_level.as_deref().unwrap_or(&config.log.level),
        &config.log.format,
    );
    if let Some(limit) = rampart_gateway::raise_fd_limit() {
        tracing::debug!(limit, "raised the open-files limit");
    }
    let runtime = crate::runtime(config.runtime.busy_poll).context("starting the async runtime")?;
    runtime.block_on(rampart_server::run(config, args.config, overrides, role))?;
    Ok(ExitCode::SUCCESS)
}
