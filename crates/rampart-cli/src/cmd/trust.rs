//! `rampart trust bundle|env`: make developer tools trust the gateway CA. The work is in
//! `rampart_tls::trust`; this parses flags, writes files and prints.
use anyhow::Context;
use rampart_tls::ca::{read_certificates, sha256_fingerprint, CaPaths, CertificateAuthority};
use rampart_tls::trust::{
    compose_bundle, env_script, install_ca_files, remove_ca_files, system_roots, unset_script,
    write_bundle, Shell, DEBIAN_LOCAL_CA_DIR,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::state::DataDirArgs;

#[path = "trust_local_origin.rs"]
mod local_origin;
use super::trust_stores::{browser_databases, find_certutil, JavaKeystore, NssDatabase};

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
    /// node, cargo) in the current environment and report pass/fail per tool: to --url
    /// (through --proxy), or with --local to an origin on 127.0.0.1 signed by Rampart's CA.
    Verify(VerifyArgs),
    /// Add the Rampart CA to trust stores: the Debian/Ubuntu system store
    /// (update-ca-certificates; the default, needs root), a Java keystore (--java) and
    /// the NSS databases of Chromium and Firefox (--nss). --remove undoes exactly that.
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
    /// Check against an HTTPS origin on 127.0.0.1 with a certificate minted from
    /// Rampart's CA, directly (no proxy, no internet): do the tools trust the CA?
    /// Reads the CA key, so run it where the server's data dir is readable.
    #[arg(long, conflicts_with_all = ["url", "proxy"])]
    local: bool,
    #[command(flatten)]
    dir: DataDirArgs,
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
    /// Change the system store (the default when no --java/--nss option is given).
    #[arg(long)]
    system: bool,
    /// Local CA directory read by the update command.
    #[arg(long, value_name = "DIR", default_value = DEBIAN_LOCAL_CA_DIR)]
    ca_dir: PathBuf,
    /// Command that rebuilds the system store afterwards.
    #[arg(long, value_name = "PROGRAM", default_value = "update-ca-certificates")]
    update_command: String,
    /// Change a Java keystore with keytool: the JDK's cacerts unless --java-keystore.
    #[arg(long)]
    java: bool,
    /// The Java keystore to change instead of the JDK's cacerts (implies --java).
    #[arg(long, value_name = "FILE")]
    java_keystore: Option<PathBuf>,
    /// The keystore's password (the JDK's cacerts ships with "changeit").
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "RAMPART_JAVA_STOREPASS",
        default_value = "changeit",
        hide_env_values = true
    )]
    java_storepass: String,
    /// keytool to run [default: $JAVA_HOME/bin/keytool, else keytool on PATH].
    #[arg(long, value_name = "PATH")]
    keytool: Option<PathBuf>,
    /// Change NSS databases with certutil: ~/.pki/nssdb (Chromium, Chrome) and the
    /// Firefox profiles under your home directory, unless --nss-db. Run it as the
    /// browser's user, not with sudo.
    #[arg(long)]
    nss: bool,
    /// An NSS database directory to change instead (repeatable; implies --nss); created
    /// without a password when it does not exist.
    #[arg(long, value_name = "DIR")]
    nss_db: Vec<PathBuf>,
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
    /// Print what reverts the variables instead (unsets every one of them).
    #[arg(long, conflicts_with = "bundle")]
    unset: bool,
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
    if args.unset {
        // Reverting needs no CA: it must work after the data dir is gone.
        print!("{}", unset_script(args.shell));
        return Ok(ExitCode::SUCCESS);
    }
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

