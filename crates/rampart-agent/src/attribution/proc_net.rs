//! Fallback socket lookup through `/proc/thread-self/net/tcp{,6}` for kernels without
//! sock_diag. `thread-self` rather than `self`: network namespaces are per thread, and
//! `/proc/self/net` shows the namespace of the thread-group leader.

use super::sock_diag::SocketOwner;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Find the socket whose local/remote addresses match, from the text of `/proc/net/tcp*`.
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<SocketOwner>> {
    let base = if Path::new("/proc/thread-self/net").exists() {
        "/proc/thread-self/net"
    } else {
        "/proc/net"
    };
    for file in ["tcp", "tcp6"] {
        let text = match std::fs::read_to_string(format!("{base}/{file}")) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if let Some(found) = find_in_table(&text, local, remote) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Search one table; lines that do not parse are skipped (the header, future columns).
pub fn find_in_table(text: &str, local: SocketAddr, remote: SocketAddr) -> Option<SocketOwner> {
    let (local, remote) = (canonical(local), canonical(remote));
    text.lines().skip(1).find_map(|line| {
        let row = parse_row(line)?;
        (canonical(row.0) == local && canonical(row.1) == remote).then_some(row.2)
    })
}

/// One row of the table; `pub(crate)` for the `proc_net` fuzz target.
pub(crate) fn parse_row(line: &str) -> Option<(SocketAddr, SocketAddr, SocketOwner)> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    // st, tx:rx queue, tr:when, retrnsmt, then uid, timeout, inode
    let mut rest = fields.skip(4);
    let uid = rest.next()?.parse().ok()?;
    let _timeout = rest.next()?;
    let inode = rest.next()?.parse().ok()?;
    Some((local, remote, SocketOwner { inode, uid }))
}

/// `0100007F:1F90` → 127.0.0.1:8080. The kernel prints each 32-bit word of the
/// network-order address as a native-endian integer, so the words are read back with
/// `to_ne_bytes`.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn word(hex: &str) -> Option<[u8; 4]> {
    Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_a_live_connection_in_proc_net_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let found = lookup(
            client.local_addr().expect("local"),
            client.peer_addr().expect("peer"),
        )
        .expect("read /proc")
        .expect("row found");
        assert!(found.inode > 0);
    }

    #[test]
    fn skips_malformed_rows_without_panicking() {
        let text = "header\n  0: zz:1 00:00 0A\n  1: 0100007F:ZZZZ 0100007F:0050\n";
        let any = "127.0.0.1:80".parse().expect("addr");
        assert_eq!(find_in_table(text, any, any), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv4_and_ipv6_rows_as_the_kernel_prints_them() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n   1: 00000000000000000000000001000000:01BB 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let v4 = find_in_table(
            text,
            "127.0.0.1:8080".parse().expect("addr"),
            "127.0.0.1:50000".parse().expect("addr"),
        );
        assert_eq!(
            v4,
            Some(SocketOwner {
                inode: 4242,
                uid: 1000
            })
        );
        let v6 = find_in_table(
            text,
            "[::1]:443".parse().expect("addr"),
            "[::1]:54321".parse().expect("addr"),
        );
        assert_eq!(v6, Some(SocketOwner { inode: 77, uid: 0 }));
    }
}
