//! `rampart server` and `rampart gateway` (being written).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {}

pub fn run_server(_args: ServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

pub fn run_gateway(_args: GatewayArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
