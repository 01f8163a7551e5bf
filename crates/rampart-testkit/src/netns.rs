//! Network namespaces a test creates for itself: named uniquely per process and
//! call, joined by veth pairs created inside one namespace with the peer moved
//! straight into the other (no interface ever appears in the host's namespace),
//! and deleted on drop, also when the test panics. Programs run inside with
//! `ip netns exec`; threads enter one with `setns`.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{eventually, have, run, KillOnDrop};

/// `ip ARGS`, asserting success.
pub fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name part unique to this process and call (`<pid>x<n>`): tests in parallel
/// processes and threads never share a namespace.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One network namespace with its loopback up; deleted on drop (with every
/// interface and nftables table in it).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        // Owned before anything else can fail, so a half-built one is deleted too.
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair: `dev` in `ns`, its peer `peer_dev` moved into `peer_ns`. Neither
/// end gets an address or is up yet (see [`addr_up`]).
pub fn veth(ns: &str, dev: &str, peer_ns: &str, peer_dev: &str) {
    ip(&[
        "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", peer_ns,
    ]);
}

/// Gives `dev` in `ns` the address `cidr` (e.g. `10.78.0.1/24`) and brings it up.
pub fn addr_up(ns: &str, dev: &str, cidr: &str) {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev]);
    ip(&["-n", ns, "link", "set", dev, "up"]);
}

/// A command that runs `program` inside namespace `ns`, with no proxy variables
/// (transparent steering must catch the clients without them).
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Moves the calling thread into namespace `ns` (network namespaces are per
/// thread; threads and processes it starts afterwards inherit it).
pub fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
    // SAFETY: setns only reads the descriptor, which stays open for the call; it
    // changes the namespace of the calling thread alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
pub fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// Whether something accepts TCP connections at `addr` inside `ns`.
pub fn reachable(ns: &str, addr: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
}

/// Spawns `command` (usually [`command_in`] `ns`) and waits up to 20 s until
/// something accepts TCP connections at each of `listening` inside `ns`.
pub fn spawn_listening(command: &mut Command, ns: &str, listening: &[SocketAddr]) -> KillOnDrop {
    let child = command
        .spawn()
        .map(KillOnDrop)
        .unwrap_or_else(|e| panic!("spawn {command:?} in {ns}: {e}"));
    for addr in listening {
        assert!(
            eventually(Duration::from_secs(20), || reachable(ns, *addr)),
            "nothing listens on {addr} in {ns} 20 s after {command:?}"
        );
    }
    child
}

/// Whether the test can create namespaces: root, and `tools` installed. Without
/// them it says so loudly; under CI (`CI` set, where tests run as root with the
/// packages installed) it fails the test instead of skipping it.
pub fn namespaces_available(test: &str, tools: &[&str]) -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    let why = if !root {
        Some("needs root to create network namespaces and nftables tables".to_string())
    } else if !missing.is_empty() {
        Some(format!(
            "needs {} (scripts/install-test-deps.sh installs them)",
            missing.join(", ")
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}
