//! Talking to the kernel: load the batch, read it back, cut flows, release, self-test.
//!
//! Everything runs `nft` and `conntrack` as child processes in the caller's network
//! namespace (a thread that `setns`-ed into a namespace spawns them there). Calls
//! block for a few milliseconds; async callers use `spawn_blocking`.
//!
//! **Cutting flows.** The table alone already stops every packet of a flow that is
//! not kept or excepted, whatever its conntrack state (no blanket `ct state
//! established accept`). After loading, conntrack entries are deleted for every flow
//! that touches neither a kept address (server, gateway) nor loopback. Kept flows'
//! entries are left alone on purpose: deleting the management tunnel's entry would be
//! re-created by its next packet in our table (kept addresses are accepted in any
//! state), but other tables on the host (a firewall that admits only `established`
//! inbound traffic, NAT) could see that packet as `new` and drop or re-translate it.
//! Deleted TCP flows cannot come back through an exception either: the table refuses
//! `new` TCP packets without SYN.

use super::error::IsolationError;
use super::readback::{compare, parse_listing, KernelState, KernelTable};
use super::table::{
    refresh_sets_script, release_script, ruleset, Expected, IsolationSpec, KeepSets, TABLE,
};
use crate::connector::Connector;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What applying did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The kernel's state read back right after loading.
    pub state: KernelState,
    /// How long `nft -f -` took.
    pub load_time: Duration,
    /// Conntrack entries deleted (flows cut).
    pub flows_cut: usize,
    /// Conntrack could not be listed or cleaned (the table still blocks those flows).
    pub conntrack_error: Option<String>,
}

/// Runs `nft` and `conntrack` (from `PATH` unless set otherwise).
#[derive(Debug, Clone)]
pub struct Isolator {
    pub nft: PathBuf,
    pub conntrack: PathBuf,
}

