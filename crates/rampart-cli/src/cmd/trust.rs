//! `rampart trust bundle|env`: make developer tools trust the gateway CA. The work is in
//! `rampart_tls::trust`; this parses flags, writes files and prints.
use anyhow::Context;
use rampart_tls::ca::{CaPaths, CertificateAuthority};
use rampart_tls::trust::{
    compose_bundle, env_script, install_ca_files, remove_ca_files, system_roots, write_bundle,
    Shell, DEBIAN_LOCAL_CA_DIR,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Bundle file `trust env` maintains inside the data directory.
const DEFAULT_BUNDLE_FILE: &str = "trust-bundle.pem";

#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    command: TrustCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TrustCommand {
    /// Write the system roots plus the Rampart CA as one deduplicated PEM bundle.
    Bundle(BundleArgs),
    /// Print the environment variables that make Python requests, pip, curl, git, node,
    /// cargo, the AWS CLI and others trust Rampart (writes the bundle if needed).
    Env(EnvArgs),
    /// Add the Rampart CA to the Debian/Ubuntu system store (update-ca-certificates);
    /// --remove undoes exactly that. Needs root.
    Install(InstallArgs),
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// Data directory holding ca.pem and ca.key.
    #[arg(long, value_name = "DIR", default_value = "./rampart-data")]
    data_dir: PathBuf,
    /// Remove the certificates a previous install added, instead of adding them.
    #[arg(long)]
    remove: bool,
    /// Local CA directory read by the update command.
    #[arg(long, value_name = "DIR", default_value = DEBIAN_LOCAL_CA_DIR)]
    ca_dir: PathBuf,
    /// Command that rebuilds the system store afterwards.
    #[arg(long, value_name = "PROGRAM", default_value = "update-ca-certificates")]
    update_command: String,
}

#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// Data directory holding ca.pem and ca.key.
    #[arg(long, value_name = "DIR", default_value = "./rampart-data")]
    data_dir: PathBuf,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct EnvArgs {
    /// Data directory holding ca.pem and ca.key.
    #[arg(long, value_name = "DIR", default_value = "./rampart-data")]
    data_dir: PathBuf,
    /// Shell syntax: sh (also bash, zsh), fish or powershell.
    #[arg(long, value_name = "SHELL", default_value = "sh")]
    shell: Shell,
    /// Bundle to point tools at [default: DIR/trust-bundle.pem, rewritten when older than ca.pem].
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
}

pub fn run(args: TrustArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TrustCommand::Bundle(a) => bundle(a),
        TrustCommand::Env(a) => env(a),
        TrustCommand::Install(a) => install(a),
    }
}

fn bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    let ca = CertificateAuthority::load(&CaPaths::in_dir(&args.data_dir))?;
    let written = write_combined(&ca, &args.out)?;
    eprintln!(
        "wrote {}: {} system roots + Rampart CA {} (sha256 {})",
        args.out.display(),
        written,
        ca.info().subject,
        ca.info().sha256_fingerprint
    );
    Ok(ExitCode::SUCCESS)
}

fn env(args: EnvArgs) -> anyhow::Result<ExitCode> {
    let paths = CaPaths::in_dir(&args.data_dir);
    let ca = CertificateAuthority::load(&paths)?;
    let bundle = args
        .bundle
        .clone()
        .unwrap_or_else(|| args.data_dir.join(DEFAULT_BUNDLE_FILE));
    if needs_refresh(&bundle, &paths.cert) {
        let written = write_combined(&ca, &bundle)?;
        eprintln!(
            "rampart: wrote {} ({written} system roots + Rampart CA)",
            bundle.display()
        );
    }
    let bundle = absolute(&bundle)?;
    let ca_file = absolute(&paths.cert)?;
    print!("{}", env_script(args.shell, &bundle, &ca_file));
    Ok(ExitCode::SUCCESS)
}

fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let changed = if args.remove {
        let removed = remove_ca_files(&args.ca_dir)?;
        if removed.is_empty() {
            println!("no Rampart CA installed in {}", args.ca_dir.display());
        }
        for path in &removed {
            println!("removed {}", path.display());
        }
        !removed.is_empty()
    } else {
        let ca = CertificateAuthority::load(&CaPaths::in_dir(&args.data_dir))?;
        for path in install_ca_files(&args.ca_dir, &ca)? {
            println!("installed {}", path.display());
        }
        println!(
            "CA {} (sha256 {})",
            ca.info().subject,
            ca.info().sha256_fingerprint
        );
        true
    };
    if changed {
        let status = std::process::Command::new(&args.update_command)
            .status()
            .with_context(|| {
                format!(
                    "running {} (on Debian/Ubuntu: apt-get install ca-certificates)",
                    args.update_command
                )
            })?;
        anyhow::ensure!(
            status.success(),
            "{} failed with {status}; the files above are in place, run it again by hand",
            args.update_command
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes system roots + CA to `out`; returns the number of system roots included.
fn write_combined(ca: &CertificateAuthority, out: &Path) -> anyhow::Result<usize> {
    let (roots, errors) = system_roots();
    for err in &errors {
        eprintln!("rampart: warning: reading system roots: {err}");
    }
    if roots.is_empty() {
        eprintln!(
            "rampart: warning: no system roots found (install the ca-certificates package); \
             the bundle holds only the Rampart CA, so tools will trust nothing else"
        );
    }
    let bundle = compose_bundle(&roots, ca);
    write_bundle(out, &bundle)?;
    Ok(bundle.system_roots)
}

/// A missing bundle, or one older than ca.pem (the CA was replaced), is rewritten.
fn needs_refresh(bundle: &Path, ca_cert: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(bundle), modified(ca_cert)) {
        (Some(b), Some(c)) => b < c,
        _ => true,
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))
}
