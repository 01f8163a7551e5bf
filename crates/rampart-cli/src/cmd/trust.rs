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

use super::state::DataDirArgs;

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
    /// Make an HTTPS request with each installed tool (curl, Python requests, pip, git,
    /// node) in the current environment and report pass/fail per tool.
    Verify(VerifyArgs),
    /// Add the Rampart CA to the Debian/Ubuntu system store (update-ca-certificates);
    /// --remove undoes exactly that. Needs root.
    Install(InstallArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// HTTPS URL to fetch; any status counts, only the TLS verification matters.
    #[arg(long, value_name = "URL", default_value = "https://pypi.org/simple/")]
    url: String,
    /// Send the requests through this proxy (e.g. http://127.0.0.1:3128) instead of the
    /// environment's proxy settings.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Seconds each tool may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    #[command(flatten)]
    dir: DataDirArgs,
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
    #[command(flatten)]
    dir: DataDirArgs,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct EnvArgs {
    #[command(flatten)]
    dir: DataDirArgs,
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
        TrustCommand::Verify(a) => verify(a),
    }
}

fn bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    let ca = CertificateAuthority::load(&CaPaths::in_dir(&args.dir.resolve()?))?;
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
    let data_dir = args.dir.resolve()?;
    let paths = CaPaths::in_dir(&data_dir);
    let ca = CertificateAuthority::load(&paths)?;
    let bundle = args
        .bundle
        .clone()
        .unwrap_or_else(|| data_dir.join(DEFAULT_BUNDLE_FILE));
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

/// Output meaning the request never reached a TLS handshake (wrong URL or proxy).
const CONNECT_FAILURES: &[&str] = &[
    "Connection refused",
    "NewConnectionError",
    "Couldn't connect",
    "Could not resolve",
    "ECONNREFUSED",
    "ENOTFOUND",
    "ProxyError",
    "timed out",
];

/// One tool's check: the program, its arguments, and the output that means "TLS failed".
struct ToolCheck {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    tls_failure: &'static [&'static str],
    /// Output proving the TLS handshake succeeded even though the tool then failed (git
    /// and pip exit non-zero when the URL is not a repository / package index).
    reached: &'static [&'static str],
}

fn tool_checks(url: &str, timeout: u64, scratch: &Path) -> Vec<ToolCheck> {
    let t = timeout.to_string();
    vec![
        ToolCheck {
            name: "curl",
            program: "curl",
            args: vec!["-sS".into(), "-o".into(), "/dev/null".into(), "--max-time".into(), t.clone(), url.into()],
            tls_failure: &["SSL certificate problem", "certificate", "SSL"],
            reached: &[],
        },
        ToolCheck {
            name: "python requests",
            program: "python3",
            args: vec![
                "-c".into(),
                "import sys, requests; requests.get(sys.argv[1], timeout=float(sys.argv[2]))".into(),
                url.into(),
                t.clone(),
            ],
            tls_failure: &["CERTIFICATE_VERIFY_FAILED", "SSLError"],
            reached: &[],
        },
        ToolCheck {
            name: "pip",
            program: "python3",
            args: vec![
                "-m".into(), "pip".into(), "download".into(), "-vv".into(), "--retries".into(), "0".into(),
                "--timeout".into(), t.clone(), "--no-deps".into(), "--no-cache-dir".into(),
                "-d".into(), scratch.to_string_lossy().into_owned(), "--index-url".into(),
                url.into(), "rampart-trust-verify-probe".into(),
            ],
            tls_failure: &["CERTIFICATE_VERIFY_FAILED", "SSLError", "SSL: "],
            reached: &["No matching distribution", "Could not find a version"],
        },
        ToolCheck {
            name: "git",
            program: "git",
            args: vec!["ls-remote".into(), url.into()],
            tls_failure: &["SSL certificate problem", "server certificate verification failed", "SSL"],
            reached: &["returned error", "not found", "not valid", "Authentication failed"],
        },
        ToolCheck {
            name: "node",
            program: "node",
            args: vec![
                "-e".into(),
                "require('https').get(process.argv[1], r => { r.resume(); process.exit(0) }).on('error', e => { console.error(e.code || e.message); process.exit(1) })".into(),
                url.into(),
            ],
            tls_failure: &["CERT", "certificate", "SELF_SIGNED"],
            reached: &[],
        },
    ]
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let scratch = std::env::temp_dir().join(format!("rampart-trust-verify-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut failed = 0;
    for check in tool_checks(&args.url, args.timeout, &scratch) {
        let mut cmd = std::process::Command::new(check.program);
        cmd.args(&check.args)
            .stdin(std::process::Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0");
        if let Some(proxy) = &args.proxy {
            for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                cmd.env(var, proxy);
            }
            cmd.env_remove("NO_PROXY").env_remove("no_proxy");
        }
        let output = match cmd.output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!(
                    "{:<16} skipped ({} not installed)",
                    check.name, check.program
                );
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("running {}", check.program)),
        };
        // pip reports connection and certificate problems only in verbose output (stdout).
        let stderr = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let tls_error = stderr.lines().find(|line| {
            check.tls_failure.iter().any(|needle| line.contains(needle))
                || CONNECT_FAILURES.iter().any(|needle| line.contains(needle))
        });
        let reached = check.reached.iter().any(|needle| stderr.contains(needle));
        let passed = tls_error.is_none() && (output.status.success() || reached);
        if passed {
            println!("{:<16} pass", check.name);
        } else {
            failed += 1;
            let reason = tls_error
                .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("no output")
                .trim();
            println!("{:<16} FAIL: {reason}", check.name);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if failed > 0 {
        println!("{failed} tool(s) failed; apply `eval \"$(rampart trust env)\"` (or see docs/tls.md) and run this again");
        return Ok(ExitCode::FAILURE);
    }
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
        let ca = CertificateAuthority::load(&CaPaths::in_dir(&args.dir.resolve()?))?;
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
