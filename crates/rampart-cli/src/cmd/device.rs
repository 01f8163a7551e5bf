//! `rampart device list` and `rampart device token create`: enrolled devices and
//! one-time enrollment tokens, from the local data dir or a running server's API;
//! `rampart device isolate|release|status|release-code`: isolation (docs/isolation.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use rampart_events::http_client::{request, Target};
use rampart_server::devices::{DeviceRecord, Inventory, TokenStore};
use rampart_server::isolation::{IsolationStore, IsolationView};

use super::state::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeviceCommand {
    /// List enrolled devices (id, user, hostname, agent version, last seen, steering mode).
    List {
        #[command(flatten)]
        source: Source,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: the gateway closes its open tunnel and refuses it from now on.
    Revoke {
        /// Device id, as `rampart device list` shows it.
        id: String,
        #[command(flatten)]
        source: Source,
    },
    /// Isolate a device: the agent cuts it off the network except for Rampart.
    Isolate {
        /// Device id, as `rampart device list` shows it.
        id: String,
        /// Why (recorded with the isolation and its event).
        #[arg(long, value_name = "R")]
        reason: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    /// Release an isolated device.
    Release {
        id: String,
        #[arg(long, value_name = "R")]
        reason: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    /// A device's isolation: desired, as the agent reported it, pending or not.
    Status {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Issue a one-time break-glass code that releases the device locally
    /// (`rampart agent release --code`), even when it cannot reach the server.
    ReleaseCode {
        id: String,
        #[command(flatten)]
        source: Source,
    },
    /// One-time enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a one-time enrollment token (printed once; only its hash is stored).
    Create {
        /// User the enrolled device is attributed to.
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Groups, comma separated.
        #[arg(long, value_name = "G", value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime: a number with s, m, h or d.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: i64,
        #[command(flatten)]
        source: Source,
    },
}

/// Local data dir, or a running server (`--server URL --token T`); `rampart token`
/// uses it too.
#[derive(Debug, clap::Args)]
pub(super) struct Source {
    #[command(flatten)]
    pub(super) dir: DataDirArgs,
    /// API base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL", requires = "token")]
    pub(super) server: Option<String>,
    /// Admin token of that server (`<data dir>/admin.token`).
    #[arg(long, value_name = "T", env = "RAMPART_TOKEN")]
    pub(super) token: Option<String>,
    /// Extra CA file to trust for an https:// server.
    #[arg(long, value_name = "FILE")]
    pub(super) ca_file: Option<PathBuf>,
}

fn parse_ttl(text: &str) -> Result<i64, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 30m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?}: must be positive"))
}

pub fn run(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeviceCommand::List { source, json } => list(&source, json),
        DeviceCommand::Revoke { id, source } => revoke(&source, &id),
        DeviceCommand::Isolate { id, reason, source } => {
            change(&source, &id, "isolate", reason.as_deref())
        }
        DeviceCommand::Release { id, reason, source } => {
            change(&source, &id, "release", reason.as_deref())
        }
        DeviceCommand::Status { id, json, source } => isolation_status(&source, &id, json),
        DeviceCommand::ReleaseCode { id, source } => release_code(&source, &id),
        DeviceCommand::Token {
            command:
                TokenCommand::Create {
                    user,
                    groups,
                    ttl,
                    source,
                },
        } => create_token(&source, user.as_deref(), &groups, ttl),
    }
}

/// One API call to `--server`; the body of a 2xx answer, else an error with the
/// server's answer.
pub(super) fn call(
    source: &Source,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<Vec<u8>> {
    let (Some(server), Some(token)) = (&source.server, &source.token) else {
        bail!("--server needs --token");
    };
    let base = server.trim_end_matches('/');
    let target = Target::parse(&format!("{base}{path}")).map_err(anyhow::Error::msg)?;
    let tls = if target.https {
        Some(
            rampart_events::tls_client::client_config(source.ca_file.as_deref())
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let auth = format!("Bearer {token}");
    let response = request(
        method,
        &target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
        tls.as_ref(),
    )
    .map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    if !(200..300).contains(&response.status) {
        bail!(
            "{base} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    Ok(response.body)
}

fn list(source: &Source, json: bool) -> anyhow::Result<ExitCode> {
    let (devices, isolation): (Vec<DeviceRecord>, Vec<IsolationView>) = if source.server.is_some() {
        (
            serde_json::from_slice(&call(source, "GET", "/api/v1/devices", "")?)
                .context("the server's device list is not valid JSON")?,
            serde_json::from_slice(&call(source, "GET", "/api/v1/isolation", "")?)
                .context("the server's isolation list is not valid JSON")?,
        )
    } else {
        let data_dir = source.dir.resolve()?;
        (
            Inventory::new(&data_dir).list()?,
            IsolationStore::new(&data_dir)
                .all()?
                .iter()
                .map(|(id, r)| IsolationView::of(id, r))
                .collect(),
        )
    };
    let isolation_of = |id: &str| {
        isolation
            .iter()
            .find(|v| v.device == id)
            .map_or("released", |v| v.state.as_str())
            .to_string()
    };
    if json {
        let rows: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["isolation"] = serde_json::Value::String(isolation_of(&d.id));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<21} {:<16} {:<20} {:<8} {:<25} {:<24} {:<10} REVOKED",
        "ID", "USER", "HOSTNAME", "AGENT", "LAST SEEN", "MODE", "ISOLATION"
    );
    for d in &devices {
        println!(
            "{:<21} {:<16} {:<20} {:<8} {:<25} {:<24} {:<10} {}",
            d.id,
            d.user.as_deref().unwrap_or("-"),
            d.hostname,
            d.agent_version,
            d.last_seen,
            d.steering_mode,
            isolation_of(&d.id),
            d.revoked_at.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn create_token(
    source: &Source,
    user: Option<&str>,
    groups: &[String],
    ttl: i64,
) -> anyhow::Result<ExitCode> {
    let token = if source.server.is_some() {
        let body = serde_json::json!({ "user": user, "groups": groups, "ttl_secs": ttl });
        let answer: serde_json::Value = serde_json::from_slice(&call(
            source,
            "POST",
            "/api/v1/devices/tokens",
            &body.to_string(),
        )?)
        .context("the server's answer is not valid JSON")?;
        answer["token"]
            .as_str()
            .context("the server's answer has no token")?
            .to_string()
    } else {
        TokenStore::new(&source.dir.resolve()?).create(user, groups, ttl)?
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn revoke(source: &Source, id: &str) -> anyhow::Result<ExitCode> {
    if source.server.is_some() {
        call(source, "POST", &format!("/api/v1/devices/{id}/revoke"), "")?;
    } else {
        let data_dir = source.dir.resolve()?;
        if !Inventory::new(&data_dir).revoke(id)? {
            bail!("no device {id:?} in {}", data_dir.display());
        }
    }
    println!("revoked {id}");
    Ok(ExitCode::SUCCESS)
}

fn need_server(source: &Source, what: &str) -> anyhow::Result<()> {
    if source.server.is_none() {
        bail!("{what} talks to the running server: add --server URL --token T");
    }
    Ok(())
}

fn change(
    source: &Source,
    id: &str,
    action: &str,
    reason: Option<&str>,
) -> anyhow::Result<ExitCode> {
    need_server(source, &format!("device {action}"))?;
    let body = serde_json::json!({ "reason": reason }).to_string();
    let view: serde_json::Value = serde_json::from_slice(&call(
        source,
        "POST",
        &format!("/api/v1/devices/{id}/{action}"),
        &body,
    )?)
    .context("the server's answer is not valid JSON")?;
    let changed = view["changed"].as_bool().unwrap_or(false);
    println!(
        "{id}: {} ({}; generation {})",
        view["state"].as_str().unwrap_or("?"),
        if changed {
            "requested"
        } else {
            "already requested, nothing changed"
        },
        view["generation"]
    );
    Ok(ExitCode::SUCCESS)
}

fn isolation_status(source: &Source, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let view: IsolationView = if source.server.is_some() {
        serde_json::from_slice(&call(
            source,
            "GET",
            &format!("/api/v1/devices/{id}/isolation"),
            "",
        )?)
        .context("the server's answer is not valid JSON")?
    } else {
        let data_dir = source.dir.resolve()?;
        match IsolationStore::new(&data_dir).get(id)? {
            Some(r) => IsolationView::of(id, &r),
            None => bail!("no isolation record for {id:?} in {}", data_dir.display()),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("device:     {}", view.device);
    println!(
        "state:      {}{}",
        view.state,
        if view.pending {
            " (pending: not confirmed by the agent yet)"
        } else {
            ""
        }
    );
    println!(
        "desired:    {} (generation {}) by {} since {}",
        view.desired, view.generation, view.by, view.since
    );
    println!("reason:     {}", or(&view.reason));
    println!("trigger:    {}", or(&view.trigger_event));
    println!(
        "agent says: {} (reported {})",
        view.actual,
        or(&view.reported_at)
    );
    if let Some(ms) = view.confirm_latency_ms {
        println!(
            "confirmed:  {} ({ms} ms after the request)",
            or(&view.confirmed_at)
        );
    }
    if let Some(detail) = &view.detail {
        println!("detail:     {detail}");
    }
    if let Some(err) = &view.self_test_error {
        println!("self-test:  FAILED: {err} (isolation stays on)");
    }
    println!(
        "break-glass code issued: {}",
        if view.break_glass_code {
            "yes (unused)"
        } else {
            "no"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn release_code(source: &Source, id: &str) -> anyhow::Result<ExitCode> {
    need_server(source, "device release-code")?;
    let answer: serde_json::Value = serde_json::from_slice(&call(
        source,
        "POST",
        &format!("/api/v1/devices/{id}/release-code"),
        "",
    )?)
    .context("the server's answer is not valid JSON")?;
    let code = answer["code"]
        .as_str()
        .context("the server's answer has no code")?;
    println!("{code}");
    eprintln!(
        "one-time code for {id}: shown once; on the device: rampart agent release --code {code}"
    );
    Ok(ExitCode::SUCCESS)
}
