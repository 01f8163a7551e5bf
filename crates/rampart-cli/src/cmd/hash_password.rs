//! `rampart hash-password` (being written).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct HashPasswordArgs {}

pub fn run(_args: HashPasswordArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
