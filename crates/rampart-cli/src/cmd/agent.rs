//! `rampart agent run|env|status|update|enroll`: the endpoint agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use rampart_agent::enrollment::{new_key_request, Enrollment};
use rampart_agent::{AgentConfig, AgentStatus, SteeringMode};
use rampart_events::http_client::{request, Target};

const DEFAULT_CONFIG: &str = "/etc/rampart/agent.toml";

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Run the agent in the foreground until SIGINT or SIGTERM.
    Run {
        /// Agent configuration file.
        #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Write the process id to FILE once the local listeners are bound
        /// (removed at a clean exit); refuses to start if FILE names a running rampart.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
    },
    /// Print the variables that point applications at the local proxy.
    Env {
        /// Agent configuration file [default: built-in defaults].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output syntax: sh or fish.
        #[arg(long, default_value = "sh")]
        shell: String,
    },
    /// Show enrollment, tunnel state, steering mode and counters of the running agent.
    Status {
        #[command(flatten)]
        location: Location,
        /// Print the raw status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the running agent fetch its configuration from the server now, and print
    /// the revision it applied.
    Update {
        #[command(flatten)]
        location: Location,
        /// Seconds to wait for the agent to report the fetch.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
    },
    /// Release this device's isolation with a one-time break-glass code from
    /// `rampart device release-code ID`; works without the server (root).
    Release {
        /// The code, as the administrator read it out (case and dashes do not matter).
        #[arg(long, value_name = "CODE")]
        code: String,
        #[command(flatten)]
        location: Location,
    },
    /// Enroll this device with a Rampart server (generates the device key locally).
    Enroll {
        /// The server's API base URL, e.g. http://rampart.example:8080.
        #[arg(long, value_name = "URL")]
        server: String,
        /// One-time enrollment token from `rampart device token create`.
        #[arg(long, value_name = "T")]
        token: String,
        #[command(flatten)]
        location: Location,
        /// Extra CA file to trust for an https:// server, beside the system roots.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Pin the server: trust only the CA with this SHA-256 fingerprint (as
        /// `rampart ca show` prints it on the server) for an https:// server.
        #[arg(long, value_name = "FINGERPRINT", conflicts_with_all = ["ca_file", "ca_cert"])]
        ca_sha256: Option<String>,
        /// Pin the server: trust only the CA certificate(s) in FILE for an https:// server.
        #[arg(long, value_name = "FILE", conflicts_with = "ca_file")]
        ca_cert: Option<PathBuf>,
    },
}

/// Where the agent's state lives: `--data-dir`, else the config's `data_dir`.
#[derive(Debug, clap::Args)]
struct Location {
    /// Agent configuration file (for its data_dir and steering mode).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Agent data directory [default: the config's data_dir, or /var/lib/rampart-agent].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl Location {
    fn resolve(&self) -> anyhow::Result<(PathBuf, AgentConfig)> {
        let config = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() && self.data_dir.is_none() => {
                AgentConfig::load(Path::new(DEFAULT_CONFIG))?
            }
            None => AgentConfig::from_toml("", "<defaults>")?,
        };
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.clone());
        Ok((dir, config))
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AgentCommand::Run { config, pid_file } => run_agent(&config, pid_file.as_deref()),
        AgentCommand::Env { config, shell } => env(config.as_deref(), &shell),
        AgentCommand::Status { location, json } => status(&location, json),
        AgentCommand::Update { location, timeout } => update(&location, timeout),
        AgentCommand::Release { code, location } => release(&location, &code),
        AgentCommand::Enroll {
            server,
            token,
            location,
            ca_file,
            ca_sha256,
            ca_cert,
        } => {
            let pin = match (ca_sha256, ca_cert) {
                (Some(fp), _) => Some(rampart_agent::enrollment_pin::ServerPin::parse_sha256(&fp)?),
                (None, Some(file)) => Some(rampart_agent::enrollment_pin::ServerPin::from_ca_file(
                    &file,
                )?),
                (None, None) => None,
            };
            enroll(&server, &token, &location, ca_file.as_deref(), pin)
        }
    }
}

