//! Endpoint isolation: cut this device off the network except for what Rampart needs
//! to manage it, on command, and report what the kernel really holds.
//!
//! - [`rules`]: the operator's exceptions, a pf-style subset, parsed with
//!   `FILE:LINE:COL` errors into the typed [`ast`];
//! - [`compile`]: exceptions → nftables rules (pf's last-match order, `quick`);
//! - [`sets`]: runs of rules of one shape folded into one rule and a named set;
//! - [`table`]: the whole `table inet rampart_isolate` as one atomic `nft -f -` batch;
//! - [`apply`]: load, read back, cut flows (conntrack), release, self-test;
//! - [`readback`]: the kernel's table compared with what was applied;
//! - [`state`]: the desired state in `isolation.json`, re-applied at start;
//! - [`lookup`]: the kept host names looked up with a deadline.
//!
//! Entry points for the agent runtime: [`isolate`], [`release`], [`status`],
//! [`reapply_at_start`], [`self_test`].

pub mod apply;
pub mod ast;
pub mod compile;
pub mod error;
mod lexer;
pub mod lookup;
pub mod readback;
pub mod rules;
pub mod sets;
pub mod state;
pub mod table;

pub use apply::{resolve_hosts, self_test, ApplyReport, Isolator};
pub use ast::{Action, Cidr, Direction, Endpoint, ExceptionRule, Family, PortSpec, Proto};
pub use error::{IsolationError, RuleError, RuleErrorKind, RuleErrors};
pub use readback::KernelState;
pub use rules::parse_rules;
pub use state::{
    isolate, reapply_at_start, refresh, release, status, Desired, IsolationState, IsolationStatus,
    StartOutcome,
};
pub use table::{ruleset, IsolationSpec, KeepSets, TABLE};

use std::path::Path;

/// Read and parse an exception file; errors name the file as given.
pub fn parse_rules_file(path: &Path) -> Result<Vec<ExceptionRule>, IsolationError> {
    let text = std::fs::read_to_string(path).map_err(|source| IsolationError::RulesRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_rules(&path.display().to_string(), &text)?)
}

/// The batch `rampart isolation check` prints: the real table, with documentation
/// addresses (RFC 5737, RFC 3849) standing in for the server, gateway and resolver.
pub fn preview(exceptions: Vec<ExceptionRule>) -> String {
    let spec = IsolationSpec {
        server_addrs: vec![
            std::net::IpAddr::from([192, 0, 2, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ],
        gateway_addrs: vec![std::net::IpAddr::from([192, 0, 2, 2])],
        resolvers: vec![std::net::IpAddr::from([192, 0, 2, 53])],
        exceptions,
    };
    let (text, _) = ruleset(&spec);
    format!(
        "# placeholder keep-sets: server 192.0.2.1 and 2001:db8::1, gateway 192.0.2.2, resolver 192.0.2.53\n{text}"
    )
}

#[cfg(test)]
mod tests_compile;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_sets;