impl Default for Isolator {
    fn default() -> Self {
        Isolator {
            nft: "nft".into(),
            conntrack: "conntrack".into(),
        }
    }
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(
    program: &PathBuf,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Ran, IsolationError> {
    let spawn_err = |source| IsolationError::Spawn {
        program: program.display().to_string(),
        package,
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        // Dropping the pipe closes it: nft reads to end of input before committing.
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

impl Isolator {
    fn nft_batch(&self, action: &'static str, script: &str) -> Result<(), IsolationError> {
        let ran = run(&self.nft, "nftables", &["-f", "-"], Some(script))?;
        if ran.ok {
            Ok(())
        } else {
            Err(IsolationError::Nft {
                action,
                stderr: ran.stderr,
            })
        }
    }

    /// Load (or atomically replace) the table, read it back, then cut the flows that
    /// are no longer allowed. Refuses a spec without a server or gateway address:
    /// isolation must never cut the channel that can release it.
    pub fn apply(&self, spec: &IsolationSpec) -> Result<ApplyReport, IsolationError> {
        if spec.server_addrs.is_empty() && spec.gateway_addrs.is_empty() {
            return Err(IsolationError::NoKeptAddress);
        }
        let (script, expected) = ruleset(spec);
        self.load(&script, &expected)
    }

    /// Load a batch made by [`ruleset`] (the caller may have written it elsewhere
    /// first, e.g. the boot script), then read it back and cut flows as [`Self::apply`].
    pub fn load(&self, script: &str, expected: &Expected) -> Result<ApplyReport, IsolationError> {
        if expected.sets.keep4.is_empty() && expected.sets.keep6.is_empty() {
            return Err(IsolationError::NoKeptAddress);
        }
        let started = Instant::now();
        self.nft_batch("load", script)?;
        let load_time = started.elapsed();
        // Cutting flows and reading the table back are independent once it is
        // loaded: run them side by side (each waits on its own child process).
        let (cut, kernel) = std::thread::scope(|scope| {
            let kernel = scope.spawn(|| self.read_back());
            let cut = self.cut_flows(&expected.sets);
            (cut, kernel.join())
        });
        let (flows_cut, conntrack_error) = match cut {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e.to_string())),
        };
        let kernel = kernel
            .map_err(|_| IsolationError::ReadBack("the read-back thread panicked".into()))??;
        let state = compare(kernel.as_ref(), expected);
        Ok(ApplyReport {
            state,
            load_time,
            flows_cut,
            conntrack_error,
        })
    }

    /// The kernel's table, or `None` when there is none.
    pub fn read_back(&self) -> Result<Option<KernelTable>, IsolationError> {
        let ran = run(
            &self.nft,
            "nftables",
            &["-j", "list", "table", "inet", TABLE],
            None,
        )?;
        if ran.ok {
            return parse_listing(&ran.stdout).map(Some);
        }
        // nft says "No such file or directory" for a missing table.
        if ran.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(IsolationError::Nft {
            action: "list",
            stderr: ran.stderr,
        })
    }

    /// `isolated`, `drift` or `absent`, measured against `spec`.
    pub fn kernel_state(&self, spec: &IsolationSpec) -> Result<KernelState, IsolationError> {
        let (_, expected) = ruleset(spec);
        Ok(compare(self.read_back()?.as_ref(), &expected))
    }

    /// Replace the kept and resolver addresses in place, without reloading the rules
    /// (a server, gateway or `[isolation] keep` name now resolves to other
    /// addresses), then cut the flows of the addresses that are no longer kept
    /// (`dropped`) and read the table back. The rules, their counters and every other
    /// flow (a jump-host session opened through an exception) are left as they are.
    pub fn refresh_sets(
        &self,
        spec: &IsolationSpec,
        dropped: &[IpAddr],
    ) -> Result<ApplyReport, IsolationError> {
        if spec.server_addrs.is_empty() && spec.gateway_addrs.is_empty() {
            return Err(IsolationError::NoKeptAddress);
        }
        let (_, expected) = ruleset(spec);
        let started = Instant::now();
        self.nft_batch("refresh the sets of", &refresh_sets_script(&expected.sets))?;
        let load_time = started.elapsed();
        let (flows_cut, conntrack_error) = if dropped.is_empty() {
            (0, None)
        } else {
            let kept = &expected.sets;
            let cut = self.cut_matching(|src, dst| {
                let touches = dropped.contains(src) || dropped.contains(dst);
                let still_kept = |a: &IpAddr| a.is_loopback() || kept.keeps(a);
                touches && !still_kept(src) && !still_kept(dst)
            });
            match cut {
                Ok(n) => (n, None),
                Err(e) => (0, Some(e.to_string())),
            }
        };
        let state = compare(self.read_back()?.as_ref(), &expected);
        Ok(ApplyReport {
            state,
            load_time,
            flows_cut,
            conntrack_error,
        })
    }

    /// Delete `table inet rampart_isolate` and nothing else; fine when it is absent.
    pub fn release(&self) -> Result<(), IsolationError> {
        self.nft_batch("delete", &release_script())
    }

    /// Delete the conntrack entries of flows that touch neither a kept address nor
    /// loopback (see the module doc for why kept flows' entries stay). Returns how
    /// many address pairs were cleared.
    pub fn cut_flows(&self, sets: &KeepSets) -> Result<usize, IsolationError> {
        let kept = |a: &IpAddr| a.is_loopback() || sets.keeps(a);
        self.cut_matching(|src, dst| !kept(src) && !kept(dst))
    }

    /// Delete the conntrack entries whose original source and destination `cut`
    /// selects; returns how many address pairs were cleared.
    fn cut_matching(
        &self,
        cut: impl Fn(&IpAddr, &IpAddr) -> bool,
    ) -> Result<usize, IsolationError> {
        let mut pairs = BTreeSet::new();
        // Both families' listings at once: each is a child process.
        let listings = std::thread::scope(|scope| {
            let v6 = scope.spawn(|| run(&self.conntrack, "conntrack", &["-L", "-f", "ipv6"], None));
            let v4 = run(&self.conntrack, "conntrack", &["-L", "-f", "ipv4"], None);
            [("ipv4", Some(v4)), ("ipv6", v6.join().ok())]
        });
        for (family, ran) in listings {
            let ran = ran.ok_or_else(|| IsolationError::Conntrack {
                action: "list flows",
                stderr: "the listing thread panicked".into(),
            })??;
            if !ran.ok {
                return Err(IsolationError::Conntrack {
                    action: "list flows",
                    stderr: ran.stderr,
                });
            }
            for line in ran.stdout.lines() {
                if let Some((src, dst)) = original_tuple(line) {
                    if cut(&src, &dst) {
                        pairs.insert((family, src, dst));
                    }
                }
            }
        }
        let mut cleared = 0;
        for (family, src, dst) in &pairs {
            let (src, dst) = (src.to_string(), dst.to_string());
            let ran = run(
                &self.conntrack,
                "conntrack",
                &["-D", "-f", family, "-s", &src, "-d", &dst],
                None,
            )?;
            // Exit 1 with "0 flow entries" means the flow ended meanwhile: fine.
            if ran.ok {
                cleared += 1;
            } else if !ran.stderr.contains("0 flow entries") {
                return Err(IsolationError::Conntrack {
                    action: "delete flows",
                    stderr: ran.stderr,
                });
            }
        }
        Ok(cleared)
    }
}

/// The original direction's source and destination of a `conntrack -L` line
/// (`tcp 6 431999 ESTABLISHED src=A dst=B sport=.. dport=.. src=B dst=A ...`).
fn original_tuple(line: &str) -> Option<(IpAddr, IpAddr)> {
    let mut words = line.split_whitespace();
    let src = words.find_map(|w| w.strip_prefix("src="))?.parse().ok()?;
    let dst = words.find_map(|w| w.strip_prefix("dst="))?.parse().ok()?;
    Some((src, dst))
}

/// The addresses of the server's and gateway's host names, for the keep sets (call it
/// again from time to time and [`Isolator::refresh_sets`] when the answer changes).
/// A name that does not resolve contributes nothing; literal addresses pass through.
pub fn resolve_hosts(hosts: &[&str]) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<IpAddr> = hosts
        .iter()
        .filter_map(|h| (*h, 0u16).to_socket_addrs().ok())
        .flatten()
        .map(|s| s.ip())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// After applying: can this host still open a TCP connection to the server? Tries
/// each address in turn; the caller decides what to do with a failure, and isolation
/// is never lifted because of it (a device that cannot reach its server stays cut off
/// rather than fail open).
///
/// The connection is made with the agent's own `connector`, so it carries the socket
/// mark the agent's tunnel carries: in transparent (and steer-all) mode an unmarked
/// connection would be redirected to the agent's own local listener by the steering
/// table and "succeed" without a packet leaving the host. Marked, it takes the path
/// the management channel really takes.
pub async fn self_test(
    targets: &[SocketAddr],
    connector: &Connector,
) -> Result<SocketAddr, IsolationError> {
    let mut last = "no server address to test".to_string();
    for target in targets {
        match connector.connect_addr(*target).await {
            Ok(_) => return Ok(*target),
            Err(e) => last = format!("{target}: {e}"),
        }
    }
    Err(IsolationError::SelfTest {
        tried: targets
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_tuple_reads_the_first_src_and_dst() {
        let line = "tcp      6 431999 ESTABLISHED src=10.77.2.1 dst=10.77.2.2 sport=40000 dport=4444 src=10.77.2.2 dst=10.77.2.1 sport=4444 dport=40000 [ASSURED] mark=0 use=1";
        assert_eq!(
            original_tuple(line),
            Some(("10.77.2.1".parse().unwrap(), "10.77.2.2".parse().unwrap()))
        );
        assert_eq!(
            original_tuple("icmpv6   58 29 src=fd00::1 dst=fd00::2 type=128 code=0 id=1"),
            Some(("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()))
        );
        assert_eq!(
            original_tuple("conntrack v1.4.7 (conntrack-tools): 2 flow entries"),
            None
        );
    }

    #[test]
    fn literal_addresses_resolve_to_themselves() {
        assert_eq!(
            resolve_hosts(&["192.0.2.1", "2001:db8::1", "192.0.2.1"]),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn self_test_reports_every_address_it_tried() {
        let connector = Connector {
            mark: None,
            timeout: Duration::from_millis(10),
        };
        let err = self_test(&[], &connector).await.unwrap_err();
        assert!(err.to_string().contains("no server address"), "{err}");
        // A closed port on loopback: refused at once, and named in the error.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let err = self_test(&[target], &connector).await.unwrap_err();
        assert!(err.to_string().contains(&target.to_string()), "{err}");
    }
}
