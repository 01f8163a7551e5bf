//! `rampart hash-password`: turns a password into the Argon2id hash that
//! `[[proxy.users]] password_hash` expects, so no plain-text password is ever
//! written into a configuration file.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct HashPasswordArgs {}

pub fn run(_args: HashPasswordArgs) -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!(
            "empty password on standard input (try: printf %s 'PASSWORD' | rampart hash-password)"
        );
    }
    let hash = rampart_gateway::admission::hash_password(password)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