fn tool_checks(url: &str, proxy: Option<&str>, timeout: u64, scratch: &Path) -> Vec<ToolCheck> {
    let t = timeout.to_string();
    vec![
        ToolCheck {
            name: "curl",
            program: "curl",
            args: vec![
                "-sS".into(),
                "-o".into(),
                "/dev/null".into(),
                "--max-time".into(),
                t.clone(),
                url.into(),
            ],
            tls_failure: &["SSL certificate problem", "certificate", "SSL"],
            reached: &[],
        },
        ToolCheck {
            name: "python requests",
            program: "python3",
            args: vec![
                "-c".into(),
                "import sys, requests; requests.get(sys.argv[1], timeout=float(sys.argv[2]))"
                    .into(),
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
                "-m".into(),
                "pip".into(),
                "download".into(),
                "-vv".into(),
                "--retries".into(),
                "0".into(),
                "--timeout".into(),
                t.clone(),
                "--no-deps".into(),
                "--no-cache-dir".into(),
                "-d".into(),
                scratch.to_string_lossy().into_owned(),
                "--index-url".into(),
                url.into(),
                "rampart-trust-verify-probe".into(),
            ],
            tls_failure: &["CERTIFICATE_VERIFY_FAILED", "SSLError", "SSL: "],
            reached: &["No matching distribution", "Could not find a version"],
        },
        ToolCheck {
            name: "git",
            program: "git",
            args: vec!["ls-remote".into(), url.into()],
            tls_failure: &[
                "SSL certificate problem",
                "server certificate verification failed",
                "SSL",
            ],
            reached: &[
                "returned error",
                "not found",
                "not valid",
                "Authentication failed",
            ],
        },
        ToolCheck {
            name: "node",
            program: "node",
            args: vec![
                "-e".into(),
                NODE_GET.into(),
                url.into(),
                proxy.unwrap_or_default().into(),
            ],
            tls_failure: &["CERT", "certificate", "SELF_SIGNED"],
            reached: &[],
        },
        ToolCheck {
            name: "cargo",
            program: "cargo",
            // A sparse registry's first request is its config.json: cargo's HTTP client
            // (libcurl, CARGO_HTTP_CAINFO, the proxy variables) fetches it, and any
            // answer after the handshake shows TLS worked.
            args: vec![
                "search".into(),
                "--limit".into(),
                "1".into(),
                "--index".into(),
                format!("sparse+{}", with_trailing_slash(url)),
                "rampart-trust-verify-probe".into(),
            ],
            tls_failure: &["SSL", "certificate"],
            reached: &[
                "failed to get successful HTTP response",
                "config.json not found in registry",
                "expected value",
                "config.json` is not valid",
            ],
        },
    ]
}

/// node's https module ignores the proxy variables: the script opens the CONNECT
/// tunnel itself (argv: URL, proxy URL or ""), then verifies TLS with node's roots
/// plus NODE_EXTRA_CA_CERTS, host name included.
const NODE_GET: &str = r#"const [url, proxy] = process.argv.slice(1);
const https = require('https'), http = require('http'), tls = require('tls');
const target = new URL(url);
const fail = e => { console.error(e.code || e.message); process.exit(1); };
const get = socket => https.get(url, socket ? { createConnection: () => tls.connect({ socket, servername: target.hostname }) } : {},
  r => { r.resume(); process.exit(0); }).on('error', fail);
if (!proxy) get(null); else {
  const p = new URL(proxy);
  http.request({ host: p.hostname, port: p.port || 80, method: 'CONNECT', path: `${target.hostname}:${target.port || 443}` })
    .on('connect', (res, socket) => res.statusCode === 200 ? get(socket) : fail(new Error(`ProxyError: CONNECT answered ${res.statusCode}`)))
    .on('error', fail).end();
}"#;

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// The proxy a tool will use: `--proxy`, else the environment's HTTPS proxy.
fn effective_proxy(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string).or_else(|| {
        ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()))
    })
}

