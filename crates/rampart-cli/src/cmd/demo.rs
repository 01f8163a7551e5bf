//! `rampart demo`: the loopback origin of the README tour (rampart_server::demo), until
//! Ctrl-C. Parses flags, writes the files, prints what to run next.

use std::io::Write;
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
        // One write, errors ignored: the origin keeps serving when whoever started it
        // stops reading its output (a closed pipe, a detached terminal).
        let banner = format!(
            "demo origin: http://{DEMO_HOST}:{http_port}/ and https://{DEMO_HOST}:{https_port}/ (on 127.0.0.1)\n\
             its CA:      {}\n\
             wrote        {}\n\
             next:        rampart server --config {}\n\
             Ctrl-C stops the origin.\n",
            setup.ca_file.display(),
            setup.config_file.display(),
            setup.config_file.display()
        );
        let mut stdout = std::io::stdout();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());
        tokio::select! {
            served = demo::serve(&setup, http, https) => served.map(|()| ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        }
    })
}
