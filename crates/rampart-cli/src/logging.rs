//! The process's diagnostic log (stderr), text or JSON, filtered by
//! `RUST_LOG` when set, else by the configured level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes belong on a terminal only: in a file, a pipe or journald
        // they are noise that breaks grep.
        .with_ansi(colour_wanted(std::io::stderr().is_terminal()));
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (no-color.org).
fn colour_wanted(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_colour_when_stderr_is_not_a_terminal() {
        assert!(!colour_wanted(false));
    }
}
