//! `rampart package-assets DIR` (hidden): shell completions and man pages generated
//! from the same clap definitions that parse the command line, so packages
//! (scripts/build-deb.sh) never ship documentation that drifts from `--help`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct PackageAssetsArgs {
    /// Directory to write `completions/` and `man/` into (created if missing).
    #[arg(value_name = "DIR")]
    out_dir: PathBuf,
}

/// The file each shell loads its completions from, as the Debian packages of
/// bash-completion, zsh and fish expect them to be named.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "rampart"),
    (Shell::Zsh, "_rampart"),
    (Shell::Fish, "rampart.fish"),
];

pub fn run(args: PackageAssetsArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    // Subcommands' names and versions are filled in by `build`; man pages and
    // completions must see the same tree `--help` does.
    command.build();
    let completions = args.out_dir.join("completions");
    let man = args.out_dir.join("man");
    for dir in [&completions, &man] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (shell, file_name) in SHELLS {
        let path = completions.join(file_name);
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "rampart", &mut out);
        write(&path, &out)?;
    }
    write_man_pages(&command, &man)?;
    Ok(ExitCode::SUCCESS)
}

/// One page per command and subcommand (`rampart.1`, `rampart-server.1`,
/// `rampart-events-search.1`, ...), the layout `man rampart-server` finds. The
/// names are clap's display names, which `build` sets for every subcommand.
fn write_man_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let page_name = command
        .get_display_name()
        .unwrap_or(command.get_name())
        .to_owned();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {page_name}"))?;
    write(&dir.join(format!("{page_name}.1")), &out)?;
    // clap's generated `help` subcommands would only repeat these pages.
    let documented = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in documented {
        write_man_pages(sub, dir)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
