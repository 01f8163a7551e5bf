//! `rampart demo`: the loopback origin of the README tour (rampart_server::demo), until
//! Ctrl-C. Parses flags, writes the files, prints what to run next.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rampart_server::demo::{self, DEMO_HOST};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write demo.toml and demo-ca.pem.
    #[arg(long, value_name = "DIR", default_value = "./rampart-demo")]
    dir: PathBuf,
    /// Plain HTTP listener of the origin (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], demo::DEFAULT_HTTP_PORT)))]
    http_listen: SocketAddr,
    /// HTTPS listener of the origin (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], demo::DEFAULT_HTTPS_PORT)))]
    https_listen: SocketAddr,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the demo's runtime")?;
    runtime.block_on(async {
        let (http, https) = demo::bind(args.http_listen, args.https_listen).await?;
        let http_port = http.local_addr().context("demo HTTP port")?.port();
        let https_port = https.local_addr().context("demo HTTPS port")?.port();
        let setup = demo::prepare(&args.dir, http_port, https_port)?;
        println!("demo origin: http://{DEMO_HOST}:{http_port}/ and https://{DEMO_HOST}:{https_port}/ (on 127.0.0.1)");
        println!("its CA:      {}", setup.ca_file.display());
        println!("wrote        {}", setup.config_file.display());
        println!(
            "next:        rampart server --config {}",
            setup.config_file.display()
        );
        println!("Ctrl-C stops the origin.");
        tokio::select! {
            served = demo::serve(&setup, http, https) => served.map(|()| ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        }
    })
}
