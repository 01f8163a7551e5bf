//! Socket lookup through NETLINK_SOCK_DIAG (inet_diag): the kernel answers an exact
//! 4-tuple lookup with the socket's inode and owning uid in one round trip, which is
//! far cheaper than reading /proc/net/tcp on a busy host.

use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDR_LEN: usize = 16;
// struct inet_diag_sockid: sport, dport, src[4], dst[4], if, cookie[2]
const SOCKID_LEN: usize = 48;
// struct inet_diag_msg: family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const INET_DIAG_NOCOOKIE: u32 = u32::MAX;

/// The kernel's answer for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    pub inode: u64,
    pub uid: u32,
}

/// Look up the TCP socket whose local address is `local` and remote address is `remote`
/// (as seen by the socket's owner). `Ok(None)` when the kernel has no such socket.
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<SocketOwner>> {
    let local = unmap(local);
    let remote = unmap(remote);
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            // A dual-stack client may hold an AF_INET6 socket with v4-mapped addresses.
            if let Some(found) = query(libc::AF_INET as u8, local, remote)? {
                return Ok(Some(found));
            }
            query(libc::AF_INET6 as u8, map(local), map(remote))
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => query(libc::AF_INET6 as u8, local, remote),
        _ => Ok(None),
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn map(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

fn request(family: u8, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let total = NLMSG_HDR_LEN + 8 + SOCKID_LEN;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
                                                // struct inet_diag_req_v2
    msg.push(family);
    msg.push(libc::IPPROTO_TCP as u8);
    msg.push(0); // no extensions
    msg.push(0); // pad
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // all TCP states
    msg.extend_from_slice(&local.port().to_be_bytes());
    msg.extend_from_slice(&remote.port().to_be_bytes());
    msg.extend_from_slice(&address_bytes(local.ip()));
    msg.extend_from_slice(&address_bytes(remote.ip()));
    msg.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg
}

fn query(family: u8, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<SocketOwner>> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(NETLINK_SOCK_DIAG)),
    )?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    // An unconnected netlink socket sends to the kernel (port id 0) by default.
    socket.send(&request(family, local, remote))?;
    let mut buf = vec![0u8; 8192];
    let n = (&socket).read(&mut buf)?;
    parse_reply(&buf[..n])
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at + 2)?;
    Some(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

/// Parse the kernel's reply to an exact lookup: one inet_diag_msg or an error message.
/// `pub(crate)` for the `sock_diag` fuzz target (`crate::fuzzing`).
pub(crate) fn parse_reply(buf: &[u8]) -> io::Result<Option<SocketOwner>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply");
    let len = u32_at(buf, 0).ok_or_else(malformed)? as usize;
    let kind = u16_at(buf, 4).ok_or_else(malformed)?;
    if len > buf.len() || len < NLMSG_HDR_LEN {
        return Err(malformed());
    }
    match kind {
        NLMSG_ERROR => {
            // struct nlmsgerr starts with a negated errno (0 acknowledges).
            // Negate with a check: i32::MIN has no positive counterpart, and a
            // positive value is no errno; either is a malformed reply, not a panic.
            let errno = u32_at(buf, NLMSG_HDR_LEN).ok_or_else(malformed)? as i32;
            match errno.checked_neg() {
                Some(0) | Some(libc::ENOENT) => Ok(None),
                Some(code) if code > 0 => Err(io::Error::from_raw_os_error(code)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sock_diag error message with errno {errno}"),
                )),
            }
        }
        SOCK_DIAG_BY_FAMILY => {
            let body = &buf[NLMSG_HDR_LEN..len];
            if body.len() < DIAG_MSG_LEN {
                return Err(malformed());
            }
            let base = 4 + SOCKID_LEN;
            let uid = u32_at(body, base + 12).ok_or_else(malformed)?;
            let inode = u32_at(body, base + 16).ok_or_else(malformed)?;
            Ok(Some(SocketOwner {
                inode: u64::from(inode),
                uid,
            }))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag message type {kind}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_inode_and_uid_of_a_live_loopback_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let local = client.local_addr().expect("local");
        let remote = client.peer_addr().expect("peer");
        let owner = lookup(local, remote)
            .expect("sock_diag")
            .expect("socket found");
        assert!(owner.inode > 0);
        assert_eq!(owner.uid, unsafe_free_uid());
    }

    #[test]
    fn reports_none_for_a_tuple_with_no_socket() {
        let found = lookup(
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        )
        .expect("sock_diag");
        assert_eq!(found, None);
    }

    #[test]
    fn rejects_a_truncated_reply_without_panicking() {
        assert!(parse_reply(&[1, 2, 3]).is_err());
        let mut short = vec![0u8; NLMSG_HDR_LEN + 4];
        short[..4].copy_from_slice(&((NLMSG_HDR_LEN + 4) as u32).to_ne_bytes());
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse_reply(&short).is_err());
    }

    /// Found by the `sock_diag` fuzz target: an error message whose errno is
    /// i32::MIN panicked negating it.
    #[test]
    fn an_error_reply_with_an_impossible_errno_is_malformed_not_a_panic() {
        let mut reply = vec![0u8; NLMSG_HDR_LEN + 4];
        reply[..4].copy_from_slice(&((NLMSG_HDR_LEN + 4) as u32).to_ne_bytes());
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        for errno in [i32::MIN, 5] {
            reply[NLMSG_HDR_LEN..].copy_from_slice(&errno.to_ne_bytes());
            let err = parse_reply(&reply).expect_err("malformed");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{errno}");
        }
        reply[NLMSG_HDR_LEN..].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_reply(&reply).expect_err("EPERM").raw_os_error(),
            Some(libc::EPERM)
        );
        reply[NLMSG_HDR_LEN..].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_reply(&reply).expect("none"), None);
    }

    fn unsafe_free_uid() -> u32 {
        // The owner of /proc/self is the effective uid of this process.
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("proc").uid()
    }
}