fn run_agent(path: &Path, pid_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = AgentConfig::load(path)?;
    crate::logging::init("info", "text");
    // One thread: the agent's work per flow is small and sequential (the HTTP/2
    // connection task hands frames to flow tasks), and on a multi-threaded runtime
    // those hand-offs crossed threads. Single-threaded, one bulk flow cost ~30% less
    // agent CPU per GB and the added latency per new flow dropped (bench/agent.sh).
    // Process attribution still runs on the blocking pool.
    // No busy polling here (`[runtime] busy_poll` is the gateway's): an endpoint's
    // CPUs are shared with the very applications whose traffic the agent carries, and
    // spinning took CPU from them (bench/agent.sh: slower bulk, higher p99).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let Some(pid_file) = pid_file else {
        runtime.block_on(rampart_agent::run(config))?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut pid_file = rampart_server::pid_file::PidFile::claim(pid_file)?;
    runtime.block_on(async {
        let agent = rampart_agent::AgentBuilder::new(config).start().await?;
        pid_file.write()?;
        wait_for_stop_signal().await;
        agent.shutdown().await?;
        anyhow::Ok(())
    })?;
    drop(pid_file);
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM, as `rampart_agent::run` waits for.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn release(location: &Location, code: &str) -> anyhow::Result<ExitCode> {
    let (dir, config) = location.resolve()?;
    let log = rampart_agent::AgentLog::open(
        &dir.join("agent.log"),
        config.log.max_bytes,
        config.log.keep,
    )
    .ok();
    match rampart_agent::isolation_sync::break_glass_release(&dir, code, log.as_ref()) {
        Ok(status) => {
            println!(
                "isolation released with the break-glass code (now {}); the server is told when the agent reaches it",
                status.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("{e}"),
    }
}

fn env(config: Option<&Path>, shell: &str) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::from_toml("", "<defaults>")?,
    };
    for (name, value) in config.proxy_env() {
        match shell {
            "sh" | "bash" | "zsh" => println!("export {name}={value}"),
            "fish" => println!("set -gx {name} {value}"),
            other => bail!("unknown shell {other:?} (use sh or fish)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(location: &Location, json: bool) -> anyhow::Result<ExitCode> {
    let (dir, config) = location.resolve()?;
    let enrollment = Enrollment::load(&dir)?;
    let status = AgentStatus::load(&dir)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "data_dir": dir, "status": status, "enrollment": enrollment })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("data dir:      {}", dir.display());
    match &enrollment {
        Some(e) => println!(
            "enrollment:    device {} (user {}), server {}",
            e.device_id,
            e.user.as_deref().unwrap_or("-"),
            e.server
        ),
        None => {
            println!("enrollment:    not enrolled (rampart agent enroll --server URL --token T)")
        }
    }
    let Some(status) = status.filter(AgentStatus::process_alive) else {
        let mode = match config.steering.mode {
            SteeringMode::Transparent => "transparent",
            SteeringMode::LocalProxy => "local proxy",
        };
        println!("agent:         not running (configured mode: {mode})");
        return Ok(ExitCode::from(3));
    };
    let c = status.counters;
    println!(
        "agent:         running (pid {}), updated {}",
        status.pid, status.updated
    );
    println!(
        "steering mode: {} on {}",
        status.mode,
        status.listen.join(", ")
    );
    println!("gateway:       {}", status.gateway);
    println!("tunnel:        {}", status.tunnel);
    let sync = &status.sync;
    if sync.revision.is_empty() {
        println!("config:        {}", status.config_revision);
    } else {
        println!(
            "config:        revision {} from {} ({} server exceptions), last fetch {}{}",
            sync.revision,
            sync.source,
            sync.exceptions_from_server,
            sync.last_fetch,
            sync.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
        for skipped in &sync.skipped {
            println!("               not applied: {skipped}");
        }
    }
    if status.enrolled {
        println!(
            "uploads:       pending {}, sent {}, dropped {}",
            status.uploads_pending, status.uploads_sent, status.uploads_dropped
        );
    }
    println!(
        "counters:      steered {}, bypassed {}, tunnel-bypassed {}, blocked {}, fail-mode {}, errors {}",
        c.steered, c.bypassed, c.tunnel_bypassed, c.blocked, c.fail_mode, c.errors
    );
    Ok(ExitCode::SUCCESS)
}

fn update(location: &Location, timeout: u64) -> anyhow::Result<ExitCode> {
    let (dir, _) = location.resolve()?;
    let status =
        rampart_agent::update::request_update(&dir, std::time::Duration::from_secs(timeout))?;
    let sync = status.sync;
    if let Some(err) = sync.last_error {
        bail!(
            "the agent could not fetch its configuration: {err} (revision in force: {})",
            if sync.revision.is_empty() {
                "local agent.toml"
            } else {
                &sync.revision
            }
        );
    }
    println!("config revision {} applied", sync.revision);
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn enroll(
    server: &str,
    token: &str,
    location: &Location,
    ca_file: Option<&Path>,
    pin: Option<rampart_agent::enrollment_pin::ServerPin>,
) -> anyhow::Result<ExitCode> {
    let (dir, config) = location.resolve()?;
    let base = server.trim_end_matches('/');
    let target = Target::parse(&format!("{base}/api/v1/enroll")).map_err(anyhow::Error::msg)?;
    if pin.is_some() && !target.https {
        bail!("--ca-sha256/--ca-cert pin an https:// server; {base} is plain HTTP");
    }
    let pinned = pin.as_ref().map(|p| p.client()).transpose()?;
    let tls = match (&pinned, target.https) {
        (Some(pinned), _) => Some(pinned.config.clone()),
        (None, true) => {
            Some(rampart_events::tls_client::client_config(ca_file).map_err(anyhow::Error::msg)?)
        }
        (None, false) => None,
    };
    let key = new_key_request()?;
    let mode = match config.steering.mode {
        SteeringMode::Transparent => "transparent",
        SteeringMode::LocalProxy => "local-proxy",
    };
    let body = serde_json::json!({
        "token": token,
        "csr": key.csr_pem,
        "hostname": hostname(),
        "agent_version": env!("CARGO_PKG_VERSION"),
        "steering_mode": mode,
    })
    .to_string();
    let response = request(
        "POST",
        &target,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        tls.as_ref(),
    )
    .map_err(|e| match pinned.as_ref().and_then(|p| p.mismatch()) {
        Some(mismatch) => anyhow::anyhow!(
            "{base}: enrollment refused: {mismatch}. Check the fingerprint with `rampart ca show` on the server; the token was not sent"
        ),
        None => anyhow::anyhow!("{base}: {e}"),
    })?;
    let answer: serde_json::Value = serde_json::from_slice(&response.body)
        .with_context(|| format!("{base} answered {} with a non-JSON body", response.status))?;
    if response.status != 200 {
        let message = answer["error"].as_str().unwrap_or("no reason given");
        bail!("{base} refused enrollment ({}): {message}", response.status);
    }
    let field = |name: &str| -> anyhow::Result<String> {
        answer[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("enrollment answer lacks {name:?}"))
    };
    let enrollment = Enrollment {
        device_id: field("device_id")?,
        user: answer["user"].as_str().map(str::to_string),
        groups: answer["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        gateway: field("gateway")?,
        server: base.to_string(),
    };
    enrollment.store(&dir, &key.key_pem, &field("certificate")?, &field("ca")?)?;
    println!(
        "enrolled as device {} (user {}); tunnel to {}; credentials in {}",
        enrollment.device_id,
        enrollment.user.as_deref().unwrap_or("-"),
        enrollment.gateway,
        dir.display()
    );
    println!("restart the agent to steer through the tunnel");
    Ok(ExitCode::SUCCESS)
}
