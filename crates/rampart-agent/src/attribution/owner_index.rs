//! Socket inode → owning pid, found incrementally instead of by walking every process's
//! descriptors for each new connection.
//!
//! A new connection's socket is, by definition, newer than anything indexed before, so a
//! plain cache always misses on it and a full `/proc/*/fd` walk costs milliseconds per
//! flow (it grows with every socket on the host). Instead the search is ordered by how
//! likely each process is to own the socket, and stops at the first match:
//!
//! 1. the processes that owned the latest flows (a browser or a package manager opens
//!    many connections in a row);
//! 2. processes of the socket's uid (sock_diag reports it), those not seen before
//!    first (a just-started `curl`), then the others by start time, newest first;
//! 3. every other process: a socket can change hands (`SCM_RIGHTS`, `setuid` after
//!    `socket()`), so the uid only orders the search, it never excludes an owner.
//!
//! Within a process, descriptors whose number was not seen at its last visit are
//! checked first: a new socket is usually a new descriptor number.
//!
//! Only when the whole search finds nothing is the inode recorded as ownerless (for
//! the cache's time-to-live); an inode asked for before such an exhaustive search began
//! is answered from it without another walk, so a storm of ownerless sockets costs one
//! walk, not one each.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::proc_fd::socket_inode;

/// How many recent owners are tried before the process list is read.
const RECENT_OWNERS: usize = 8;

/// Where the index reads processes from: `/proc`, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct ProcRoot(pub std::path::PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot("/proc".into())
    }
}

/// What the index remembers of one process.
#[derive(Debug, Default)]
struct KnownProcess {
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22): orders the
    /// search and tells a reused pid from the process it replaced.
    start: u64,
    /// Descriptor number → socket inode, as of the last visit.
    sockets: HashMap<u32, u64>,
    /// Every descriptor number seen at the last visit (sockets or not).
    fds: HashSet<u32>,
}

/// The incremental inode → pid index. Not thread-safe by itself: the attributor holds
/// it under one mutex, which also makes concurrent lookups of one inode share a search.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    root: ProcRoot,
    processes: HashMap<u32, KnownProcess>,
    /// inode → (pid, fd) where it was last seen; checked with one `readlink` on use.
    sockets: HashMap<u64, (u32, u32)>,
    recent: VecDeque<u32>,
    /// Inodes an exhaustive search did not find, with when that search started.
    ownerless: HashMap<u64, Instant>,
    /// Start of the latest exhaustive search: it saw every socket that existed then.
    last_exhaustive: Option<Instant>,
    /// Process directories whose descriptors were read (for tests and diagnostics).
    pub visits: u64,
}

impl OwnerIndex {
    pub fn new(root: ProcRoot) -> Self {
        OwnerIndex {
            root,
            ..OwnerIndex::default()
        }
    }

    /// The pid holding socket `inode` (owned by `uid` per the kernel), or `None` when no
    /// process holds it. `asked` is when the caller learned of the socket; `ttl` bounds
    /// how long an ownerless answer is reused.
    pub fn owner(&mut self, inode: u64, uid: u32, asked: Instant, ttl: Duration) -> Option<u32> {
        if let Some(pid) = self.indexed(inode) {
            self.remember_owner(pid);
            return Some(pid);
        }
        self.ownerless.retain(|_, at| at.elapsed() < ttl);
        if self.ownerless.contains_key(&inode) {
            return None;
        }
        // The socket existed when we were asked; a search that started later and found
        // nothing already proved it has no owner (it closed, or lives where we cannot
        // look).
        if self.last_exhaustive.is_some_and(|at| at >= asked) {
            return None;
        }
        let started = Instant::now();
        let recent: Vec<u32> = self.recent.iter().copied().collect();
        for pid in &recent {
            if self.visit(*pid, inode) {
                self.remember_owner(*pid);
                return Some(*pid);
            }
        }
        for pid in self.search_order(uid, &recent) {
            if self.visit(pid, inode) {
                self.remember_owner(pid);
                return Some(pid);
            }
        }
        self.last_exhaustive = Some(started);
        self.ownerless.insert(inode, started);
        None
    }

