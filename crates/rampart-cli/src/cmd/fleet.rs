//! `rampart fleet status`: the gateways of a fleet as they report themselves
//! in NATS (applied revision, state, heartbeat, load).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rampart_fleet::nats::{ConfigPublisher, FleetEntry, GatewayHealth, NatsSettings};

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Every gateway that reported: revision served, state, last heartbeat, load.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The fleet's NATS server (`[fleet] nats`).
    #[arg(long, env = "RAMPART_NATS")]
    nats: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    /// One JSON object per gateway and line.
    Json,
}

pub fn run(args: FleetArgs) -> Result<ExitCode> {
    match args.command {
        FleetCommand::Status(a) => status(a),
    }
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let entries = runtime.block_on(async {
        let settings = NatsSettings::new(&a.nats, "rampart-cli");
        let connect = rampart_fleet::nats::connect(&settings, true);
        let client = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .with_context(|| format!("NATS at {} did not answer within 10 s", a.nats))?
            .with_context(|| format!("connecting to NATS at {}", a.nats))?;
        let publisher = ConfigPublisher::new(client).await?;
        anyhow::Ok(publisher.fleet_status().await?)
    })?;
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            for e in &entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        Format::Table => write!(out, "{}", table(&entries, rampart_events::now_ms()))?,
    }
    // A script checking the fleet gets a failure when a gateway is stale or rejected.
    let healthy = entries
        .iter()
        .all(|e| e.health == GatewayHealth::Up && e.error.is_none());
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn table(entries: &[FleetEntry], now_ms: i64) -> String {
    if entries.is_empty() {
        return "no gateway has reported yet\n".into();
    }
    let mut s = format!(
        "{:<20} {:<10} {:<7} {:<34} {:>9} {:>8}  {}\n",
        "GATEWAY", "STATE", "HEALTH", "REVISION", "LAST SEEN", "CONNS", "ERROR"
    );
    for e in entries {
        s.push_str(&format!(
            "{:<20} {:<10} {:<7} {:<34} {:>8}s {:>8}  {}\n",
            e.gateway_id,
            e.state.as_str(),
            match e.health {
                GatewayHealth::Up => "up",
                GatewayHealth::Stale => "stale",
            },
            e.revision.as_deref().unwrap_or("-"),
            ((now_ms - e.last_seen_ms).max(0) / 1000),
            e.load.active_connections,
            e.error.as_deref().unwrap_or(""),
        ));
    }
    s
}
