//! Entry points for the cargo-fuzz targets in `crates/rampart-agent/fuzz`:
//! each feeds arbitrary bytes to one parser of input the agent does not
//! control (what local applications send, what the kernel and /proc report)
//! and checks what the parser promises. Hidden from the docs; no production
//! code calls them. The /proc and netlink parsers stay crate-private and only
//! these wrappers are exported, so the fuzz crate needs no wider API.

use std::net::SocketAddr;

use crate::attribution::{owner_index, proc_fd, proc_net, sock_diag, users};
use crate::{client_hello, http_head};

/// A request head from a local application (transparent or local-proxy
/// mode), and the host and target it names.
pub fn http_head(data: &[u8]) {
    match http_head::parse(data) {
        Ok(head) => {
            assert!(head.len <= data.len());
            if let Some(host) = http_head::host_of(&head) {
                assert!(!host.is_empty());
            }
            for default_port in [80, 443] {
                if let Ok((host, port)) = http_head::split_authority(&head.target, default_port) {
                    assert!(!host.is_empty() && port != 0);
                }
            }
            if let Ok((host, port, path)) = http_head::split_absolute(&head.target) {
                assert!(!host.is_empty() && port != 0);
                assert!(path.starts_with('/'), "{path:?}");
            }
        }
        Err(http_head::HeadError::TooLarge(max)) => assert!(data.len() >= max),
        Err(_) => {}
    }
    // The authority forms also come from CONNECT targets and Host headers
    // that were never inside a parsed head.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = http_head::split_authority(text, 443);
        let _ = http_head::split_absolute(text);
    }
}

/// The first bytes of a TLS connection: the lower-cased SNI, or why there is none.
pub fn client_hello(data: &[u8]) {
    if let Ok(Some(name)) = client_hello::server_name(data) {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
    }
}

/// A netlink reply to a sock_diag lookup.
pub fn sock_diag(data: &[u8]) {
    if let Ok(Some(owner)) = sock_diag::parse_reply(data) {
        // The inode is the kernel's 32-bit field, widened.
        assert!(owner.inode <= u64::from(u32::MAX));
    }
}

/// The /proc and passwd text attribution reads; the first byte picks which.
pub fn proc_net(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 4 {
        0 => tcp_table(&text),
        1 => {
            let _ = owner_index::parse_start_time(&text);
        }
        2 => {
            if proc_fd::socket_inode(&text).is_some() {
                assert!(text.starts_with("socket:[") && text.ends_with(']'));
            }
        }
        _ => {
            for (uid, name) in users::parse_passwd(&text) {
                assert!(!name.is_empty() && !name.contains(':'), "{uid} {name:?}");
            }
        }
    }
}

/// `/proc/net/tcp{,6}`: every row that parses is found by its own addresses.
fn tcp_table(text: &str) {
    let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
    let _ = proc_net::find_in_table(text, unspecified, unspecified);
    for line in text.lines().skip(1) {
        if let Some((local, remote, _)) = proc_net::parse_row(line) {
            assert!(
                proc_net::find_in_table(text, local, remote).is_some(),
                "{line:?}"
            );
        }
    }
}