    /// A previously seen location of `inode`, if it still holds it.
    fn indexed(&mut self, inode: u64) -> Option<u32> {
        let (pid, fd) = *self.sockets.get(&inode)?;
        let link = fs::read_link(self.root.0.join(format!("{pid}/fd/{fd}"))).ok();
        if link
            .as_deref()
            .and_then(|l| l.to_str())
            .and_then(socket_inode)
            == Some(inode)
        {
            Some(pid)
        } else {
            self.sockets.remove(&inode);
            None
        }
    }

    fn remember_owner(&mut self, pid: u32) {
        self.recent.retain(|p| *p != pid);
        self.recent.push_front(pid);
        self.recent.truncate(RECENT_OWNERS);
    }

    /// Every live pid except those in `skip`: processes of `uid` first, unseen ones
    /// before known ones, known ones newest first; then everybody else the same way.
    /// Forgets processes that are gone.
    fn search_order(&mut self, uid: u32, skip: &[u32]) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(&self.root.0) else {
            return Vec::new();
        };
        let mut live = HashSet::new();
        // (other uid, known, newest first by start time, then by pid for unseen ones)
        let mut ranked: Vec<(bool, bool, std::cmp::Reverse<u64>, std::cmp::Reverse<u32>)> =
            Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            live.insert(pid);
            if skip.contains(&pid) {
                continue;
            }
            // A process that vanished since read_dir: nothing to search.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let known = self.processes.get(&pid);
            ranked.push((
                meta.uid() != uid,
                known.is_some(),
                std::cmp::Reverse(known.map_or(0, |p| p.start)),
                std::cmp::Reverse(pid),
            ));
        }
        self.processes.retain(|pid, _| live.contains(pid));
        self.recent.retain(|pid| live.contains(pid));
        self.sockets.retain(|_, (pid, _)| live.contains(pid));
        ranked.sort_unstable();
        ranked.into_iter().map(|(.., pid)| pid.0).collect()
    }

    /// Read `/proc/<pid>/fd`, indexing its sockets; true as soon as `inode` is among
    /// them. Descriptors not seen at the previous visit are read first.
    fn visit(&mut self, pid: u32, inode: u64) -> bool {
        self.visits += 1;
        let dir = self.root.0.join(pid.to_string());
        let Ok(entries) = fs::read_dir(dir.join("fd")) else {
            // Gone, or not ours to read.
            self.processes.remove(&pid);
            return false;
        };
        let fds: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        let start = start_time(&dir).unwrap_or(0);
        let known = self.processes.entry(pid).or_default();
        if known.start != start {
            // A new process behind a reused pid: nothing it knew applies.
            *known = KnownProcess {
                start,
                ..KnownProcess::default()
            };
        }
        let now: HashSet<u32> = fds.iter().copied().collect();
        // Descriptors closed since the last visit take their sockets out of the index.
        let closed: Vec<u32> = known.fds.difference(&now).copied().collect();
        for fd in closed {
            if let Some(old) = known.sockets.remove(&fd) {
                forget(&mut self.sockets, old, (pid, fd));
            }
        }
        // New descriptors first, then those that held a socket last time (a client
        // that closes and reopens connections reuses their numbers), then the rest
        // (files, pipes, terminals), which rarely turn into sockets.
        let (fresh, seen): (Vec<u32>, Vec<u32>) =
            fds.iter().partition(|fd| !known.fds.contains(fd));
        let (was_socket, other): (Vec<u32>, Vec<u32>) = seen
            .into_iter()
            .partition(|fd| known.sockets.contains_key(fd));
        known.fds = now;
        let fd_dir = dir.join("fd");
        for fd in fresh.into_iter().chain(was_socket).chain(other) {
            let found = fs::read_link(fd_dir.join(fd.to_string()))
                .ok()
                .and_then(|link| link.to_str().and_then(socket_inode));
            let previous = match found {
                Some(found) => known.sockets.insert(fd, found),
                None => known.sockets.remove(&fd),
            };
            if let Some(old) = previous.filter(|old| Some(*old) != found) {
                forget(&mut self.sockets, old, (pid, fd));
            }
            if let Some(found) = found {
                self.sockets.insert(found, (pid, fd));
                if found == inode {
                    return true;
                }
            }
        }
        false
    }
}