/// A CARGO_HOME for the check: the user's cargo configuration (proxy, `http.cainfo`)
/// copied into `scratch`, so the registry cache cargo writes lands there and not in
/// the user's ~/.cargo.
fn cargo_home(scratch: &Path) -> anyhow::Result<PathBuf> {
    let home = scratch.join("cargo-home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let user_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(user_home) = user_home {
        for name in ["config.toml", "config"] {
            let from = user_home.join(name);
            if from.is_file() {
                std::fs::copy(&from, home.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    Ok(home)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let scratch = std::env::temp_dir().join(format!("rampart-trust-verify-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut failed = 0;
    // --local: the origin lives as long as this process; the tools reach it directly.
    let (url, proxy) = if args.local {
        let ca = CertificateAuthority::load(&CaPaths::in_dir(&args.dir.resolve()?))?;
        let origin = local_origin::LocalOrigin::start(&ca)?;
        println!(
            "checking against {} (a certificate from {})",
            origin.url(),
            ca.info().subject
        );
        (origin.url(), None)
    } else {
        (args.url.clone(), effective_proxy(args.proxy.as_deref()))
    };
    let cargo_home = cargo_home(&scratch)?;
    for check in tool_checks(&url, proxy.as_deref(), args.timeout, &scratch) {
        let mut cmd = std::process::Command::new(check.program);
        cmd.args(&check.args)
            .stdin(std::process::Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("CARGO_HOME", &cargo_home)
            .env("CARGO_NET_RETRY", "0")
            .env("CARGO_HTTP_TIMEOUT", args.timeout.to_string());
        if let Some(proxy) = &args.proxy {
            for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                cmd.env(var, proxy);
            }
            cmd.env_remove("NO_PROXY").env_remove("no_proxy");
        }
        if args.local {
            for var in [
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                cmd.env_remove(var);
            }
            cmd.env("NO_PROXY", "127.0.0.1")
                .env("no_proxy", "127.0.0.1");
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
        // python3 without its pip module (Debian: python3-pip) is pip not installed.
        if check.name == "pip" && stderr.contains("No module named pip") {
            println!("{:<16} skipped (python3 -m pip not installed)", check.name);
            continue;
        }
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
    let java = args.java || args.java_keystore.is_some();
    let nss = args.nss || !args.nss_db.is_empty();
    // Without a store named, the system store, as before the other stores existed.
    let system = args.system || !(java || nss);
    let chain = if args.remove {
        Vec::new()
    } else {
        // Trust stores take public certificates only: no need to read the CA key.
        let paths = CaPaths::in_dir(&args.dir.resolve()?);
        let chain = read_certificates(&paths.cert)?;
        let Some(signing) = chain.first() else {
            anyhow::bail!("{}: no certificate in the file", paths.cert.display());
        };
        println!("CA sha256 {}", sha256_fingerprint(signing.as_ref()));
        chain
    };
    if system {
        install_system(&args, &chain)?;
    }
    if java {
        let keystore = JavaKeystore::new(
            args.keytool.clone(),
            args.java_keystore.clone(),
            args.java_storepass.clone(),
        )?;
        let (verb, names) = if args.remove {
            ("removed", keystore.remove()?)
        } else {
            ("added", keystore.install(&chain)?)
        };
        report("java", &keystore.describe(), verb, &names);
    }
    if nss {
        let certutil = find_certutil()?;
        let explicit = !args.nss_db.is_empty();
        let dirs = if explicit {
            args.nss_db.clone()
        } else {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("HOME is not set: name the NSS database with --nss-db DIR")?;
            let found = browser_databases(&home);
            anyhow::ensure!(
                !found.is_empty() || args.remove,
                "no NSS database under {} (~/.pki/nssdb or a Firefox profile): start                  Chromium or Firefox once, or name one with --nss-db DIR",
                home.display()
            );
            found
        };
        for dir in dirs {
            // Removing never creates a database; installing creates one only where named.
            let db = NssDatabase::open(dir, &certutil, explicit && !args.remove)?;
            let (verb, names) = if args.remove {
                ("removed", db.remove()?)
            } else {
                ("added", db.install(&chain)?)
            };
            report("nss", &format!("sql:{}", db.dir.display()), verb, &names);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per store changed: `nss  sql:/home/u/.pki/nssdb: added rampart-gateway-ca`.
fn report(store: &str, place: &str, verb: &str, names: &[String]) {
    if names.is_empty() {
        println!("{store:<6} {place}: no Rampart CA there");
    } else {
        println!("{store:<6} {place}: {verb} {}", names.join(", "));
    }
}

/// The Debian/Ubuntu system store: one file per certificate in `--ca-dir`, then the
/// update command.
fn install_system(
    args: &InstallArgs,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<()> {
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
        for path in install_ca_files(&args.ca_dir, chain)? {
            println!("installed {}", path.display());
        }
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
    Ok(())
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
