//! Where the local-state subcommands (`ca`, `trust`, `events`, `device`) find the
//! data directory: the same one the server uses. `--data-dir` (or
//! `RAMPART_DATA_DIR`) wins; else the `data_dir` of `--config` (or
//! `RAMPART_CONFIG`), read with the server's own parser; else `./rampart-data`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rampart_server::config::RampartConfig;

/// The server's default, when neither a flag nor a configuration names a directory.
pub const DEFAULT_DATA_DIR: &str = "./rampart-data";

/// `--data-dir DIR` and `--config FILE`, flattened into each subcommand that reads
/// local state.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// Data directory [default: the data_dir of --config, else ./rampart-data].
    #[arg(long, value_name = "DIR", env = "RAMPART_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's configuration file: use its data_dir, as the server does.
    #[arg(long, value_name = "FILE", env = "RAMPART_CONFIG")]
    pub config: Option<PathBuf>,
}

impl DataDirArgs {
    /// The directory to read, announced on stderr when it is not the default, so a
    /// user never reads a stale directory without knowing it.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        let (dir, origin) = self.locate()?;
        if let Some(origin) = origin {
            eprintln!("rampart: data dir {} ({origin})", dir.display());
        }
        Ok(dir)
    }

    /// The directory, and where it came from when that is not the built-in default.
    fn locate(&self) -> anyhow::Result<(PathBuf, Option<String>)> {
        if let Some(dir) = &self.data_dir {
            let origin =
                if std::env::var_os("RAMPART_DATA_DIR").is_some_and(|v| v == dir.as_os_str()) {
                    "from RAMPART_DATA_DIR"
                } else {
                    "from --data-dir"
                };
            return Ok((dir.clone(), Some(origin.to_string())));
        }
        if let Some(file) = &self.config {
            let dir = data_dir_of(file)?;
            return Ok((dir, Some(format!("data_dir of {}", file.display()))));
        }
        Ok((PathBuf::from(DEFAULT_DATA_DIR), None))
    }
}

/// The data directory a server started with `--config file` would use.
pub fn data_dir_of(file: &Path) -> anyhow::Result<PathBuf> {
    let config = RampartConfig::load(file)
        .with_context(|| format!("reading the data dir from {}", file.display()))?;
    Ok(config.data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_data_dir_is_used_when_no_flag_names_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rampart.toml");
        std::fs::write(&file, "data_dir = \"/srv/rampart\"\n").expect("write");
        let args = DataDirArgs {
            data_dir: None,
            config: Some(file),
        };
        let (found, origin) = args.locate().expect("locate");
        assert_eq!(found, PathBuf::from("/srv/rampart"));
        assert!(origin.expect("announced").contains("rampart.toml"));
    }

    #[test]
    fn data_dir_flag_wins_over_config_and_default_is_silent() {
        let args = DataDirArgs {
            data_dir: Some(PathBuf::from("/x")),
            config: Some(PathBuf::from("/does/not/exist.toml")),
        };
        assert_eq!(args.locate().expect("locate").0, PathBuf::from("/x"));
        let none = DataDirArgs {
            data_dir: None,
            config: None,
        };
        assert_eq!(
            none.locate().expect("locate"),
            (PathBuf::from(DEFAULT_DATA_DIR), None)
        );
    }
}
