//! `rampart ca init|show|export`: the gateway CA in the data directory. The work is in
//! `rampart_tls::ca`; this parses flags and prints.
use anyhow::Context;
use rampart_tls::ca::{CaKeyType, CaOptions, CaPaths, CertificateAuthority};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::state::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Create the gateway CA (ECDSA P-256 unless --rsa), or import your organisation's CA
    /// or intermediate with --import-cert/--import-key.
    Init(InitArgs),
    /// Print the CA's subject, validity, key type and SHA-256 fingerprint; fails when the
    /// gateway could not use it (missing, mismatched, or key readable by others).
    Show(ShowArgs),
    /// Write the CA certificate for clients to trust (PEM, or DER with --der).
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Create an RSA-2048 CA instead of ECDSA P-256 (for clients that only accept RSA).
    #[arg(long, conflicts_with = "import_cert")]
    rsa: bool,
    /// Subject of the new CA, e.g. "CN=Example Corp Gateway CA, O=Example Corp".
    #[arg(long, value_name = "DN", conflicts_with = "import_cert")]
    subject: Option<String>,
    /// Import this CA or intermediate certificate (PEM; may also hold the certificates above it).
    #[arg(long, value_name = "FILE", requires = "import_key")]
    import_cert: Option<PathBuf>,
    /// Private key of the imported certificate (PEM, unencrypted).
    #[arg(long, value_name = "FILE", requires = "import_cert")]
    import_key: Option<PathBuf>,
    /// Replace an existing CA (every client must then trust the new one).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Write DER (the signing certificate only) instead of PEM (the whole ca.pem chain).
    #[arg(long)]
    der: bool,
    /// Output file [default: standard output].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init(a) => init(a),
        CaCommand::Show(a) => show(a),
        CaCommand::Export(a) => export(a),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.dir.resolve()?;
    let paths = CaPaths::in_dir(&data_dir);
    let ca = match (&args.import_cert, &args.import_key) {
        (Some(cert), Some(key)) => CertificateAuthority::import(&paths, cert, key, args.force)?,
        _ => {
            let options = CaOptions {
                key_type: if args.rsa {
                    CaKeyType::Rsa2048
                } else {
                    CaKeyType::EcdsaP256
                },
                subject: args.subject.clone(),
            };
            CertificateAuthority::create(&paths, &options, args.force)?
        }
    };
    println!(
        "{} CA in {}",
        if args.import_cert.is_some() {
            "imported"
        } else {
            "created"
        },
        data_dir.display()
    );
    println!("{}", ca.info());
    println!("cert file:    {}", paths.cert.display());
    println!("key file:     {} (mode 0600)", paths.key.display());
    println!(
        "next: make your tools trust it with `rampart trust env --data-dir {}`",
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let paths = CaPaths::in_dir(&args.dir.resolve()?);
    // Load with the key so `show` fails exactly when the gateway would refuse to start.
    let ca = CertificateAuthority::load(&paths)?;
    if args.json {
        let json = serde_json::to_string_pretty(ca.info()).context("encoding the CA info")?;
        println!("{json}");
    } else {
        println!("{}", ca.info());
        println!("cert file:    {}", paths.cert.display());
        println!("key file:     {}", paths.key.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let paths = CaPaths::in_dir(&args.dir.resolve()?);
    let ca = CertificateAuthority::load(&paths)?;
    let bytes = if args.der {
        ca.certificate_der().to_vec()
    } else {
        ca.chain_pem().into_bytes()
    };
    match &args.out {
        Some(out) => write_public(out, &bytes)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&bytes)
                .and_then(|_| stdout.flush())
                .context("writing the certificate to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