/// Drop `inode` from the index if it still points at `at` (another descriptor may
/// hold it too, e.g. after `dup`).
fn forget(sockets: &mut HashMap<u64, (u32, u32)>, inode: u64, at: (u32, u32)) {
    if sockets.get(&inode) == Some(&at) {
        sockets.remove(&inode);
    }
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
fn start_time(dir: &Path) -> Option<u64> {
    // One read into a buffer that holds any stat line: `read_to_string` would probe
    // with growing reads (six system calls for a 300-byte line), on every visit.
    let mut file = fs::File::open(dir.join("stat")).ok()?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_start_time(std::str::from_utf8(&buf[..len]).ok()?)
}

/// Start time (clock ticks) from `/proc/<pid>/stat`; `pub(crate)` for the `proc_net` fuzz target.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so start time (22) is the 20th field here.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("fd")
            .ino()
    }

    fn my_uid() -> u32 {
        fs::metadata("/proc/self").expect("proc").uid()
    }

    const TTL: Duration = Duration::from_secs(2);

    #[test]
    fn parses_start_time_even_with_parentheses_in_the_name() {
        let stat = "1234 (we (ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn finds_a_socket_of_this_process_and_then_answers_from_the_index() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&listener);
        let mut index = OwnerIndex::new(ProcRoot::default());
        let me = std::process::id();
        assert_eq!(index.owner(inode, my_uid(), Instant::now(), TTL), Some(me));
        let visits = index.visits;
        assert_eq!(index.owner(inode, my_uid(), Instant::now(), TTL), Some(me));
        assert_eq!(index.visits, visits, "an indexed socket needs no visit");
    }

    #[test]
    fn the_latest_owner_is_searched_first() {
        let mut index = OwnerIndex::new(ProcRoot::default());
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(index
            .owner(inode_of(&first), my_uid(), Instant::now(), TTL)
            .is_some());
        // A socket opened after the index last looked: found in the recent owner,
        // with one visit, whatever else runs on the machine.
        let second = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let visits = index.visits;
        assert_eq!(
            index.owner(inode_of(&second), my_uid(), Instant::now(), TTL),
            Some(std::process::id())
        );
        assert_eq!(index.visits, visits + 1);
    }

    #[test]
    fn a_wrong_uid_only_reorders_the_search() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut index = OwnerIndex::new(ProcRoot::default());
        // A uid no process has: the search still ends at the real owner.
        assert_eq!(
            index.owner(inode_of(&listener), 0xfff0_0001, Instant::now(), TTL),
            Some(std::process::id())
        );
    }

    #[test]
    fn a_socket_of_a_new_child_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut index = OwnerIndex::new(ProcRoot::default());
        // Index everything first so the child is the only unseen process.
        let _ = index.owner(u64::MAX, my_uid(), Instant::now(), TTL);
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import socket; s = socket.create_connection(('127.0.0.1', {port})); s.recv(1)"
                ),
            ])
            .spawn()
            .expect("python3");
        let (conn, peer) = listener.accept().expect("accept");
        let owner = super::super::sock_diag::lookup(peer, listener.local_addr().expect("addr"))
            .expect("sock_diag")
            .expect("socket");
        let found = index.owner(owner.inode, owner.uid, Instant::now(), TTL);
        drop(conn);
        let _ = child.wait();
        assert_eq!(found, Some(child.id()));
    }

    #[test]
    fn an_ownerless_inode_is_searched_once_and_a_storm_shares_that_search() {
        let mut index = OwnerIndex::new(ProcRoot::default());
        let asked = Instant::now();
        assert_eq!(index.owner(u64::MAX - 1, my_uid(), asked, TTL), None);
        let visits = index.visits;
        assert!(visits > 0);
        // Same inode again, and another inode asked about before that search began:
        // neither walks /proc again.
        assert_eq!(
            index.owner(u64::MAX - 1, my_uid(), Instant::now(), TTL),
            None
        );
        assert_eq!(index.owner(u64::MAX - 2, my_uid(), asked, TTL), None);
        assert_eq!(index.visits, visits);
        // Asked after the search: it must look again (the socket may be new).
        assert_eq!(
            index.owner(u64::MAX - 3, my_uid(), Instant::now(), TTL),
            None
        );
        assert!(index.visits > visits);
    }

    #[test]
    fn a_closed_socket_is_not_answered_from_the_index() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&listener);
        let mut index = OwnerIndex::new(ProcRoot::default());
        assert!(index.owner(inode, my_uid(), Instant::now(), TTL).is_some());
        drop(listener);
        assert_eq!(index.owner(inode, my_uid(), Instant::now(), TTL), None);
    }
}
