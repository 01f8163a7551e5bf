//! `rampart token create|list|revoke`: scoped API tokens in the data dir
//! (`api-tokens.json`, hashed, mode 0600). A running server reads the file on every
//! call: a new token works and a revoked one fails at once, without a restart.

use std::process::ExitCode;

use anyhow::Context;
use rampart_server::api::tokens::{Scope, TokenStore, ADMIN_FILE_TOKEN};

use super::state::DataDirArgs;

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
        dir: DataDirArgs,
    },
    /// List tokens: id, name, scope, creation time (never secrets).
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Revoke a token by id or name: the server refuses it from the next call on.
    Revoke {
        /// The token's id (`tok_...`) or name.
        id: String,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create { scope, name, dir } => {
            let scope = Scope::parse(&scope)?;
            let data_dir = dir.resolve()?;
            ensure_dir(&data_dir)?;
            let (record, secret) = TokenStore::new(&data_dir).create(scope, name.as_deref())?;
            eprintln!(
                "created token {} (name {}, scope {}); its secret is printed once, below",
                record.id, record.name, record.scope
            );
            println!("{secret}");
        }
        TokenCommand::List { json, dir } => {
            let data_dir = dir.resolve()?;
            let tokens = TokenStore::new(&data_dir).list()?;
            let admin_file = rampart_events::token::token_path(&data_dir).exists();
            if json {
                let list: Vec<serde_json::Value> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "name": t.name, "scope": t.scope,
                            "created": rampart_events::render::time_text(t.created * 1000),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "tokens": list, "admin_token_file": admin_file })
                );
            } else {
                println!("{:<18} {:<24} {:<8} CREATED", "ID", "NAME", "SCOPE");
                if admin_file {
                    println!(
                        "{:<18} {:<24} {:<8} (the data dir's admin.token file)",
                        "-", ADMIN_FILE_TOKEN, "admin"
                    );
                }
                for t in tokens.iter() {
                    println!(
                        "{:<18} {:<24} {:<8} {}",
                        t.id,
                        t.name,
                        t.scope.as_str(),
                        rampart_events::render::time_text(t.created * 1000)
                    );
                }
            }
        }
        TokenCommand::Revoke { id, dir } => {
            let data_dir = dir.resolve()?;
            let removed = TokenStore::new(&data_dir).revoke(&id)?;
            println!(
                "revoked {} (name {}, scope {})",
                removed.id, removed.name, removed.scope
            );
        }
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
