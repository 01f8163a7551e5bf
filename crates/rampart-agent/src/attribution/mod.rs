//! Process attribution: which process opened a TCP connection.
//!
//! socket 4-tuple → inode and uid (sock_diag, `/proc/net/tcp{,6}` as a fallback) →
//! pid ([`owner_index`]: an incremental search of `/proc/*/fd` that starts with the
//! likeliest owners and stops at the first match) → name, executable path, user.
//! Process details are cached for a short time-to-live.

// The parsers of /proc and passwd text are crate-visible for `crate::fuzzing`.
pub(crate) mod owner_index;
pub(crate) mod proc_fd;
pub(crate) mod proc_net;
pub mod sock_diag;
pub(crate) mod users;

use crate::process::ProcessInfo;
use owner_index::{OwnerIndex, ProcRoot};
use sock_diag::SocketOwner;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Finds the process behind a connection. Other platforms implement this differently;
/// the steering code only sees this trait.
pub trait ProcessAttribution: Send + Sync + 'static {
    /// `client_local`/`client_remote` are the addresses as the *client* socket sees them
    /// (for a redirected flow, remote is the original destination).
    fn attribute(&self, client_local: SocketAddr, client_remote: SocketAddr) -> ProcessInfo;
}

struct Timed<T> {
    value: T,
    at: Instant,
}

/// The Linux implementation of [`ProcessAttribution`], with a TTL cache.
pub struct Attributor {
    ttl: Duration,
    // inode → pid. One lock for the whole search: concurrent lookups of one inode
    // share a search (the second one finds it indexed), and searches are short.
    owners: Mutex<OwnerIndex>,
    processes: Mutex<HashMap<u32, Timed<ProcessInfo>>>,
    users: Mutex<Option<Timed<HashMap<u32, String>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves only a stale cache behind: keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Attributor {
    /// An attributor whose cached answers live for `ttl`.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Attributor {
            ttl,
            owners: Mutex::new(OwnerIndex::new(ProcRoot::default())),
            processes: Mutex::new(HashMap::new()),
            users: Mutex::new(None),
        })
    }

    fn socket_owner(local: SocketAddr, remote: SocketAddr) -> Option<SocketOwner> {
        match sock_diag::lookup(local, remote) {
            Ok(Some(found)) => Some(found),
            Ok(None) => proc_net::lookup(local, remote).ok().flatten(),
            Err(err) => {
                tracing::debug!(%err, "sock_diag lookup failed, reading /proc/net/tcp");
                proc_net::lookup(local, remote).ok().flatten()
            }
        }
    }

    fn pid_of(&self, owner: SocketOwner) -> Option<u32> {
        let asked = Instant::now();
        lock(&self.owners).owner(owner.inode, owner.uid, asked, self.ttl)
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = lock(&self.users);
        // Accounts change rarely: reload at most every 30 s.
        let fresh = users
            .as_ref()
            .is_some_and(|u| u.at.elapsed() < self.ttl.max(Duration::from_secs(30)));
        if !fresh {
            *users = Some(Timed {
                value: users::load(),
                at: Instant::now(),
            });
        }
        users.as_ref().and_then(|u| u.value.get(&uid).cloned())
    }

    fn process(&self, pid: u32, socket_uid: u32) -> Option<ProcessInfo> {
        {
            let cache = lock(&self.processes);
            if let Some(hit) = cache.get(&pid) {
                if hit.at.elapsed() < self.ttl {
                    return Some(hit.value.clone());
                }
            }
        }
        let details = proc_fd::process_details(pid)?;
        let uid = details.uid.unwrap_or(socket_uid);
        let info = ProcessInfo {
            pid: Some(pid),
            name: details.name,
            path: details.path,
            uid: Some(uid),
            user: self.user_name(uid),
        };
        let mut cache = lock(&self.processes);
        let ttl = self.ttl;
        cache.retain(|_, entry| entry.at.elapsed() < ttl);
        cache.insert(
            pid,
            Timed {
                value: info.clone(),
                at: Instant::now(),
            },
        );
        Some(info)
    }
}

impl ProcessAttribution for Attributor {
    fn attribute(&self, client_local: SocketAddr, client_remote: SocketAddr) -> ProcessInfo {
        let Some(owner) = Self::socket_owner(client_local, client_remote) else {
            return ProcessInfo::unknown();
        };
        let found = self
            .pid_of(owner)
            .and_then(|pid| self.process(pid, owner.uid));
        found.unwrap_or_else(|| ProcessInfo {
            uid: Some(owner.uid),
            user: self.user_name(owner.uid),
            ..ProcessInfo::unknown()
        })
    }
}

/// Attribute on the blocking pool: `/proc` scans must not stall the reactor.
pub async fn attribute(
    attribution: &Arc<dyn ProcessAttribution>,
    client_local: SocketAddr,
    client_remote: SocketAddr,
) -> ProcessInfo {
    let attribution = Arc::clone(attribution);
    tokio::task::spawn_blocking(move || attribution.attribute(client_local, client_remote))
        .await
        .unwrap_or_else(|_| ProcessInfo::unknown())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::{Command, Stdio};

    fn has(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Accept one connection from `child` and attribute it as the agent would.
    fn attribute_child(mut child: Command, listener: &TcpListener) -> ProcessInfo {
        let mut child = child
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn client");
        let (conn, peer) = listener.accept().expect("accept");
        let info = Attributor::new(Duration::from_secs(2))
            .attribute(peer, listener.local_addr().expect("addr"));
        // Closing without an answer lets the client exit.
        drop(conn);
        let _ = child.wait();
        info
    }

    #[test]
    fn attributes_a_curl_connection_to_curl() {
        if !has("curl") {
            eprintln!("skipped: curl is not installed");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut curl = Command::new("curl");
        curl.args(["-s", "-m", "5"])
            .arg(format!("http://{}/", listener.local_addr().expect("addr")));
        let info = attribute_child(curl, &listener);
        assert_eq!(info.name, "curl");
        assert!(info.pid.is_some());
        let path = info.path.expect("exe path");
        assert!(path.ends_with("curl"), "exe {}", path.display());
        assert!(info.uid.is_some());
        assert!(info.user.is_some());
    }

    #[test]
    fn attributes_a_python_connection_to_python() {
        if !has("python3") {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut python = Command::new("python3");
        python.args([
            "-c",
            &format!(
                "import socket; s = socket.create_connection(('127.0.0.1', {port})); s.recv(1)"
            ),
        ]);
        let info = attribute_child(python, &listener);
        assert!(info.name.starts_with("python3"), "name {}", info.name);
    }

    #[test]
    fn labels_a_connection_without_a_socket_as_unknown_process() {
        let info = Attributor::new(Duration::from_secs(2)).attribute(
            "127.0.0.1:9".parse().expect("addr"),
            "127.0.0.1:10".parse().expect("addr"),
        );
        assert_eq!(info.name, crate::process::UNKNOWN_PROCESS);
        assert!(!info.is_known());
    }
}
