//! The `rampart` binary: argument parsing and wiring only. Each subcommand lives in
//! `cmd/<name>.rs` and calls into the library crate that owns the concern.

mod cmd;
mod logging;
mod package_assets;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// The async runtime of the daemons. With one CPU (`available_parallelism`
/// follows the affinity mask, e.g. `taskset -c 1`) a single-threaded scheduler
/// runs every task on the thread that polls I/O: no hand-off to a worker thread,
/// no work-stealing queues. On the plain-HTTP benchmark (one pinned CPU) it
/// cost 0–5 µs less CPU per proxied request than a one-worker multi-threaded
/// runtime (bench/RESULTS.md). Blocking work still goes to the blocking pool.
/// `busy_poll` (`[runtime] busy_poll`) makes its threads spin that long before
/// sleeping (rampart_gateway::busy_poll).
pub(crate) fn runtime(
    busy_poll: Option<std::time::Duration>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    let (runtime, problem) = rampart_gateway::busy_poll::build(&mut builder, busy_poll)?;
    if let Some(problem) = problem {
        tracing::warn!(%problem, "runtime: busy polling is off");
    }
    Ok(runtime)
}

/// Rampart: a self-hostable Security Service Edge (gateway, policy, events, agent).
#[derive(Debug, Parser)]
#[command(name = "rampart", version, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the all-in-one server: gateway listeners, API and event store.
    Server(cmd::server::ServerArgs),
    /// Run the gateway role only (for scale-out behind an L4 balancer).
    Gateway(cmd::server::GatewayArgs),
    /// Print a password hash for `[[proxy.users]]` (reads the password from stdin).
    HashPassword(cmd::hash_password::HashPasswordArgs),
    /// Check, explain and test a policy.
    Policy(cmd::policy::PolicyArgs),
    /// Manage the gateway CA: init, show, export.
    Ca(cmd::ca::CaArgs),
    /// Make developer tools trust the gateway CA: bundle, env, verify, install.
    Trust(cmd::trust::TrustArgs),
    /// Search, tail and import events; device timelines around alerts.
    Events(cmd::events::EventsArgs),
    /// The endpoint agent: run, env, status, enroll.
    Agent(cmd::agent::AgentArgs),
    /// Enrolled devices and enrollment tokens.
    Device(cmd::device::DeviceArgs),
    /// The fleet of gateways (scale-out through NATS): status.
    Fleet(cmd::fleet::FleetArgs),
    /// Endpoint isolation: check an exception file.
    Isolation(cmd::isolation::IsolationArgs),
    /// Web console accounts: add, list, remove.
    User(cmd::user::UserArgs),
    /// Scoped API tokens (admin, analyst, enroll): create, list, revoke.
    Token(cmd::token::TokenArgs),
    /// A demo origin on this machine (HTTP and HTTPS, its own CA) and the demo.toml
    /// that makes the server reach and trust it: the README tour, offline.
    Demo(cmd::demo::DemoArgs),
    /// Write shell completions and man pages into DIR (for packaging).
    #[command(hide = true)]
    PackageAssets(package_assets::PackageAssetsArgs),
}

fn main() -> ExitCode {
    // One crypto provider for the whole process: feature unification can pull in
    // both aws-lc-rs and ring, and rustls then refuses to pick one on its own.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    if !cli.command.is_long_running() {
        restore_default_sigpipe();
    }
    let result = match cli.command {
        Command::Server(args) => cmd::server::run_server(args),
        Command::Gateway(args) => cmd::server::run_gateway(args),
        Command::HashPassword(args) => cmd::hash_password::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Ca(args) => cmd::ca::run(args),
        Command::Trust(args) => cmd::trust::run(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Device(args) => cmd::device::run(args),
        Command::Fleet(args) => cmd::fleet::run(args),
        Command::Isolation(args) => cmd::isolation::run(args),
        Command::User(args) => cmd::user::run(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::PackageAssets(args) => package_assets::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rampart: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Daemons keep Rust's ignored SIGPIPE: a peer closing a socket must be an
    /// error on that connection (EPIPE), never the end of the process.
    fn is_long_running(&self) -> bool {
        matches!(
            self,
            Command::Server(_) | Command::Gateway(_) | Command::Agent(_) | Command::Demo(_)
        )
    }
}

/// One-shot commands die quietly when their output pipe closes
/// (`rampart events search ... | head`), as Unix tools do, instead of
/// panicking on a failed print.
fn restore_default_sigpipe() {
    // SAFETY: called at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
