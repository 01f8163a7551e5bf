//! From a socket inode to the process that holds it (scan of `/proc/*/fd`), and from a
//! pid to its name, executable and owner.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Map every socket inode visible in `/proc/*/fd` to one pid holding it. One scan serves
/// every connection opened since the last one, which keeps bursts cheap.
pub fn scan_socket_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes vanish mid-scan and others' fds may be unreadable: skip, never fail.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(target.to_str().unwrap_or("")) {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    owners
}

/// `socket:[12345]` → 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Name, executable and uid of a live process.
#[derive(Debug, Clone)]
pub struct ProcessDetails {
    pub name: String,
    pub path: Option<PathBuf>,
    pub uid: Option<u32>,
}

/// Read `comm`, `exe` and the owner of `/proc/<pid>`; `None` if the process is gone.
pub fn process_details(pid: u32) -> Option<ProcessDetails> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let path = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let uid = fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
    Some(ProcessDetails {
        name: name.trim_end_matches('\n').to_string(),
        path,
        uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links_and_rejects_others() {
        assert_eq!(socket_inode("socket:[98765]"), Some(98765));
        assert_eq!(socket_inode("pipe:[98765]"), None);
        assert_eq!(socket_inode("socket:[98x]"), None);
        assert_eq!(socket_inode("socket:[1"), None);
    }

    #[test]
    fn finds_a_socket_held_by_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .expect("fd")
        .ino();
        let owners = scan_socket_owners();
        assert_eq!(owners.get(&inode), Some(&std::process::id()));
    }

    #[test]
    fn reads_details_of_this_process() {
        let details = process_details(std::process::id()).expect("self");
        assert!(!details.name.is_empty());
        assert!(details.path.is_some());
    }
}
