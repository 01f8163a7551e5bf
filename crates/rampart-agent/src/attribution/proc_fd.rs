//! Reading `/proc/<pid>`: socket descriptor links, and a pid's name, executable and
//! owner.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

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
    fn reads_details_of_this_process() {
        let details = process_details(std::process::id()).expect("self");
        assert!(!details.name.is_empty());
        assert!(details.path.is_some());
    }
}
