//! The agent's own nftables table (`inet rampart_agent` by default) for transparent
//! steering. It is created and deleted as single `nft -f` transactions, and every command
//! names this table only: other tables (firewalls, Docker, the isolation table) are never
//! read, flushed or changed.

use crate::error::AgentError;
use std::io::Write;
use std::process::{Command, Stdio};

/// What the table redirects and whom it exempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name in the `inet` family (validated by the config).
    pub name: String,
    /// Local port the agent's transparent listener uses (127.0.0.1 and ::1).
    pub port: u16,
    /// Mark of the agent's own sockets; marked traffic is never redirected or rejected.
    pub mark: u32,
    /// Optional uid whose traffic is never redirected.
    pub exclude_uid: Option<u32>,
    /// Redirect every TCP port instead of 80 and 443.
    pub steer_all: bool,
}

impl TableSpec {
    fn exemptions(&self) -> String {
        let mut rules = format!("\t\tmeta mark 0x{:x} return\n", self.mark);
        if let Some(uid) = self.exclude_uid {
            rules.push_str(&format!("\t\tmeta skuid {uid} return\n"));
        }
        rules
    }

    /// The nft script that (re)creates the table in one transaction: `add` makes the
    /// following `delete` valid when the table does not exist yet, so a stale table left
    /// by a crashed agent is replaced atomically.
    pub fn create_script(&self) -> String {
        let ports = if self.steer_all {
            "meta l4proto tcp".to_string()
        } else {
            "tcp dport { 80, 443 }".to_string()
        };
        let name = &self.name;
        let exempt = self.exemptions();
        format!(
            "add table inet {name}\n\
             delete table inet {name}\n\
             table inet {name} {{\n\
             \tchain steer_output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             {exempt}\
             \t\tfib daddr type local return\n\
             \t\t{ports} redirect to :{port}\n\
             \t}}\n\
             \tchain quic_output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             {exempt}\
             \t\tudp dport 443 reject\n\
             \t}}\n\
             }}\n",
            port = self.port,
        )
    }

    /// Deleting in one transaction, tolerant of a table that is already gone.
    pub fn delete_script(&self) -> String {
        let name = &self.name;
        format!("add table inet {name}\ndelete table inet {name}\n")
    }
}

fn run_nft(script: &str, action: &'static str, table: &str) -> Result<(), AgentError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(AgentError::NftSpawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(AgentError::NftSpawn)?;
    }
    let output = child.wait_with_output().map_err(AgentError::NftSpawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(AgentError::Nft {
            action,
            table: table.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// The installed table; dropping it deletes the table (best effort, errors logged).
#[derive(Debug)]
pub struct SteeringTable {
    spec: TableSpec,
    installed: bool,
}

impl SteeringTable {
    /// Create (or atomically replace) the table.
    pub fn install(spec: TableSpec) -> Result<Self, AgentError> {
        run_nft(&spec.create_script(), "create", &spec.name)?;
        Ok(SteeringTable {
            spec,
            installed: true,
        })
    }

    /// Delete the table now and report failure.
    pub fn remove(mut self) -> Result<(), AgentError> {
        self.installed = false;
        run_nft(&self.spec.delete_script(), "delete", &self.spec.name)
    }

    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }
}

impl Drop for SteeringTable {
    fn drop(&mut self) {
        if self.installed {
            if let Err(err) = run_nft(&self.spec.delete_script(), "delete", &self.spec.name) {
                tracing::warn!(%err, "could not delete the steering table");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "rampart_agent".into(),
            port: 3131,
            mark: 0x5241,
            exclude_uid: None,
            steer_all: false,
        }
    }

    #[test]
    fn create_script_names_only_its_own_table() {
        let script = spec().create_script();
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("inet rampart_agent"), "{line}");
        }
        assert!(!script.contains("flush ruleset"));
        assert!(script.contains("tcp dport { 80, 443 } redirect to :3131"));
        assert!(script.contains("meta mark 0x5241 return"));
        assert!(script.contains("udp dport 443 reject"));
    }

    #[test]
    fn steer_all_redirects_every_tcp_port_and_uid_exclusion_is_optional() {
        let script = TableSpec {
            steer_all: true,
            exclude_uid: Some(998),
            ..spec()
        }
        .create_script();
        assert!(script.contains("meta l4proto tcp redirect to :3131"));
        assert_eq!(script.matches("meta skuid 998 return").count(), 2);
    }

    #[test]
    fn delete_script_is_idempotent_in_one_transaction() {
        assert_eq!(
            spec().delete_script(),
            "add table inet rampart_agent\ndelete table inet rampart_agent\n"
        );
    }
}
