//! `rampart token create|list|revoke`: scoped API tokens. Without `--server` they edit
//! the data dir's store (`api-tokens.json`, hashed, mode 0600), which a running server
//! reads on every call: a new token works and a revoked one fails at once, without a
//! restart. With `--server URL --token T` (an admin token) they go through the API
//! (`/api/v1/tokens`), for an operator who reaches the server only over the network.
//! Both ways end in the same `TokenStore` code.

use std::process::ExitCode;

use anyhow::{bail, Context};
use rampart_server::api::tokens::{Scope, TokenList, TokenStore, TokenView, ADMIN_FILE_TOKEN};

use super::device::{call, Source};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown only now; only its hash is stored).
    Create {
        /// admin (everything), analyst (read-only) or enroll (only creates one-time
        /// enrollment tokens).
        #[arg(long, value_name = "SCOPE")]
        scope: String,
        /// A name to find it by in `token list`, audit events and `token revoke`
        /// [default: its id].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    /// List tokens: id, name, scope, creation and revocation times (never secrets).
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Revoke a token by id or name: the server refuses it from the next call on.
    /// Revoking a revoked token changes nothing and says so.
    Revoke {
        /// The token's id (`tok_...`) or name.
        id: String,
        #[command(flatten)]
        source: Source,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create {
            scope,
            name,
            source,
        } => create(&source, Scope::parse(&scope)?, name.as_deref()),
        TokenCommand::List { json, source } => list(&source, json),
        TokenCommand::Revoke { id, source } => revoke(&source, &id),
    }
}

fn create(source: &Source, scope: Scope, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let (view, secret) = if source.server.is_some() {
        let body = serde_json::json!({ "scope": scope, "name": name });
        let answer: serde_json::Value =
            serde_json::from_slice(&call(source, "POST", "/api/v1/tokens", &body.to_string())?)
                .context("the server's answer is not valid JSON")?;
        let secret = answer["token"]
            .as_str()
            .context("the server's answer has no token")?
            .to_string();
        let view: TokenView = serde_json::from_value(answer)
            .context("the server's answer does not describe a token")?;
        (view, secret)
    } else {
        let data_dir = source.dir.resolve()?;
        ensure_dir(&data_dir)?;
        let (record, secret) = TokenStore::new(&data_dir).create(scope, name)?;
        (record.view(), secret)
    };
    eprintln!(
        "created token {} (name {}, scope {}); its secret is printed once, below",
        view.id, view.name, view.scope
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

fn list(source: &Source, json: bool) -> anyhow::Result<ExitCode> {
    let list: TokenList = if source.server.is_some() {
        serde_json::from_slice(&call(source, "GET", "/api/v1/tokens", "")?)
            .context("the server's token list is not valid JSON")?
    } else {
        let data_dir = source.dir.resolve()?;
        TokenList {
            tokens: TokenStore::new(&data_dir)
                .list()?
                .iter()
                .map(|t| t.view())
                .collect(),
            admin_token_file: rampart_events::token::token_path(&data_dir).exists(),
        }
    };
    if json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<24} {:<8} {:<25} REVOKED",
        "ID", "NAME", "SCOPE", "CREATED"
    );
    if list.admin_token_file {
        println!(
            "{:<18} {:<24} {:<8} {:<25} -",
            "-", ADMIN_FILE_TOKEN, "admin", "(the data dir's file)"
        );
    }
    for t in &list.tokens {
        println!(
            "{:<18} {:<24} {:<8} {:<25} {}",
            t.id,
            t.name,
            t.scope.as_str(),
            t.created,
            t.revoked.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(source: &Source, id: &str) -> anyhow::Result<ExitCode> {
    let (view, changed) = if source.server.is_some() {
        // Ids and names are letters, digits, '.', '_' and '-': nothing to escape in
        // the URL path, and anything else names no token.
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            bail!("{id:?} is not a token id or name (see `rampart token list`)");
        }
        let answer: serde_json::Value = serde_json::from_slice(&call(
            source,
            "POST",
            &format!("/api/v1/tokens/{id}/revoke"),
            "",
        )?)
        .context("the server's answer is not valid JSON")?;
        let changed = answer["changed"].as_bool().unwrap_or(true);
        let view: TokenView = serde_json::from_value(answer)
            .context("the server's answer does not describe a token")?;
        (view, changed)
    } else {
        let data_dir = source.dir.resolve()?;
        let revocation = TokenStore::new(&data_dir).revoke(id)?;
        (revocation.record.view(), revocation.changed)
    };
    if changed {
        println!(
            "revoked {} (name {}, scope {})",
            view.id, view.name, view.scope
        );
    } else {
        println!(
            "{} (name {}, scope {}) was revoked already, at {}",
            view.id,
            view.name,
            view.scope,
            view.revoked.as_deref().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A token created before the server's first start still lands in a data dir only
/// its owner can read.
fn ensure_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
    }
    Ok(())
}
