//! `rampart policy check|explain|test`: validate a policy, explain a decision, and run
//! policy unit tests. All the work is in `rampart-policy`; this prints and sets the
//! exit status.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rampart_policy::{
    parse_byte_size, parse_cases, split_url, ConnectionFacts, Diagnostic, Direction, Identity,
    InspectionFacts, Policy, Process, RequestFacts, ResponseFacts, VERDICTS,
};

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (or directory): errors with file:line:column, warnings
    /// for shadowed rules and unused lists. Exit status 1 on errors.
    Check {
        /// Policy file or directory of .toml files.
        file: PathBuf,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show the decision of each stage for a URL, the rule that made it and why.
    Explain(Box<ExplainArgs>),
    /// Run policy unit tests: each [[case]] of CASES gives a flow and expected decisions.
    Test {
        /// Policy file or directory.
        file: PathBuf,
        /// Cases file (TOML, [[case]] tables).
        cases: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// Policy file or directory.
    file: PathBuf,
    /// The URL requested (a bare host means https://host/).
    #[arg(long)]
    url: String,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long)]
    user: Option<String>,
    /// Group membership (repeatable), in addition to the policy's own.
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long)]
    device: Option<String>,
    /// Process name; adds the steering stage to the explanation.
    #[arg(long)]
    process: Option<String>,
    /// Process executable path.
    #[arg(long)]
    process_path: Option<String>,
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// Destination address, for address-block list entries.
    #[arg(long)]
    dst_ip: Option<IpAddr>,
    /// File type inspection found (exe, zip, pdf...); adds the response stage.
    #[arg(long)]
    file_type: Option<String>,
    /// Inspection verdict of the body (repeatable); adds the response stage.
    #[arg(long = "verdict", value_parser = clap::builder::PossibleValuesParser::new(VERDICTS))]
    verdicts: Vec<String>,
    /// DLP profile that found sensitive data (repeatable); adds the response stage.
    #[arg(long = "dlp")]
    dlp: Vec<String>,
    /// Which way the body travels; adds the response stage.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Direction::NAMES))]
    direction: Option<String>,
    /// Body size: bytes or with a unit (10MB, 512KiB); adds the response stage.
    #[arg(long, value_parser = parse_size_arg)]
    size: Option<u64>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_byte_size(s).ok_or_else(|| {
        format!(
            "\"{s}\" is not a size (bytes, or a number with B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    })
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Check {
            file,
            deny_warnings,
        } => check(file, deny_warnings),
        PolicyCommand::Explain(a) => explain(*a),
        PolicyCommand::Test { file, cases } => test(file, cases),
    }
}

/// Loads a policy, printing diagnostics to stderr; `None` if it has errors.
fn load(file: &Path) -> Option<(Policy, Vec<Diagnostic>)> {
    match Policy::load(file) {
        Ok((policy, warnings)) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            Some((policy, warnings))
        }
        Err(err) => {
            for d in &err.diagnostics {
                eprintln!("{d}");
            }
            let n = err.errors().count();
            eprintln!(
                "{}: {n} error{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn check(file: PathBuf, deny_warnings: bool) -> anyhow::Result<ExitCode> {
    let Some((policy, warnings)) = load(&file) else {
        return Ok(ExitCode::FAILURE);
    };
    let s = policy.stats();
    println!(
        "{}: ok, revision {}, {} rules, {} objects, {} domains, {} warning{}",
        file.display(),
        policy.revision(),
        s.rules,
        s.objects,
        s.domains,
        warnings.len(),
        if warnings.len() == 1 { "" } else { "s" }
    );
    if deny_warnings && !warnings.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let Some((policy, _)) = load(&a.file) else {
        return Ok(ExitCode::FAILURE);
    };
    let url = split_url(&a.url).map_err(anyhow::Error::msg)?;
    let identity = Identity {
        user: a.user,
        groups: a.groups,
        device: a.device,
        source_ip: a.source_ip,
    };
    let process = a.process.map(|name| Process {
        name,
        path: a.process_path,
    });
    let conn = ConnectionFacts {
        identity: &identity,
        process: process.as_ref(),
        host: Some(&url.host),
        dst_ip: a.dst_ip,
        port: url.port,
    };
    let request = RequestFacts {
        connection: conn,
        method: &a.method,
        path: &url.path,
    };
    let verdicts: Vec<&str> = a.verdicts.iter().map(String::as_str).collect();
    let dlp: Vec<&str> = a.dlp.iter().map(String::as_str).collect();
    let inspection = InspectionFacts {
        file_type: a.file_type.as_deref(),
        verdicts: &verdicts,
        dlp: &dlp,
        // clap allowed only Direction::NAMES.
        direction: a.direction.as_deref().and_then(Direction::parse),
        size: a.size,
    };
    let inspected = inspection.file_type.is_some()
        || !verdicts.is_empty()
        || !dlp.is_empty()
        || inspection.direction.is_some()
        || inspection.size.is_some();
    let explanation = if inspected {
        policy.explain_response(&ResponseFacts {
            request,
            inspection,
        })
    } else {
        policy.explain(&request)
    };
    print!("{explanation}");
    Ok(ExitCode::SUCCESS)
}

fn test(file: PathBuf, cases_path: PathBuf) -> anyhow::Result<ExitCode> {
    let Some((policy, _)) = load(&file) else {
        return Ok(ExitCode::FAILURE);
    };
    let text = std::fs::read_to_string(&cases_path)
        .with_context(|| format!("reading {}", cases_path.display()))?;
    let cases = parse_cases(&text).map_err(|e| anyhow::anyhow!("{}: {e}", cases_path.display()))?;
    if cases.cases.is_empty() {
        anyhow::bail!("{}: no [[case]] tables", cases_path.display());
    }
    let mut failed = 0;
    for case in &cases.cases {
        let result = policy.run_case(case);
        if result.passed() {
            println!("ok   {}", result.name);
        } else {
            failed += 1;
            println!("FAIL {}", result.name);
            for f in &result.failures {
                println!("     {f}");
            }
        }
    }
    let total = cases.cases.len();
    println!(
        "{} passed, {failed} failed (policy revision {})",
        total - failed,
        policy.revision()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
