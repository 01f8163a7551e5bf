//! `rampart user add|list|remove`: the web console's local accounts, stored
//! as Argon2id hashes in `<data dir>/console-users.json` (mode 0600).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rampart_server::console::users::{Role, UserStore};

use super::state::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
    /// Data directory of the server [default: the data_dir of --config, else ./rampart-data].
    #[arg(long, value_name = "DIR", env = "RAMPART_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The server's configuration file: use its data_dir, as the server does.
    #[arg(long, value_name = "FILE", env = "RAMPART_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add a console user, or set the password and role of an existing one.
    /// The password is read from standard input (one line), or prompted for on a terminal.
    Add {
        name: String,
        #[arg(long, value_parser = ["admin", "analyst"])]
        role: String,
    },
    /// List console users and their roles.
    List,
    /// Remove a console user (their sessions end at their next request).
    Remove { name: String },
}

pub fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let dir = DataDirArgs {
        data_dir: args.data_dir,
        config: args.config,
    }
    .resolve()?;
    let store = UserStore::new(&dir);
    match args.command {
        UserCommand::Add { name, role } => {
            // clap allowed only the two names.
            let role = Role::parse(&role).context("role must be admin or analyst")?;
            let password = read_password()?;
            let new = store.add(&name, role, &password)?;
            println!(
                "{} user {name} ({}) in {}",
                if new { "added" } else { "updated" },
                role.as_str(),
                store.path().display()
            );
        }
        UserCommand::List => {
            let users = store.list()?;
            if users.is_empty() {
                println!(
                    "no console users in {} (add one: rampart user add NAME --role admin)",
                    store.path().display()
                );
            }
            for u in users {
                println!(
                    "{:<24} {:<8} created {}",
                    u.name,
                    u.role.as_str(),
                    u.created
                );
            }
        }
        UserCommand::Remove { name } => {
            if !store.remove(&name)? {
                anyhow::bail!("no console user {name:?} in {}", store.path().display());
            }
            println!("removed user {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line from stdin; on a terminal, prompted twice with echo off.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            anyhow::bail!("empty password on standard input (try: printf %s 'PASSWORD' | rampart user add NAME --role analyst)");
        }
        return Ok(password);
    }
    let first = prompt("Password: ")?;
    let second = prompt("Again: ")?;
    if first != second {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
}

fn prompt(text: &str) -> anyhow::Result<String> {
    eprint!("{text}");
    std::io::stderr().flush().ok();
    let _echo = EchoOff::new();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    eprintln!();
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Terminal echo off while it lives, so the password is not shown.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios is plain data; tcgetattr fills it or fails, and fd 0 is stdin.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new` on the same fd.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}
